"""Mirror of ``include/uapi/linux/vfio.h``: what host discovery needs, plus MAP/UNMAP.

Struct and field names follow the header; a field the header calls
``__reserved`` is ``reserved`` here (Python would mangle the double
underscore). Layouts are x86_64: every field is ``__u32``/``__u64``/
``__aligned_u64``, so plain ``ctypes.Structure`` alignment reproduces them.
The MAP/UNMAP structs are mirrored for the real-kernel lab, which proves
mapping failures; discovery never maps anything.
"""

from __future__ import annotations

import enum
from ctypes import Structure, c_int32, c_uint16, c_uint32, c_uint64

from viommu.host.uapi import IO, check_sizes, offsetofend

VFIO_TYPE = ";"
VFIO_BASE = 100
VFIO_API_VERSION = 0


class Request(enum.IntEnum):
    """VFIO ioctl request numbers: ``_IO(';', 100 + N)``.

    Only the container/group/cdev meanings are listed: on a device fd some of
    these numbers mean something else (0x3b70 is also
    DEVICE_GET_PCI_HOT_RESET_INFO), which discovery never calls.
    """

    VFIO_GET_API_VERSION = IO(VFIO_TYPE, VFIO_BASE + 0)
    VFIO_CHECK_EXTENSION = IO(VFIO_TYPE, VFIO_BASE + 1)
    VFIO_SET_IOMMU = IO(VFIO_TYPE, VFIO_BASE + 2)
    VFIO_GROUP_GET_STATUS = IO(VFIO_TYPE, VFIO_BASE + 3)
    VFIO_GROUP_SET_CONTAINER = IO(VFIO_TYPE, VFIO_BASE + 4)
    VFIO_GROUP_UNSET_CONTAINER = IO(VFIO_TYPE, VFIO_BASE + 5)
    VFIO_GROUP_GET_DEVICE_FD = IO(VFIO_TYPE, VFIO_BASE + 6)
    VFIO_DEVICE_GET_INFO = IO(VFIO_TYPE, VFIO_BASE + 7)
    VFIO_IOMMU_GET_INFO = IO(VFIO_TYPE, VFIO_BASE + 12)
    VFIO_IOMMU_MAP_DMA = IO(VFIO_TYPE, VFIO_BASE + 13)
    VFIO_IOMMU_UNMAP_DMA = IO(VFIO_TYPE, VFIO_BASE + 14)
    VFIO_DEVICE_BIND_IOMMUFD = IO(VFIO_TYPE, VFIO_BASE + 18)
    VFIO_DEVICE_ATTACH_IOMMUFD_PT = IO(VFIO_TYPE, VFIO_BASE + 19)
    VFIO_DEVICE_DETACH_IOMMUFD_PT = IO(VFIO_TYPE, VFIO_BASE + 20)


class Extension(enum.IntEnum):
    """``VFIO_CHECK_EXTENSION`` ids (IOMMU backends and container features)."""

    VFIO_TYPE1_IOMMU = 1
    VFIO_SPAPR_TCE_IOMMU = 2
    VFIO_TYPE1v2_IOMMU = 3
    #: The IOMMU enforces DMA cache coherence; can change as groups are added.
    VFIO_DMA_CC_IOMMU = 4
    VFIO_EEH = 5
    #: Renamed __VFIO_RESERVED_TYPE1_NESTING_IOMMU in newer headers.
    VFIO_TYPE1_NESTING_IOMMU = 6
    VFIO_SPAPR_TCE_v2_IOMMU = 7
    VFIO_NOIOMMU_IOMMU = 8
    VFIO_UNMAP_ALL = 9
    VFIO_UPDATE_VADDR = 10


# struct vfio_group_status.flags
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

# struct vfio_iommu_type1_info.flags
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1

# vfio_info_cap_header.id values in the type1 info chain
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

# struct vfio_iommu_type1_dma_map.flags
VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2

# struct vfio_iommu_type1_dma_unmap.flags
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

# struct vfio_device_info.flags
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_CAPS = 1 << 7

# cdev flags
VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0
VFIO_DEVICE_ATTACH_PASID = 1 << 0
VFIO_DEVICE_DETACH_PASID = 1 << 0


class vfio_group_status(Structure):
    _fields_ = (("argsz", c_uint32), ("flags", c_uint32))


class vfio_info_cap_header(Structure):
    #: ``next`` is an offset from the start of the info buffer; 0 ends the chain.
    _fields_ = (("id", c_uint16), ("version", c_uint16), ("next", c_uint32))


class vfio_iommu_type1_info(Structure):
    _fields_ = (
        ("argsz", c_uint32),
        ("flags", c_uint32),
        ("iova_pgsizes", c_uint64),
        ("cap_offset", c_uint32),  # v5.4+
        ("pad", c_uint32),
    )


class vfio_iova_range(Structure):
    #: ``end`` is inclusive.
    _fields_ = (("start", c_uint64), ("end", c_uint64))


class vfio_iommu_type1_info_cap_iova_range(Structure):
    #: Followed by ``nr_iovas`` × :class:`vfio_iova_range`.
    _fields_ = (("header", vfio_info_cap_header), ("nr_iovas", c_uint32), ("reserved", c_uint32))


class vfio_iommu_type1_info_cap_migration(Structure):
    _fields_ = (
        ("header", vfio_info_cap_header),
        ("flags", c_uint32),
        ("pgsize_bitmap", c_uint64),
        ("max_dirty_bitmap_size", c_uint64),
    )


class vfio_iommu_type1_info_dma_avail(Structure):
    _fields_ = (("header", vfio_info_cap_header), ("avail", c_uint32))


class vfio_iommu_type1_dma_map(Structure):
    _fields_ = (
        ("argsz", c_uint32),
        ("flags", c_uint32),
        ("vaddr", c_uint64),
        ("iova", c_uint64),
        ("size", c_uint64),
    )


class vfio_iommu_type1_dma_unmap(Structure):
    #: ``size`` is in/out (bytes unmapped); a ``data[]`` tail follows with GET_DIRTY_BITMAP.
    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("iova", c_uint64), ("size", c_uint64))


class vfio_device_info(Structure):
    _fields_ = (
        ("argsz", c_uint32),
        ("flags", c_uint32),
        ("num_regions", c_uint32),
        ("num_irqs", c_uint32),
        ("cap_offset", c_uint32),
        ("pad", c_uint32),
    )


class vfio_device_bind_iommufd(Structure):
    _fields_ = (
        ("argsz", c_uint32),
        ("flags", c_uint32),
        ("iommufd", c_int32),
        ("out_devid", c_uint32),
        ("token_uuid_ptr", c_uint64),  # v6.17+, with VFIO_DEVICE_BIND_FLAG_TOKEN
    )


class vfio_device_attach_iommufd_pt(Structure):
    #: ``pt_id`` is in/out: the HWPT actually attached (auto-created for an IOAS).
    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("pt_id", c_uint32), ("pasid", c_uint32))


class vfio_device_detach_iommufd_pt(Structure):
    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("pasid", c_uint32))


#: Before v5.4 the info struct ended at ``iova_pgsizes``; the kernel still accepts 16.
TYPE1_INFO_MIN_SIZE = offsetofend(vfio_iommu_type1_info, "iova_pgsizes")
#: v6.6 size; every kernel with the cdev accepts it.
BIND_IOMMUFD_MIN_SIZE = offsetofend(vfio_device_bind_iommufd, "out_devid")
#: v6.6 size (no ``pasid``).
ATTACH_PT_MIN_SIZE = offsetofend(vfio_device_attach_iommufd_pt, "pt_id")
#: v6.6 size (no ``pasid``).
DETACH_PT_MIN_SIZE = offsetofend(vfio_device_detach_iommufd_pt, "flags")

check_sizes(
    {
        vfio_group_status: 8,
        vfio_info_cap_header: 8,
        vfio_iommu_type1_info: 24,
        vfio_iova_range: 16,
        vfio_iommu_type1_info_cap_iova_range: 16,
        vfio_iommu_type1_info_cap_migration: 32,
        vfio_iommu_type1_info_dma_avail: 12,
        vfio_iommu_type1_dma_map: 32,
        vfio_iommu_type1_dma_unmap: 24,
        vfio_device_info: 24,
        vfio_device_bind_iommufd: 24,
        vfio_device_attach_iommufd_pt: 16,
        vfio_device_detach_iommufd_pt: 12,
    }
)
