"""Mirror of ``include/uapi/linux/iommufd.h``: what host discovery needs, plus MAP/UNMAP.

Every struct starts with ``size``; the kernel accepts any size from the
original struct's end (its ``min_size``) upward, provided bytes it does not
know are zero (else E2BIG). Field names follow the header, with
``__reserved`` spelled ``reserved``.
"""

from __future__ import annotations

import enum
from ctypes import Structure, Union, c_uint8, c_uint32, c_uint64

from viommu.host.uapi import IO, check_sizes, offsetofend

IOMMUFD_TYPE = ";"
IOMMUFD_CMD_BASE = 0x80


class Request(enum.IntEnum):
    """iommufd ioctl request numbers: ``_IO(';', 0x80 + N)``."""

    IOMMU_DESTROY = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x0)
    IOMMU_IOAS_ALLOC = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x1)
    IOMMU_IOAS_ALLOW_IOVAS = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x2)
    IOMMU_IOAS_COPY = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x3)
    IOMMU_IOAS_IOVA_RANGES = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x4)
    IOMMU_IOAS_MAP = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x5)
    IOMMU_IOAS_UNMAP = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x6)
    IOMMU_OPTION = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x7)
    IOMMU_VFIO_IOAS = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x8)
    IOMMU_HWPT_ALLOC = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x9)
    IOMMU_GET_HW_INFO = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0xA)


class HwInfoType(enum.IntEnum):
    """``enum iommu_hw_info_type`` (``out_data_type``)."""

    IOMMU_HW_INFO_TYPE_NONE = 0
    IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
    IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
    IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3
    IOMMU_HW_INFO_TYPE_AMD = 4


# struct iommu_hw_info.flags (v6.17): honour in_data_type.
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0

# enum iommufd_hw_capabilities (out_capabilities)
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
#: Negative sense, so that 0 from an older kernel reads as "ATS OK".
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3

# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0

# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3

# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_DATA_ARM_SMMUV3 = 2
IOMMU_HWPT_DATA_AMD_GUEST = 3

# enum iommufd_ioas_map_flags
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_destroy(Structure):
    _fields_ = (("size", c_uint32), ("id", c_uint32))


class iommu_ioas_alloc(Structure):
    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("out_ioas_id", c_uint32))


class iommu_iova_range(Structure):
    #: ``last`` is inclusive.
    _fields_ = (("start", c_uint64), ("last", c_uint64))


class iommu_ioas_iova_ranges(Structure):
    #: ``num_iovas``: in, the capacity of ``allowed_iovas``; out, the total count
    #: (EMSGSIZE when it exceeds the capacity, with this struct still written back).
    _fields_ = (
        ("size", c_uint32),
        ("ioas_id", c_uint32),
        ("num_iovas", c_uint32),
        ("reserved", c_uint32),
        ("allowed_iovas", c_uint64),
        ("out_iova_alignment", c_uint64),
    )


class iommu_ioas_map(Structure):
    _fields_ = (
        ("size", c_uint32),
        ("flags", c_uint32),
        ("ioas_id", c_uint32),
        ("reserved", c_uint32),
        ("user_va", c_uint64),
        ("length", c_uint64),
        ("iova", c_uint64),
    )


class iommu_ioas_unmap(Structure):
    _fields_ = (("size", c_uint32), ("ioas_id", c_uint32), ("iova", c_uint64), ("length", c_uint64))


class _hw_info_data_type(Union):
    _fields_ = (("in_data_type", c_uint32), ("out_data_type", c_uint32))


class iommu_hw_info(Structure):
    """The IOMMU_GET_HW_INFO argument: 40 bytes since v6.7, 32 in v6.6.

    Bytes 28..31 were one ``__u32 __reserved`` until ≈v6.15 turned the first
    into ``out_max_pasid_log2``; both read 0 on kernels that lack them.
    """

    _anonymous_ = ("data_type",)
    _fields_ = (
        ("size", c_uint32),
        ("flags", c_uint32),
        ("dev_id", c_uint32),
        ("data_len", c_uint32),
        ("data_uptr", c_uint64),
        ("data_type", _hw_info_data_type),
        ("out_max_pasid_log2", c_uint8),
        ("reserved", c_uint8 * 3),
        ("out_capabilities", c_uint64),
    )


class iommu_hw_info_vtd(Structure):
    _fields_ = (("flags", c_uint32), ("reserved", c_uint32), ("cap_reg", c_uint64), ("ecap_reg", c_uint64))


class iommu_hw_info_arm_smmuv3(Structure):
    _fields_ = (
        ("flags", c_uint32),
        ("reserved", c_uint32),
        ("idr", c_uint32 * 6),
        ("iidr", c_uint32),
        ("aidr", c_uint32),
    )


class iommu_hw_info_amd(Structure):
    _fields_ = (("efr", c_uint64), ("efr2", c_uint64))


class iommu_hwpt_alloc(Structure):
    """48 bytes since v6.11; 40 in v6.7-6.10; 24 in v6.6 (where ``flags`` had to be 0)."""

    _fields_ = (
        ("size", c_uint32),
        ("flags", c_uint32),
        ("dev_id", c_uint32),
        ("pt_id", c_uint32),
        ("out_hwpt_id", c_uint32),
        ("reserved", c_uint32),
        ("data_type", c_uint32),
        ("data_len", c_uint32),
        ("data_uptr", c_uint64),
        ("fault_id", c_uint32),
        ("reserved2", c_uint32),
    )


#: The v6.6 layout and the kernel's min_size for IOMMU_GET_HW_INFO.
HW_INFO_MIN_SIZE = offsetofend(iommu_hw_info, "reserved")
#: The kernel's min_size for IOMMU_HWPT_ALLOC ("can never change").
HWPT_ALLOC_MIN_SIZE = offsetofend(iommu_hwpt_alloc, "reserved")
#: The v6.7-6.10 layout.
HWPT_ALLOC_V6_7_SIZE = offsetofend(iommu_hwpt_alloc, "data_uptr")

check_sizes(
    {
        iommu_destroy: 8,
        iommu_ioas_alloc: 12,
        iommu_iova_range: 16,
        iommu_ioas_iova_ranges: 32,
        iommu_ioas_map: 40,
        iommu_ioas_unmap: 24,
        iommu_hw_info: 40,
        iommu_hw_info_vtd: 24,
        iommu_hw_info_arm_smmuv3: 40,
        iommu_hw_info_amd: 16,
        iommu_hwpt_alloc: 48,
    }
)
