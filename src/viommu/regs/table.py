"""Declarative register layouts.

Each register is one table of :class:`Field` rows (name, bit range, meaning).
Decoding, encoding, JSON and help text all derive from that table, so no bit
arithmetic is scattered through the models: they set named fields.

Bits that no field covers are kept as ``undefined`` so that
``encode(decode(x)) == x`` holds for every value of the register's width.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from viommu.errors import InputError
from viommu.record import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class Field:
    """One register field: ``name`` is the spec abbreviation, bits ``lsb..msb`` inclusive."""

    name: str
    lsb: int
    msb: int
    meaning: str
    values: Mapping[int, str] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    @property
    def bits(self) -> str:
        return str(self.lsb) if self.lsb == self.msb else f"{self.msb}:{self.lsb}"

    def extract(self, value: int) -> int:
        return (value >> self.lsb) & ((1 << self.width) - 1)

    def describe(self, raw: int) -> str:
        """The meaning of one raw value of this field, for human output."""
        if raw in self.values:
            return self.values[raw]
        return self.meaning


@record(frozen=True)
class Decoded:
    """A register value split into its named fields."""

    register: Register
    value: int

    @property
    def fields(self) -> Mapping[str, int]:
        return MappingProxyType({f.name: f.extract(self.value) for f in self.register.fields})

    @property
    def undefined(self) -> int:
        """Bits set in the value that no field of the table covers."""
        return self.value & ~self.register.defined_mask & self.register.value_mask

    def __getitem__(self, name: str) -> int:
        return self.register.field(name).extract(self.value)

    def rows(self) -> Iterator[tuple[Field, int]]:
        """(field, raw value) from the most significant field down."""
        for f in sorted(self.register.fields, key=lambda f: -f.lsb):
            yield f, f.extract(self.value)

    def to_json(self) -> dict[str, Any]:
        width_digits = self.register.width // 4
        return {
            "value": f"0x{self.value:0{width_digits}x}",
            "fields": dict(self.fields),
        }


@record(frozen=True)
class Register:
    """A named register of ``width`` bits and its field table."""

    name: str
    width: int
    fields: tuple[Field, ...]
    description: str = ""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        covered = 0
        for f in self.fields:
            if f.name in seen:
                raise ValueError(f"{self.name}: field {f.name} defined twice")
            if not 0 <= f.lsb <= f.msb < self.width:
                raise ValueError(f"{self.name}.{f.name}: bits {f.bits} outside {self.width}-bit register")
            if covered & f.mask:
                raise ValueError(f"{self.name}.{f.name}: bits {f.bits} overlap another field")
            seen.add(f.name)
            covered |= f.mask

    @property
    def value_mask(self) -> int:
        return (1 << self.width) - 1

    @property
    def defined_mask(self) -> int:
        mask = 0
        for f in self.fields:
            mask |= f.mask
        return mask

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name}")

    def decode(self, value: int) -> Decoded:
        if not 0 <= value <= self.value_mask:
            raise InputError(f"0x{value:x} does not fit in the {self.width}-bit {self.name}")
        return Decoded(self, value)

    def encode(self, fields: Mapping[str, int] | None = None, *, undefined: int = 0, **kw: int) -> int:
        """Compose a value from named fields (and optional undefined bits)."""
        values = dict(fields or {})
        values.update(kw)
        if undefined & self.defined_mask or undefined & ~self.value_mask:
            raise ValueError(f"{self.name}: undefined bits 0x{undefined:x} overlap defined fields")
        result = undefined
        for name, raw in values.items():
            f = self.field(name)
            if not 0 <= raw < (1 << f.width):
                raise ValueError(f"{self.name}.{name}: {raw} does not fit in {f.width} bits")
            result |= raw << f.lsb
        return result

    def help_text(self) -> str:
        """One line per field, most significant first: bits, name, meaning."""
        lines = [f"{self.name} ({self.width} bits){': ' + self.description if self.description else ''}"]
        for f in sorted(self.fields, key=lambda f: -f.lsb):
            lines.append(f"  {f.bits:>7}  {f.name:<10} {f.meaning}")
        return "\n".join(lines)
