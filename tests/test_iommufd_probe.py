"""The iommufd probe against the fake kernel and a sysfs tree in tmp_path.

Expected values are the fake host's configuration (what the kernel holds),
never the probe's output; every test checks that no fd stays open and no
iommufd object or attachment is left for the kernel to reap.
"""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from fakekernel import (
    FakeDevice,
    FakeGroup,
    FakeIommu,
    FakeKernel,
    amd_payload,
    smmuv3_payload,
    vtd_payload,
)
from viommu.errors import HostAccessError, InputError
from viommu.host.caps import IovaRange
from viommu.host.iommufd import probe_iommufd

BDF = "0000:00:03.0"
CAP, ECAP = 0x00D2008C40660462, 0x0000000000F050DA
USABLE = [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)]


def host(
    tmp_path: Path,
    *,
    version: tuple[int, int] = (6, 12),
    groups: list[FakeGroup] | None = None,
    **iommu: object,
) -> tuple[FakeKernel, str]:
    settings: dict[str, object] = {"payload": vtd_payload(CAP, ECAP), "usable": list(USABLE)}
    settings.update(iommu)
    device = FakeDevice(BDF, group=7, cdev=3, iommu=FakeIommu(**settings))  # type: ignore[arg-type]
    k = FakeKernel(version=version, devices=[device], groups=groups)
    sysfs = tmp_path / "sys"
    k.write_sysfs(sysfs)
    return k, str(sysfs)


def failure(k: FakeKernel, sysfs: str, **kw: object) -> str:
    with pytest.raises(HostAccessError) as info:
        probe_iommufd(BDF, sysfs_root=sysfs, ops=k, **kw)  # type: ignore[arg-type]
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{BDF}: ")
    return text


def test_vtd_on_a_current_kernel(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, capabilities=1, max_pasid_log2=20, nesting=True)
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.hw_info_type == 1
    assert probe.registers == {"cap": CAP, "ecap": ECAP}
    assert probe.vendor_flags == 1  # IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, always set by the driver
    assert probe.capabilities == 1
    # 6.12 predates out_max_pasid_log2 (≈6.15): the byte was reserved and reads 0.
    assert probe.max_pasid_log2 == 0
    assert probe.iova_ranges == (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, 0x7F_FFFF_FFFF))
    assert probe.iova_alignment == 0x1000
    assert probe.nesting is True
    assert probe.attach_errno is None
    k.assert_clean()


def test_call_sequence_destroys_what_it_created(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, nesting=True)
    probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert k.calls == [
        "VFIO_DEVICE_BIND_IOMMUFD",
        "IOMMU_GET_HW_INFO",
        "IOMMU_IOAS_ALLOC",
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        "IOMMU_IOAS_IOVA_RANGES",
        "IOMMU_IOAS_IOVA_RANGES",
        "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        "IOMMU_HWPT_ALLOC",
        "IOMMU_DESTROY",
        "IOMMU_DESTROY",
    ]
    k.assert_clean()


def test_max_pasid_log2_on_a_kernel_that_reports_it(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, version=(6, 15), max_pasid_log2=20)
    assert probe_iommufd(BDF, sysfs_root=sysfs, ops=k).max_pasid_log2 == 20


def test_smmuv3_registers(tmp_path: Path) -> None:
    idr = (0x0C0C14BF, 0x27E00000, 0, 0x1000, 0, 0x75)
    payload = smmuv3_payload(idr, iidr=0x43B, aidr=0x2)
    k, sysfs = host(tmp_path, version=(6, 13), hw_info_type=2, payload=payload)
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.hw_info_type == 2
    assert probe.registers == {
        "idr0": 0x0C0C14BF,
        "idr1": 0x27E00000,
        "idr2": 0,
        "idr3": 0x1000,
        "idr4": 0,
        "idr5": 0x75,
        "iidr": 0x43B,
        "aidr": 0x2,
    }
    assert probe.vendor_flags == 0
    k.assert_clean()


def test_amd_registers(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, version=(6, 19), hw_info_type=4, payload=amd_payload(0x246577EFA2254AFA, 0x1F))
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert (probe.hw_info_type, probe.registers) == (4, {"efr": 0x246577EFA2254AFA, "efr2": 0x1F})


def test_driver_without_hw_info_reports_type_none(tmp_path: Path) -> None:
    # AMD before its hw_info op: success, out_data_type NONE, no data.
    k, sysfs = host(tmp_path, version=(6, 12), hw_info_type=4, payload=amd_payload(1, 2))
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert (probe.hw_info_type, probe.registers, probe.vendor_flags) == (0, {}, 0)
    k.assert_clean()


def test_first_iommufd_kernel_with_the_cdev(tmp_path: Path) -> None:
    # v6.6: hw_info is 32 bytes (no out_capabilities), no errata flag, HWPT flags must be 0.
    k, sysfs = host(tmp_path, version=(6, 6), capabilities=1, nesting=True)
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.registers == {"cap": CAP, "ecap": ECAP}
    assert probe.capabilities == 0
    assert probe.vendor_flags == 0
    assert probe.nesting is False
    assert probe.iova_ranges == (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, 0x7F_FFFF_FFFF))
    k.assert_clean()


def test_hw_info_retries_the_original_layout(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, capabilities=1)
    sizes: list[int] = []
    k.after["IOMMU_GET_HW_INFO"] = lambda view: sizes.append(struct.unpack_from("<I", view)[0])
    k.fail("IOMMU_GET_HW_INFO", errno.E2BIG)
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert sizes == [32]  # the successful call; out_capabilities (@32) was not part of it
    assert probe.capabilities == 0
    assert probe.registers == {"cap": CAP, "ecap": ECAP}
    k.assert_clean()


def test_hw_info_gives_up_when_both_layouts_fail(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.fail("IOMMU_GET_HW_INFO", errno.EINVAL, times=2)
    assert "IOMMU_GET_HW_INFO on /dev/iommu failed: EINVAL" in failure(k, sysfs)
    k.assert_clean()


def test_longer_vendor_payload_is_fetched_again(tmp_path: Path) -> None:
    # A future kernel with a 64-byte VT-d payload: the first 24 bytes keep their meaning.
    payload = vtd_payload(CAP, ECAP) + bytes(range(40))
    k, sysfs = host(tmp_path, payload=payload)
    lengths: list[int] = []
    k.after["IOMMU_GET_HW_INFO"] = lambda view: lengths.append(struct.unpack_from("<I", view, 12)[0])
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert k.calls.count("IOMMU_GET_HW_INFO") == 2
    assert lengths == [64, 64]
    assert probe.registers == {"cap": CAP, "ecap": ECAP}
    k.assert_clean()


def test_first_stage_only_unit_records_the_attach_errno(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, attach_errno=errno.EINVAL)
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.attach_errno == errno.EINVAL
    assert (probe.iova_ranges, probe.iova_alignment) == (None, None)
    assert probe.registers == {"cap": CAP, "ecap": ECAP}
    assert probe.nesting is False
    assert "VFIO_DEVICE_DETACH_IOMMUFD_PT" not in k.calls
    k.assert_clean()


def test_other_attach_errors_are_reported(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, attach_errno=errno.EBUSY)
    assert "VFIO_DEVICE_ATTACH_IOMMUFD_PT on /dev/vfio/devices/vfio3 failed: EBUSY" in failure(k, sysfs)
    k.assert_clean()


def test_ranges_that_grow_between_calls(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    extra = iter([(1 << 40, (1 << 41) - 1), (1 << 42, (1 << 43) - 1)])

    def grow() -> None:
        added = next(extra, None)
        if added:
            k.devices[0].iommu.usable.append(added)

    k.before["IOMMU_IOAS_IOVA_RANGES"] = grow
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.iova_ranges == (
        IovaRange(0, 0xFEDFFFFF),
        IovaRange(0xFEF00000, 0x7F_FFFF_FFFF),
        IovaRange(1 << 40, (1 << 41) - 1),
        IovaRange(1 << 42, (1 << 43) - 1),
    )
    assert k.calls.count("IOMMU_IOAS_IOVA_RANGES") == 3
    k.assert_clean()


def test_ranges_that_shrink_between_calls(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    calls = iter(range(10))

    def shrink() -> None:
        if next(calls) == 1:
            k.devices[0].iommu.usable = [(0x1000, 0xFFFFF)]

    k.before["IOMMU_IOAS_IOVA_RANGES"] = shrink
    probe = probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert probe.iova_ranges == (IovaRange(0x1000, 0xFFFFF),)
    k.assert_clean()


def test_ranges_that_never_settle_give_up(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.before["IOMMU_IOAS_IOVA_RANGES"] = lambda: k.devices[0].iommu.usable.append((1 << 50, 1 << 51))
    assert "kept reporting more ranges than offered (4 attempts" in failure(k, sysfs)
    k.assert_clean()


def test_nesting_probe_can_be_skipped(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, nesting=True)
    assert probe_iommufd(BDF, sysfs_root=sysfs, ops=k, probe_nesting=False).nesting is None
    assert "IOMMU_HWPT_ALLOC" not in k.calls
    k.assert_clean()


def test_bad_bdf_is_input_error(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    with pytest.raises(InputError, match=re.escape("bad PCI address '../../etc'")):
        probe_iommufd("../../etc", sysfs_root=sysfs, ops=k)


def test_unknown_device(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    with pytest.raises(HostAccessError, match=re.escape("no PCI device 0000:00:04.0 under")):
        probe_iommufd("0000:00:04.0", sysfs_root=sysfs, ops=k)


def test_no_vfio_dev_directory(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, version=(6, 0))
    with pytest.raises(HostAccessError) as info:
        probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert "vfio-dev does not exist: the device is not bound to vfio-pci" in str(info.value)
    # ENOENT, like a missing /dev/iommu or cdev node: the cue for `auto` to fall back to legacy VFIO.
    assert info.value.errno == errno.ENOENT
    k.assert_clean()


def test_no_iommufd(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, version=(6, 1))
    assert (
        failure(k, sysfs)
        == f"{BDF}: kernel lacks iommufd (CONFIG_IOMMUFD): /dev/iommu does not exist (ENOENT)"
    )
    k.assert_clean()


def test_no_vfio_cdev(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, version=(6, 3))
    assert failure(k, sysfs) == (
        f"{BDF}: kernel lacks the VFIO device cdev (Linux 6.6+ with CONFIG_VFIO_DEVICE_CDEV): "
        "/dev/vfio/devices/vfio3 does not exist (ENOENT)"
    )
    k.assert_clean()


def test_permission_denied(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.fail("open:/dev/vfio/devices/vfio3", errno.EACCES)
    assert failure(k, sysfs) == (
        f"{BDF}: permission denied opening /dev/vfio/devices/vfio3, run as root or give this user "
        "access to it (EACCES)"
    )
    k.assert_clean()


def test_node_that_is_not_the_sysfs_device(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    (Path(sysfs) / f"bus/pci/devices/{BDF}/vfio-dev/vfio3/dev").write_text("511:4\n")
    assert "/dev/vfio/devices/vfio3 is not the device sysfs names (511:3, sysfs says 511:4)" in failure(
        k, sysfs
    )
    assert "VFIO_DEVICE_BIND_IOMMUFD" not in k.calls
    k.assert_clean()


def test_malformed_sysfs_dev_file(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    dev = Path(sysfs) / f"bus/pci/devices/{BDF}/vfio-dev/vfio3/dev"
    dev.write_text("banana\n")
    with pytest.raises(InputError) as info:
        probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    assert str(info.value) == f"{dev}: expected MAJOR:MINOR, found 'banana'"


def test_device_in_use_through_its_legacy_group(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, groups=[FakeGroup(7, busy=True)])
    assert failure(k, sysfs) == (
        f"{BDF}: VFIO_DEVICE_BIND_IOMMUFD on /dev/vfio/devices/vfio3 failed: EBUSY, "
        "the device is in use through its legacy VFIO group (by QEMU?)"
    )
    k.assert_clean()


def test_device_in_use_through_its_cdev(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.devices[0].cdev_in_use = True
    assert "failed: EINVAL, the device is already open through its cdev" in failure(k, sysfs)
    k.assert_clean()


SEQUENCE = [
    "VFIO_DEVICE_BIND_IOMMUFD",
    "IOMMU_GET_HW_INFO",
    "IOMMU_IOAS_ALLOC",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "IOMMU_IOAS_IOVA_RANGES",
    "IOMMU_HWPT_ALLOC",
]


@pytest.mark.parametrize("name", SEQUENCE)
@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EPERM, errno.ENODEV, errno.EBUSY, errno.ENOMEM])
def test_every_failing_ioctl_is_one_line_and_leaves_nothing(tmp_path: Path, name: str, code: int) -> None:
    k, sysfs = host(tmp_path, nesting=True)
    k.fail(name, code)
    text = failure(k, sysfs)
    assert f"{name} on /dev/" in text
    assert f"failed: {errno.errorcode[code]}, " in text
    k.assert_clean()


def test_enotty_names_what_the_kernel_lacks(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.fail("IOMMU_GET_HW_INFO", errno.ENOTTY)
    assert failure(k, sysfs) == (
        f"{BDF}: IOMMU_GET_HW_INFO on /dev/iommu failed: ENOTTY, the kernel lacks this ioctl (Linux 6.6+)"
    )


@pytest.mark.parametrize("name", ["VFIO_DEVICE_DETACH_IOMMUFD_PT", "IOMMU_DESTROY"])
def test_failing_cleanup_after_success_is_reported_and_fds_closed(tmp_path: Path, name: str) -> None:
    k, sysfs = host(tmp_path)
    k.fail(name, errno.EIO)
    assert f"{name} on " in failure(k, sysfs)
    assert k.open_paths == []


def test_failing_cleanup_does_not_hide_the_first_error(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path)
    k.fail("IOMMU_IOAS_IOVA_RANGES", errno.EFAULT)
    k.fail("VFIO_DEVICE_DETACH_IOMMUFD_PT", errno.EIO)
    k.fail("IOMMU_DESTROY", errno.EIO)
    assert "IOMMU_IOAS_IOVA_RANGES on /dev/iommu failed: EFAULT" in failure(k, sysfs)
    assert k.open_paths == []
    # What the probe could not undo, closing the fds did (and the fake noticed).
    assert k.leaks == [f"{BDF} closed while attached", "iommufd object 2 (ioas) reaped at close"]


def test_nesting_parent_hwpt_is_destroyed(tmp_path: Path) -> None:
    k, sysfs = host(tmp_path, nesting=True)
    destroyed: list[int] = []
    k.after["IOMMU_DESTROY"] = lambda view: destroyed.append(struct.unpack_from("<I", view, 4)[0])
    k.after["IOMMU_HWPT_ALLOC"] = lambda view: destroyed.append(-struct.unpack_from("<I", view, 16)[0])
    k.after["IOMMU_IOAS_ALLOC"] = lambda view: destroyed.append(-struct.unpack_from("<I", view, 8)[0])
    probe_iommufd(BDF, sysfs_root=sysfs, ops=k)
    ioas, hwpt = -destroyed[0], -destroyed[1]
    assert destroyed[2:] == [hwpt, ioas]
    k.assert_clean()


@pytest.mark.parametrize("name", ["VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT"])
def test_eperm_explains_interrupt_remapping(tmp_path: Path, name: str) -> None:
    k, sysfs = host(tmp_path)
    k.fail(name, errno.EPERM)
    assert failure(k, sysfs) == (
        f"{BDF}: {name} on /dev/vfio/devices/vfio3 failed: EPERM, no interrupt remapping, so MSIs cannot be "
        "isolated (iommufd.allow_unsafe_interrupts=1 overrides)"
    )
    k.assert_clean()
