"""What the ioctl backends learn about one device, before it is merged with sysfs topology.

The legacy-VFIO and iommufd probes return these records; the discovery front
end combines them with the sysfs view (groups, units, aliases, reserved
regions) into :class:`~viommu.host.caps.HostIOMMUCaps`.
"""

from __future__ import annotations

from viommu.host.caps import IovaRange
from viommu.record import field, record


@record(frozen=True)
class LegacyProbe:
    """VFIO type1 container facts (VFIO_IOMMU_GET_INFO and its capability chain)."""

    #: IOVA_RANGE capability; empty when the kernel lacks it (pre-5.4).
    iova_ranges: tuple[IovaRange, ...]
    #: ``iova_pgsizes`` when VFIO_IOMMU_INFO_PGSIZES is set, else None.
    iova_pgsizes: int | None
    #: DMA_AVAIL capability (mappings still allowed), None when absent.
    dma_avail: int | None = None
    #: MIGRATION capability: (flags, pgsize_bitmap, max_dirty_bitmap_size), None when absent.
    migration: tuple[int, int, int] | None = None
    #: VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) after SET_IOMMU.
    dma_cc: bool | None = None
    #: Extensions the container reported (VFIO_CHECK_EXTENSION ids that answered > 0).
    extensions: tuple[int, ...] = ()


@record(frozen=True)
class IommufdProbe:
    """iommufd facts (IOMMU_GET_HW_INFO, IOAS attach, IOMMU_IOAS_IOVA_RANGES)."""

    #: ``out_data_type`` (enum iommu_hw_info_type).
    hw_info_type: int
    #: Raw vendor registers by lower-case name (cap/ecap; idr0..idr5/iidr/aidr; efr/efr2).
    registers: dict[str, int] = field(default_factory=dict)
    #: Vendor flags word (e.g. IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17).
    vendor_flags: int = 0
    #: ``out_capabilities``.
    capabilities: int = 0
    #: ``out_max_pasid_log2`` (0 on kernels before it existed).
    max_pasid_log2: int = 0
    #: IOVA ranges of an IOAS with this device attached; None when the attach failed.
    iova_ranges: tuple[IovaRange, ...] | None = None
    #: ``out_iova_alignment``; None when the ranges could not be read.
    iova_alignment: int | None = None
    #: Result of a NEST_PARENT HWPT allocation probe (None: not probed).
    nesting: bool | None = None
    #: The errno of a failed IOAS attach (e.g. EINVAL on a first-stage-only unit), else None.
    attach_errno: int | None = None
