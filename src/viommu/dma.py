"""The guest DMA mapping path: through the vIOMMU, shadowed onto host domains.

A guest maps ``(iova, size)`` at a page size through its vIOMMU. What the
guest may legally map is bounded by what the vIOMMU shows it
(:class:`GuestView`: the address width, the reserved regions, the page
sizes). QEMU then shadows each mapping onto the host domain of every VFIO
device in that guest domain: ``VFIO_IOMMU_MAP_DMA`` on a legacy container,
``IOMMU_IOAS_MAP`` with a fixed IOVA on iommufd. :class:`HostDomain` models
what the kernel does with that request (Linux 6.12,
``vfio_dma_do_map`` and ``iopt_check_iova``): the IOVA range must fall inside
one usable window and be aligned to the domain's smallest page size, else
``EINVAL``; a range already mapped is ``EEXIST``.

The lab (``lab/``) maps just inside and just outside the usable range and
inside a reserved region on a real kernel and holds this model to it.
"""

from __future__ import annotations

import errno

from viommu.host.caps import U64_MAX, IovaRange
from viommu.host.device import HostIOMMUDevice
from viommu.reasons import register
from viommu.record import field, record

#: The x86 interrupt address range: never a DMA target, whatever the vIOMMU says.
X86_INTERRUPT_WINDOW = IovaRange(0xFEE0_0000, 0xFEEF_FFFF)

HOST_MAP_FAILED = register(
    "host-map-failed",
    "The host IOMMU refused a mapping the guest was allowed to make through its vIOMMU: the IOVA "
    "lies outside the host device's usable IOVA windows (beyond the host address width, or in a "
    "host reserved region) or is not aligned to the host's smallest page size. The device's DMA to "
    "that IOVA fails. This is what the set_iommu_device checks exist to prevent.",
)
GUEST_MAP_ILLEGAL = register(
    "guest-map-illegal",
    "The guest asked for a mapping its vIOMMU does not allow (beyond the guest-visible address "
    "width, in a guest-visible reserved region, or at a page size the vIOMMU does not offer); the "
    "vIOMMU rejects it before it reaches the host, as a real guest driver would never issue it.",
)


def lowest_page(mask: int) -> int:
    """The smallest page size in a page-size bitmap (bit n => 2**n bytes); 4 KiB for an empty mask."""
    return mask & -mask if mask else 4096


@record(frozen=True)
class MapError(Exception):
    """A refused mapping: the reason code, the errno the kernel returns, and why."""

    code: str
    errno: int
    message: str

    def __str__(self) -> str:
        return f"{self.message} ({errno.errorcode.get(self.errno, self.errno)})"


@record(frozen=True)
class GuestView:
    """What a vIOMMU lets the guest map for one endpoint."""

    #: Guest IOVA width in bits (intel aw-bits, virtio input_range, SMMU IAS).
    width_bits: int
    #: Guest-visible reserved IOVA regions (virtio PROBE; the x86 interrupt window).
    reserved: tuple[IovaRange, ...]
    #: Page sizes the guest may use (bit n => 2**n bytes).
    page_sizes: int

    @property
    def last_iova(self) -> int:
        return U64_MAX if self.width_bits >= 64 else (1 << self.width_bits) - 1

    def why_not(self, iova: int, size: int, page_size: int) -> str | None:
        """Why a guest driver could not issue this mapping, or None when it could."""
        if size <= 0 or page_size <= 0 or page_size & (page_size - 1):
            return "empty mapping or a page size that is not a power of two"
        if not self.page_sizes & page_size:
            return f"page size 0x{page_size:x} is not offered (page sizes 0x{self.page_sizes:x})"
        if iova % page_size or size % page_size:
            return f"not aligned to its page size 0x{page_size:x}"
        last = iova + size - 1
        if last > self.last_iova:
            return f"beyond the guest-visible {self.width_bits}-bit address width"
        for r in self.reserved:
            if r.overlaps(iova, last):
                return f"inside the guest-visible reserved region 0x{r.start:x}-0x{r.last:x}"
        return None

    def legal(self, iova: int, size: int, page_size: int) -> bool:
        """Whether a well-behaved guest driver could issue this mapping."""
        return self.why_not(iova, size, page_size) is None

    def check(self, iova: int, size: int, page_size: int) -> None:
        why = self.why_not(iova, size, page_size)
        if why is not None:
            raise MapError(GUEST_MAP_ILLEGAL, errno.EINVAL,
                           f"the vIOMMU does not let the guest map 0x{iova:x}+0x{size:x}: {why}")


@record
class HostDomain:
    """The host IOMMU domain (VFIO container or iommufd IOAS) of one VFIO device."""

    name: str
    #: Usable IOVA windows, sorted, inclusive.
    ranges: tuple[IovaRange, ...]
    #: The domain's page sizes; the smallest is the required alignment.
    page_size_mask: int
    #: ``legacy`` (VFIO_IOMMU_MAP_DMA) or ``iommufd`` (IOMMU_IOAS_MAP).
    backend: str = "legacy"
    mappings: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, hiod: HostIOMMUDevice) -> HostDomain:
        """The domain a VFIO device of this host IOMMU device is attached to."""
        backend = "iommufd" if hiod.kind.is_iommufd else "legacy"
        return cls(hiod.name, tuple(hiod.caps.iova_ranges), hiod.get_page_size_mask(), backend)

    @property
    def alignment(self) -> int:
        return lowest_page(self.page_size_mask)

    def why_not(self, iova: int, size: int) -> MapError | None:
        """The error the kernel would give for mapping ``[iova, iova + size)``, or None."""
        what = f"{self.name}: host mapping 0x{iova:x}+0x{size:x}"
        if size <= 0 or iova < 0:
            return MapError(HOST_MAP_FAILED, errno.EINVAL, f"{what}: empty mapping")
        if (iova | size) & (self.alignment - 1):
            return MapError(
                HOST_MAP_FAILED, errno.EINVAL,
                f"{what} is not aligned to the host page size 0x{self.alignment:x}",
            )
        last = iova + size - 1
        if last > U64_MAX:
            return MapError(HOST_MAP_FAILED, errno.EINVAL if self.backend == "legacy" else errno.EOVERFLOW,
                            f"{what} wraps the 64-bit IOVA space")
        if not any(r.start <= iova and last <= r.last for r in self.ranges):
            return MapError(
                HOST_MAP_FAILED, errno.EINVAL,
                f"{what} is outside the host's usable IOVA windows ({_windows(self.ranges)})",
            )
        for start, length in self.mappings.items():
            if start <= last and iova <= start + length - 1:
                return MapError(HOST_MAP_FAILED, errno.EEXIST, f"{what} overlaps an existing mapping")
        return None

    def map(self, iova: int, size: int) -> None:
        error = self.why_not(iova, size)
        if error is not None:
            raise error
        self.mappings[iova] = size

    def unmap(self, iova: int, size: int) -> int:
        """Remove the mappings inside ``[iova, iova + size)``; returns the bytes unmapped."""
        last = iova + size - 1
        gone = [s for s, n in self.mappings.items() if iova <= s and s + n - 1 <= last]
        total = 0
        for start in gone:
            total += self.mappings.pop(start)
        return total


def _windows(ranges: tuple[IovaRange, ...]) -> str:
    if not ranges:
        return "none"
    shown = ", ".join(f"0x{r.start:x}-0x{r.last:x}" for r in ranges[:3])
    return shown + (f", … {len(ranges) - 3} more" if len(ranges) > 3 else "")
