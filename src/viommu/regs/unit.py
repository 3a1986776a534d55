"""The decoded view of one IOMMU unit, shared by the VT-d, AMD-Vi and SMMUv3 codecs.

A :class:`UnitDecode` holds the raw registers split into fields, the values
Linux derives from them (widths in bits, counts, byte offsets, predicates)
and the human labels for those derived values. Its JSON form is the public
contract of ``viommu decode``::

    {"vendor": "intel-vtd", "cap": {"value", "fields"}, "ecap": {...}, "derived": {...}}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from viommu.record import record
from viommu.regs.table import Decoded

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class UnitDecode:
    """One unit: ``registers`` in contract order as (JSON key, decoded value)."""

    vendor: str
    registers: tuple[tuple[str, Decoded], ...]
    derived: Mapping[str, Any]
    #: Human (label, value) lines for the derived facts, most important first.
    facts: tuple[tuple[str, str], ...]

    def register(self, key: str) -> Decoded:
        for name, decoded in self.registers:
            if name == key:
                return decoded
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vendor": self.vendor}
        for key, decoded in self.registers:
            out[key] = decoded.to_json()
        out["derived"] = dict(self.derived)
        return out


def bits_list(value: int) -> list[int]:
    """The positions of the set bits, lowest first (for reporting reserved bits)."""
    return [i for i in range(value.bit_length()) if value >> i & 1]


def page_sizes(bitmap: int) -> list[int]:
    """The page sizes (bytes) of a page-size bitmap, smallest first."""
    return [1 << i for i in bits_list(bitmap)]


def size_text(size: int) -> str:
    """4096 -> '4K', 2 MiB -> '2M', 4 TiB -> '4T'."""
    for shift, unit in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def sizes_text(bitmap: int) -> str:
    return ", ".join(size_text(s) for s in page_sizes(bitmap)) or "none"


def yes_no(flag: bool | None) -> str:
    if flag is None:
        return "unknown"
    return "yes" if flag else "no"


class ValueText(Mapping[int, str]):
    """Per-value meanings of a field computed on demand (``Field.values`` for wide fields)."""

    def __init__(self, width: int, text: Callable[[int], str]) -> None:
        self._size = 1 << width
        self._text = text

    def __getitem__(self, raw: int) -> str:
        if not 0 <= raw < self._size:
            raise KeyError(raw)
        return self._text(raw)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._size))

    def __len__(self) -> int:
        return self._size
