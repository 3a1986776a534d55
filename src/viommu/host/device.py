"""HostIOMMUDevice: QEMU's view of the host IOMMU behind one VFIO device.

QEMU creates one per VFIO device (never for an mdev), of the type its VFIO
backend names: ``host-iommu-device-legacy-vfio`` for a VFIO container or
``host-iommu-device-iommufd-vfio`` for ``iommufd=``. The two differ in what
they expose (qemu-framework brief §2.2), and the vIOMMU checks depend on it:

* legacy: ``get_cap(IOMMU_TYPE)`` is unsupported; the IOVA ranges come from
  VFIO_IOMMU_GET_INFO and can be empty on old kernels; the page-size mask is
  the container's ``iova_pgsizes``;
* iommufd: the type, ``hw_caps`` and vendor registers come from
  IOMMU_GET_HW_INFO; the ranges come from IOMMU_IOAS_IOVA_RANGES and are never
  empty (QEMU falls back to ``[0, UINT64_MAX]``); the page-size mask is the
  IOAS ``out_iova_alignment``.
"""

from __future__ import annotations

import enum

from viommu.host.caps import U64_MAX, HostIOMMUCaps, IovaRange, aw_bits_of
from viommu.record import record

#: ``HOST_IOMMU_DEVICE_CAP_IOMMU_TYPE`` and ``HOST_IOMMU_DEVICE_CAP_AW_BITS``.
CAP_IOMMU_TYPE = 0
CAP_AW_BITS = 1

#: The host page size QEMU falls back to (``qemu_real_host_page_size()`` on x86).
HOST_PAGE_SIZE = 4096


class HiodKind(enum.Enum):
    LEGACY_VFIO = "host-iommu-device-legacy-vfio"
    IOMMUFD = "host-iommu-device-iommufd-vfio"

    @property
    def is_iommufd(self) -> bool:
        return self is HiodKind.IOMMUFD


class CapUnsupported(Exception):
    """``get_cap`` failed; the message is QEMU's text."""


@record(frozen=True)
class HostIOMMUDevice:
    """One host IOMMU device: the VFIO device ``name`` (a BDF) and its host caps."""

    name: str
    caps: HostIOMMUCaps
    kind: HiodKind = HiodKind.LEGACY_VFIO

    def get_cap(self, cap_id: int) -> int:
        """QEMU's ``get_cap``: the value, or :class:`CapUnsupported` with QEMU's text."""
        if cap_id == CAP_IOMMU_TYPE and self.kind.is_iommufd:
            return self.caps.iommu_type.code
        if cap_id == CAP_AW_BITS:
            return aw_bits_of(self.get_iova_ranges())
        func = "hiod_iommufd_get_cap" if self.kind.is_iommufd else "hiod_legacy_vfio_get_cap"
        raise CapUnsupported(f"{func}: unsupported capability {cap_id:x}")

    def get_iova_ranges(self) -> tuple[IovaRange, ...]:
        if self.kind.is_iommufd and not self.caps.iova_ranges:
            return (IovaRange(0, U64_MAX),)
        return self.caps.iova_ranges

    def get_page_size_mask(self) -> int:
        if self.kind.is_iommufd:
            return self.caps.iova_alignment or HOST_PAGE_SIZE
        return self.caps.page_size_mask or HOST_PAGE_SIZE

    @property
    def aliased(self) -> bool:
        return self.caps.alias.aliased
