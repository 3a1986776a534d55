"""What the host knows about the IOMMU behind one assignable PCI device.

These are immutable records that serialise losslessly to JSON
(:meth:`HostIOMMUCaps.to_json` / :meth:`HostIOMMUCaps.from_json`); every
backend (sysfs, legacy VFIO, iommufd, snapshot) produces them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from viommu.errors import InputError
from viommu.record import field, record, replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

U64_MAX = (1 << 64) - 1

#: QEMU's HOST_IOMMU_DEVICE_CAP_AW_BITS_MAX: the aw-bits of a device with no range info.
AW_BITS_MAX = 64


class IommuType(enum.Enum):
    """The host IOMMU kind; ``code`` is the kernel's ``enum iommu_hw_info_type``."""

    UNKNOWN = "unknown"
    INTEL_VTD = "intel-vtd"
    ARM_SMMUV3 = "arm-smmuv3"
    AMD = "amd-vi"

    @property
    def code(self) -> int:
        return _TYPE_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> IommuType:
        for member, value in _TYPE_CODES.items():
            if value == code:
                return member
        return cls.UNKNOWN


_TYPE_CODES = {IommuType.UNKNOWN: 0, IommuType.INTEL_VTD: 1, IommuType.ARM_SMMUV3: 2, IommuType.AMD: 4}


class ResvType(enum.Enum):
    """A reserved-region type as sysfs prints it (``iommu_group_resv_type_string``)."""

    DIRECT = "direct"
    DIRECT_RELAXABLE = "direct-relaxable"
    RESERVED = "reserved"
    MSI = "msi"


@record(frozen=True, order=True)
class IovaRange:
    """An IOVA window ``[start, last]``; ``last`` is inclusive, as in the kernel uapi."""

    start: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.last <= U64_MAX:
            raise InputError(f"bad IOVA range 0x{self.start:x}-0x{self.last:x}")

    def contains(self, start: int, size: int) -> bool:
        return size > 0 and self.start <= start and start + size - 1 <= self.last

    def overlaps(self, start: int, last: int) -> bool:
        return self.start <= last and start <= self.last

    def to_json(self) -> list[str]:
        return [f"0x{self.start:x}", f"0x{self.last:x}"]


@record(frozen=True)
class ReservedRegion:
    """A host reserved region ``[start, last]`` (inclusive) of one type.

    Regions sort by address, then by type name, so that two regions over the same
    range (an RMRR that is also an MSI window, say) still have an order.
    """

    start: int
    last: int
    type: ResvType

    def _key(self) -> tuple[int, int, str]:
        return (self.start, self.last, self.type.value)

    def __lt__(self, other: ReservedRegion) -> bool:
        return self._key() < other._key()

    def to_json(self) -> dict[str, str]:
        return {"start": f"0x{self.start:x}", "last": f"0x{self.last:x}", "type": self.type.value}


def range_last_bit(last: int) -> int:
    """QEMU's ``range_get_last_bit``: index of the most significant bit of ``last``."""
    return last.bit_length() - 1


def aw_bits_of(ranges: Iterable[IovaRange]) -> int:
    """QEMU's ``vfio_device_get_aw_bits``: top bit of the last usable range + 1, or 64."""
    ordered = sorted(ranges)
    if not ordered:
        return AW_BITS_MAX
    return range_last_bit(ordered[-1].last) + 1


def complement(ranges: Iterable[IovaRange], lo: int = 0, hi: int = U64_MAX) -> tuple[IovaRange, ...]:
    """The windows of ``[lo, hi]`` that none of ``ranges`` covers."""
    holes: list[IovaRange] = []
    cursor = lo
    for r in sorted(ranges):
        if r.last < cursor:
            continue
        if r.start > cursor:
            holes.append(IovaRange(cursor, min(r.start - 1, hi)))
        cursor = r.last + 1
        if cursor > hi:
            return tuple(holes)
    if cursor <= hi:
        holes.append(IovaRange(cursor, hi))
    return tuple(holes)


@record(frozen=True)
class HwCaps:
    """Hardware capabilities as iommufd reports them (``out_capabilities`` and friends)."""

    dirty_tracking: bool = False
    #: ``out_max_pasid_log2``; 0 means no PASID.
    max_pasid_log2: int = 0
    #: Whether the unit can be a nesting parent; ``None`` when it cannot be told.
    nesting: bool | None = None
    #: The raw ``out_capabilities`` bitmap (IOMMU_HW_CAP_*).
    raw: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dirty_tracking": self.dirty_tracking,
            "max_pasid_log2": self.max_pasid_log2,
            "nesting": self.nesting,
            "raw": f"0x{self.raw:x}",
        }


@record(frozen=True)
class PciAlias:
    """Requester-ID aliasing: set when the device sits behind a PCIe-to-PCI bridge."""

    #: BDF of the bridge whose secondary bus the device is on (None: no alias).
    bridge: str | None = None
    #: The requester ID the IOMMU sees, as a BDF.
    alias_bdf: str | None = None

    @property
    def aliased(self) -> bool:
        return self.bridge is not None

    def to_json(self) -> dict[str, Any]:
        return {"bridge": self.bridge, "alias_bdf": self.alias_bdf}


@record(frozen=True)
class HostIOMMUCaps:
    """Everything known about the host IOMMU behind one device."""

    iommu_type: IommuType
    #: Raw vendor registers by lower-case name: VT-d ``cap``/``ecap``/``ver``;
    #: AMD ``efr``/``efr2``; SMMUv3 ``idr0``..``idr5``, ``iidr``, ``aidr``.
    registers: Mapping[str, int]
    #: Usable IOVA windows, sorted, inclusive ends.
    iova_ranges: tuple[IovaRange, ...]
    reserved_regions: tuple[ReservedRegion, ...]
    #: Supported IOMMU page sizes (bit n => 2**n bytes), e.g. VFIO ``iova_pgsizes``.
    page_size_mask: int
    hw: HwCaps = field(default_factory=HwCaps)
    #: ``out_iova_alignment`` of IOMMU_IOAS_IOVA_RANGES (what QEMU's iommufd backend
    #: uses as its page-size mask); None when not known.
    iova_alignment: int | None = None
    #: ``iommu_hw_info_vtd.flags`` and the like.
    vendor_flags: int = 0
    group: int | None = None
    unit: str | None = None
    alias: PciAlias = field(default_factory=PciAlias)
    #: Which backend produced the data: sysfs, vfio, iommufd, snapshot or profile.
    backend: str = "unknown"

    @property
    def aw_bits(self) -> int:
        return aw_bits_of(self.iova_ranges)

    def with_backend(self, backend: str) -> HostIOMMUCaps:
        return replace(self, backend=backend)

    def to_json(self) -> dict[str, Any]:
        return {
            "iommu_type": self.iommu_type.value,
            "registers": {k: f"0x{v:x}" for k, v in sorted(self.registers.items())},
            "aw_bits": self.aw_bits,
            "iova_ranges": [r.to_json() for r in self.iova_ranges],
            "reserved_regions": [r.to_json() for r in self.reserved_regions],
            "page_size_mask": f"0x{self.page_size_mask:x}",
            "iova_alignment": None if self.iova_alignment is None else f"0x{self.iova_alignment:x}",
            "hw": self.hw.to_json(),
            "vendor_flags": f"0x{self.vendor_flags:x}",
            "group": self.group,
            "unit": self.unit,
            "alias": self.alias.to_json(),
            "backend": self.backend,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "caps") -> HostIOMMUCaps:
        """Inverse of :meth:`to_json`; malformed data raises :class:`InputError` naming ``where``."""
        try:
            hw = data.get("hw", {})
            alias = data.get("alias", {})
            caps = cls(
                iommu_type=IommuType(data["iommu_type"]),
                registers={str(k): _hex(v) for k, v in data.get("registers", {}).items()},
                iova_ranges=tuple(sorted(IovaRange(_hex(a), _hex(b)) for a, b in data["iova_ranges"])),
                reserved_regions=tuple(
                    sorted(
                        ReservedRegion(_hex(r["start"]), _hex(r["last"]), ResvType(r["type"]))
                        for r in data.get("reserved_regions", [])
                    )
                ),
                page_size_mask=_hex(data["page_size_mask"]),
                hw=HwCaps(
                    dirty_tracking=bool(hw.get("dirty_tracking", False)),
                    max_pasid_log2=int(hw.get("max_pasid_log2", 0)),
                    nesting=hw.get("nesting"),
                    raw=_hex(hw.get("raw", "0x0")),
                ),
                iova_alignment=None if data.get("iova_alignment") is None else _hex(data["iova_alignment"]),
                vendor_flags=_hex(data.get("vendor_flags", "0x0")),
                group=None if data.get("group") is None else int(data["group"]),
                unit=data.get("unit"),
                alias=PciAlias(bridge=alias.get("bridge"), alias_bdf=alias.get("alias_bdf")),
                backend=str(data.get("backend", "snapshot")),
            )
        except InputError as exc:
            raise InputError(exc.message, where=where) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"malformed host caps ({type(exc).__name__}: {exc})", where=where) from None
        return caps


def _hex(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a hex string, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16)
    raise ValueError(f"expected a hex string, got {value!r}")
