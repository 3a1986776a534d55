"""Plain-text tables for people, with colour only on a terminal.

Colour follows the usual conventions: ``NO_COLOR`` disables it,
``FORCE_COLOR`` forces it, otherwise it is on only when the stream is a TTY.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, TextIO

_CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2", "cyan": "36"}


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, style: str, enabled: bool) -> str:
    if not enabled or style not in _CODES:
        return text
    return f"\x1b[{_CODES[style]}m{text}\x1b[0m"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    styles: Sequence[str | None] | None = None,
    colour: bool = False,
) -> str:
    """Left-aligned columns separated by two spaces; ``styles`` colours whole rows."""
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()
    out.append(paint(head, "bold", colour))
    for index, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        style = styles[index] if styles else None
        out.append(paint(line, style, colour) if style else line)
    return "\n".join(out)


def dump_json(data: Any, stream: TextIO | None = None) -> None:
    """Deterministic JSON: sorted keys are not used, insertion order is the contract."""
    target = stream if stream is not None else sys.stdout
    target.write(json.dumps(data, indent=2) + "\n")  # one write, not one per token
