"""Strict parsing of register values that users paste."""

from __future__ import annotations

import re

from viommu.errors import InputError

_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")


def parse_hex(text: str, *, bits: int = 64, where: str | None = None) -> int:
    """Parse a hex register value (``0x`` optional) that must fit in ``bits``.

    Rejects empty strings, signs, non-hex digits and values wider than the
    register, each with one line naming the offending value.
    """
    raw = text.strip()
    if not raw:
        raise InputError("empty value, expected a hex number", where=where)
    if raw[0] in "+-":
        raise InputError(f"{raw!r} is signed; register values are unsigned hex", where=where)
    match = _HEX.fullmatch(raw.replace("_", ""))
    if match is None:
        raise InputError(f"{raw!r} is not a hex number", where=where)
    value = int(match.group(1), 16)
    if value >> bits:
        raise InputError(f"{raw!r} does not fit in {bits} bits", where=where)
    return value
