"""The ctypes mirrors against the numbers in the uapi brief.

Every expected value below is copied from the brief's tables (which were
checked with gcc on x86_64: linux-uapi.md §1.3, §2.2-2.3, §3.1-3.3), not
computed from the mirrors.
"""

from __future__ import annotations

import ctypes
import os
import termios

import pytest

from viommu.errors import HostAccessError
from viommu.host.uapi import IO, iommufd, vfio
from viommu.host.uapi.syscalls import IoctlFailed, SysOps, open_node

# linux-uapi.md §3.2: request = 0x3b64 + N (the hex column).
VFIO_REQUESTS = {
    "VFIO_GET_API_VERSION": 0x3B64,
    "VFIO_CHECK_EXTENSION": 0x3B65,
    "VFIO_SET_IOMMU": 0x3B66,
    "VFIO_GROUP_GET_STATUS": 0x3B67,
    "VFIO_GROUP_SET_CONTAINER": 0x3B68,
    "VFIO_GROUP_UNSET_CONTAINER": 0x3B69,
    "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A,
    "VFIO_DEVICE_GET_INFO": 0x3B6B,
    "VFIO_IOMMU_GET_INFO": 0x3B70,
    "VFIO_IOMMU_MAP_DMA": 0x3B71,
    "VFIO_IOMMU_UNMAP_DMA": 0x3B72,
    "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76,
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
}

# linux-uapi.md §2.2, the "Request (hex)" column.
IOMMUFD_REQUESTS = {
    "IOMMU_DESTROY": 0x3B80,
    "IOMMU_IOAS_ALLOC": 0x3B81,
    "IOMMU_IOAS_ALLOW_IOVAS": 0x3B82,
    "IOMMU_IOAS_COPY": 0x3B83,
    "IOMMU_IOAS_IOVA_RANGES": 0x3B84,
    "IOMMU_IOAS_MAP": 0x3B85,
    "IOMMU_IOAS_UNMAP": 0x3B86,
    "IOMMU_OPTION": 0x3B87,
    "IOMMU_VFIO_IOAS": 0x3B88,
    "IOMMU_HWPT_ALLOC": 0x3B89,
    "IOMMU_GET_HW_INFO": 0x3B8A,
}


@pytest.mark.parametrize(("name", "number"), sorted(VFIO_REQUESTS.items()))
def test_vfio_request_numbers(name: str, number: int) -> None:
    assert vfio.Request[name] == number


@pytest.mark.parametrize(("name", "number"), sorted(IOMMUFD_REQUESTS.items()))
def test_iommufd_request_numbers(name: str, number: int) -> None:
    assert iommufd.Request[name] == number


def test_every_mirrored_request_is_checked() -> None:
    assert {r.name for r in vfio.Request} == set(VFIO_REQUESTS)
    assert {r.name for r in iommufd.Request} == set(IOMMUFD_REQUESTS)


def test_io_encoding_has_no_size_or_direction_bits() -> None:
    # §1.1: _IO(';', nr) = (0x3b << 8) | nr on x86_64.
    assert IO(";", 0x80) == 0x3B80
    assert IO(";", 100 + 12) == 0x3B70


# linux-uapi.md §2.3 and §3.3: struct sizes.
SIZES = [
    (vfio.vfio_group_status, 8),
    (vfio.vfio_info_cap_header, 8),
    (vfio.vfio_iommu_type1_info, 24),
    (vfio.vfio_iova_range, 16),
    (vfio.vfio_iommu_type1_info_cap_iova_range, 16),
    (vfio.vfio_iommu_type1_info_cap_migration, 32),
    (vfio.vfio_iommu_type1_info_dma_avail, 12),
    (vfio.vfio_iommu_type1_dma_map, 32),
    (vfio.vfio_iommu_type1_dma_unmap, 24),
    (vfio.vfio_device_info, 24),
    (vfio.vfio_device_bind_iommufd, 24),
    (vfio.vfio_device_attach_iommufd_pt, 16),
    (vfio.vfio_device_detach_iommufd_pt, 12),
    (iommufd.iommu_destroy, 8),
    (iommufd.iommu_ioas_alloc, 12),
    (iommufd.iommu_iova_range, 16),
    (iommufd.iommu_ioas_iova_ranges, 32),
    (iommufd.iommu_ioas_map, 40),
    (iommufd.iommu_ioas_unmap, 24),
    (iommufd.iommu_hw_info, 40),
    (iommufd.iommu_hw_info_vtd, 24),
    (iommufd.iommu_hw_info_arm_smmuv3, 40),
    (iommufd.iommu_hw_info_amd, 16),
    (iommufd.iommu_hwpt_alloc, 48),
]


@pytest.mark.parametrize(("struct", "size"), SIZES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_struct_sizes(struct: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct) == size


# Field offsets from the brief's layout tables.
OFFSETS = [
    (vfio.vfio_info_cap_header, "next", 4),
    (vfio.vfio_iommu_type1_info, "iova_pgsizes", 8),
    (vfio.vfio_iommu_type1_info, "cap_offset", 16),
    (vfio.vfio_iommu_type1_info_cap_iova_range, "nr_iovas", 8),
    (vfio.vfio_iommu_type1_info_cap_migration, "flags", 8),
    (vfio.vfio_iommu_type1_info_cap_migration, "pgsize_bitmap", 16),
    (vfio.vfio_iommu_type1_info_cap_migration, "max_dirty_bitmap_size", 24),
    (vfio.vfio_iommu_type1_info_dma_avail, "avail", 8),
    (vfio.vfio_iommu_type1_dma_map, "vaddr", 8),
    (vfio.vfio_iommu_type1_dma_map, "iova", 16),
    (vfio.vfio_iommu_type1_dma_map, "size", 24),
    (vfio.vfio_iommu_type1_dma_unmap, "iova", 8),
    (vfio.vfio_iommu_type1_dma_unmap, "size", 16),
    (vfio.vfio_device_bind_iommufd, "iommufd", 8),
    (vfio.vfio_device_bind_iommufd, "out_devid", 12),
    (vfio.vfio_device_bind_iommufd, "token_uuid_ptr", 16),
    (vfio.vfio_device_attach_iommufd_pt, "pt_id", 8),
    (vfio.vfio_device_attach_iommufd_pt, "pasid", 12),
    (vfio.vfio_device_detach_iommufd_pt, "pasid", 8),
    (iommufd.iommu_ioas_alloc, "out_ioas_id", 8),
    (iommufd.iommu_ioas_iova_ranges, "num_iovas", 8),
    (iommufd.iommu_ioas_iova_ranges, "allowed_iovas", 16),
    (iommufd.iommu_ioas_iova_ranges, "out_iova_alignment", 24),
    (iommufd.iommu_ioas_map, "user_va", 16),
    (iommufd.iommu_ioas_map, "length", 24),
    (iommufd.iommu_ioas_map, "iova", 32),
    (iommufd.iommu_ioas_unmap, "iova", 8),
    (iommufd.iommu_ioas_unmap, "length", 16),
    (iommufd.iommu_hw_info, "dev_id", 8),
    (iommufd.iommu_hw_info, "data_len", 12),
    (iommufd.iommu_hw_info, "data_uptr", 16),
    (iommufd.iommu_hw_info, "in_data_type", 24),
    (iommufd.iommu_hw_info, "out_data_type", 24),
    (iommufd.iommu_hw_info, "out_max_pasid_log2", 28),
    (iommufd.iommu_hw_info, "reserved", 29),
    (iommufd.iommu_hw_info, "out_capabilities", 32),
    (iommufd.iommu_hw_info_vtd, "cap_reg", 8),
    (iommufd.iommu_hw_info_vtd, "ecap_reg", 16),
    (iommufd.iommu_hw_info_arm_smmuv3, "idr", 8),
    (iommufd.iommu_hw_info_arm_smmuv3, "iidr", 32),
    (iommufd.iommu_hw_info_arm_smmuv3, "aidr", 36),
    (iommufd.iommu_hw_info_amd, "efr2", 8),
    (iommufd.iommu_hwpt_alloc, "dev_id", 8),
    (iommufd.iommu_hwpt_alloc, "pt_id", 12),
    (iommufd.iommu_hwpt_alloc, "out_hwpt_id", 16),
    (iommufd.iommu_hwpt_alloc, "reserved", 20),
    (iommufd.iommu_hwpt_alloc, "data_type", 24),
    (iommufd.iommu_hwpt_alloc, "data_len", 28),
    (iommufd.iommu_hwpt_alloc, "data_uptr", 32),
    (iommufd.iommu_hwpt_alloc, "fault_id", 40),
    (iommufd.iommu_hwpt_alloc, "reserved2", 44),
]


@pytest.mark.parametrize(("struct", "field", "offset"), OFFSETS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_field_offsets(struct: type[ctypes.Structure], field: str, offset: int) -> None:
    assert getattr(struct, field).offset == offset


def test_older_layout_sizes() -> None:
    # §3.3: type1 info was 16 bytes before v5.4; bind 16 (v6.6); attach 12 (v6.6); detach 8 (v6.6,
    # minsz = offsetofend(flags) in device_cdev.c).
    assert vfio.TYPE1_INFO_MIN_SIZE == 16
    assert vfio.BIND_IOMMUFD_MIN_SIZE == 16
    assert vfio.ATTACH_PT_MIN_SIZE == 12
    assert vfio.DETACH_PT_MIN_SIZE == 8
    # §2.1 min_size: GET_HW_INFO 32, HWPT_ALLOC 24; §2.3: HWPT_ALLOC was 40 in v6.7-6.10.
    assert iommufd.HW_INFO_MIN_SIZE == 32
    assert iommufd.HWPT_ALLOC_MIN_SIZE == 24
    assert iommufd.HWPT_ALLOC_V6_7_SIZE == 40


def test_constants() -> None:
    # §3.1 extension ids and §3.3 flags/cap ids.
    assert vfio.VFIO_API_VERSION == 0
    assert vfio.Extension.VFIO_TYPE1_IOMMU == 1
    assert vfio.Extension.VFIO_TYPE1v2_IOMMU == 3
    assert vfio.Extension.VFIO_DMA_CC_IOMMU == 4
    assert vfio.Extension.VFIO_NOIOMMU_IOMMU == 8
    assert vfio.Extension.VFIO_UPDATE_VADDR == 10
    assert (vfio.VFIO_GROUP_FLAGS_VIABLE, vfio.VFIO_GROUP_FLAGS_CONTAINER_SET) == (1, 2)
    assert (vfio.VFIO_IOMMU_INFO_PGSIZES, vfio.VFIO_IOMMU_INFO_CAPS) == (1, 2)
    assert vfio.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE == 1
    assert vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION == 2
    assert vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL == 3
    # §2.3 enums.
    assert iommufd.HwInfoType.IOMMU_HW_INFO_TYPE_INTEL_VTD == 1
    assert iommufd.HwInfoType.IOMMU_HW_INFO_TYPE_ARM_SMMUV3 == 2
    assert iommufd.HwInfoType.IOMMU_HW_INFO_TYPE_AMD == 4
    assert iommufd.IOMMU_HWPT_ALLOC_NEST_PARENT == 1
    assert iommufd.IOMMU_HWPT_ALLOC_DIRTY_TRACKING == 2
    assert iommufd.IOMMU_HW_CAP_PCI_PASID_PRIV == 4
    assert iommufd.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 == 1


# The real SysOps against this machine's kernel (no VFIO needed).


def test_real_ioctl_writes_ctypes_buffers_in_place() -> None:
    class OneInt(ctypes.Structure):
        _fields_ = (("value", ctypes.c_int32),)

    r, w = os.pipe()
    try:
        os.write(w, b"abcde")
        as_int, as_struct, as_bytes = ctypes.c_int32(-1), OneInt(-1), bytearray(4)
        ops = SysOps()
        ops.ioctl(r, termios.FIONREAD, as_int)
        ops.ioctl(r, termios.FIONREAD, as_struct)
        ops.ioctl(r, termios.FIONREAD, as_bytes)
        assert (as_int.value, as_struct.value, int.from_bytes(as_bytes, "little")) == (5, 5, 5)
    finally:
        os.close(r)
        os.close(w)


def test_real_enotty_becomes_one_line() -> None:
    with open_node(SysOps(), "/dev/null", "0000:00:03.0") as node:
        st = node.fstat()
        assert st.is_char_device
        with pytest.raises(IoctlFailed) as info:
            node.ioctl(vfio.Request.VFIO_GET_API_VERSION)
    assert str(info.value) == (
        "0000:00:03.0: VFIO_GET_API_VERSION on /dev/null failed: ENOTTY, the kernel lacks this ioctl"
    )
    assert info.value.request == "VFIO_GET_API_VERSION"


def test_real_open_of_a_missing_node() -> None:
    with pytest.raises(HostAccessError) as info, open_node(SysOps(), "/dev/no-such-node", "0000:00:03.0"):
        pass
    assert str(info.value) == "0000:00:03.0: /dev/no-such-node does not exist (ENOENT)"
