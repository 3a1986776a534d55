"""The legacy VFIO (type1 container) probe against the fake kernel.

Expected values are the fake host's configuration (the kernel's answers),
never the probe's output; every test also checks that the probe left no fd
open, no group in a container and nothing mapped.
"""

from __future__ import annotations

import errno
import struct

import pytest

from fakekernel import FakeDevice, FakeGroup, FakeIommu, FakeKernel
from viommu.errors import HostAccessError
from viommu.host.caps import IovaRange
from viommu.host.vfio import probe_legacy

BDF = "0000:00:03.0"
GROUP = 7
MIB = 1 << 20


def kernel(**kw: object) -> FakeKernel:
    iommu = FakeIommu(usable=[(0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)], pgsizes=0x40201000)
    return FakeKernel(devices=[FakeDevice(BDF, group=GROUP, iommu=iommu)], **kw)  # type: ignore[arg-type]


def failure(k: FakeKernel, group: int = GROUP) -> str:
    with pytest.raises(HostAccessError) as info:
        probe_legacy(BDF, group, ops=k)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{BDF}: ")
    return text


def test_type1_on_a_current_kernel() -> None:
    k = kernel(version=(6, 12))
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.iova_ranges == (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, 0x7F_FFFF_FFFF))
    assert probe.iova_pgsizes == 0x40201000
    assert probe.dma_avail == 65535
    # MIGRATION: flags 0, the smallest page of the bitmap, 256 MiB of dirty bitmap.
    assert probe.migration == (0, 0x1000, 256 * MIB)
    assert probe.dma_cc is True
    assert probe.extensions == (1, 3, 4, 9, 10)
    k.assert_clean()


def test_protocol_order_and_argsz_growth() -> None:
    k = kernel()
    sizes: list[int] = []
    k.after["VFIO_IOMMU_GET_INFO"] = lambda view: sizes.append(len(view))
    probe_legacy(BDF, GROUP, ops=k)
    # First 24 bytes, then exactly the size the kernel asked for: 24 + MIGRATION 32
    # + DMA_AVAIL 16 (12 aligned to 8) + IOVA_RANGE 16 + 2 ranges × 16.
    assert sizes == [24, 24 + 32 + 16 + 16 + 32]
    assert k.calls[:3] == ["VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_GROUP_GET_STATUS"]
    assert k.calls.index("VFIO_GROUP_SET_CONTAINER") < k.calls.index("VFIO_SET_IOMMU")
    assert k.calls[-1] == "VFIO_GROUP_UNSET_CONTAINER"


def test_iommufd_compat_container_chains_caps_in_another_order() -> None:
    k = kernel(container="iommufd")
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.iova_ranges == (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, 0x7F_FFFF_FFFF))
    assert probe.dma_avail == 0xFFFFFFFF
    assert probe.migration is None
    assert probe.extensions == (1, 3, 4, 9)
    k.assert_clean()


def test_kernel_before_cap_offset_has_no_ranges() -> None:
    k = kernel(version=(5, 3))
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.iova_ranges == ()
    assert probe.iova_pgsizes == 0x40201000
    assert (probe.dma_avail, probe.migration) == (None, None)
    assert probe.extensions == (1, 3, 4)
    assert k.calls.count("VFIO_IOMMU_GET_INFO") == 1
    k.assert_clean()


def test_kernel_with_only_the_iova_range_cap() -> None:
    k = kernel(version=(5, 4))
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert len(probe.iova_ranges) == 2
    assert (probe.dma_avail, probe.migration) == (None, None)
    k.assert_clean()


def test_no_dma_cc_when_the_iommu_does_not_enforce_coherency() -> None:
    k = FakeKernel(devices=[FakeDevice(BDF, group=GROUP, iommu=FakeIommu(dma_cc=False))])
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.dma_cc is False
    assert 4 not in probe.extensions


def test_caps_that_grow_between_calls_are_fetched_again() -> None:
    k = kernel()
    grown = [False]

    def grow() -> None:
        if k.calls.count("VFIO_IOMMU_GET_INFO") == 2 and not grown[0]:
            k.devices[0].iommu.usable = [(0, 0xFFFF), (0x20000, 0x2FFFF), (0x40000, 0xFFFFF)]
            grown[0] = True

    k.before["VFIO_IOMMU_GET_INFO"] = grow
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.iova_ranges == (
        IovaRange(0, 0xFFFF),
        IovaRange(0x20000, 0x2FFFF),
        IovaRange(0x40000, 0xFFFFF),
    )
    assert k.calls.count("VFIO_IOMMU_GET_INFO") == 3
    k.assert_clean()


def test_caps_that_never_stop_growing_give_up() -> None:
    k = kernel()

    def grow() -> None:
        k.devices[0].iommu.usable = [*k.devices[0].iommu.usable, (1 << 40, 1 << 41)]

    k.before["VFIO_IOMMU_GET_INFO"] = grow
    assert "kept asking for a larger buffer" in failure(k)
    k.assert_clean()


def _corrupt(offset: int, fmt: str, *values: int):  # type: ignore[no-untyped-def]
    def hook(view: memoryview) -> None:
        if len(view) > 24:
            struct.pack_into(fmt, view, offset, *values)

    return hook


@pytest.mark.parametrize(
    ("offset", "fmt", "values", "expected"),
    [
        # The first cap's next points at itself.
        (24 + 4, "<I", (24,), "a loop"),
        # cap_offset inside the info struct.
        (16, "<I", (8,), "malformed capability chain (offset 8"),
        # next beyond the buffer.
        (24 + 4, "<I", (4096,), "malformed capability chain (offset 4096"),
        # The IOVA_RANGE cap (the last one, at 24 + 32 + 16) claims 1000 ranges.
        (24 + 48 + 8, "<I", (1000,), "1000 IOVA ranges overrunning"),
        # A range with start > end.
        (24 + 48 + 16, "<QQ", (0x2000, 0x1000), "empty IOVA range 0x2000-0x1000"),
    ],
)
def test_malformed_chains_are_refused(offset: int, fmt: str, values: tuple[int, ...], expected: str) -> None:
    k = kernel()
    k.after["VFIO_IOMMU_GET_INFO"] = _corrupt(offset, fmt, *values)
    assert expected in failure(k)
    k.assert_clean()


def test_unknown_capabilities_are_skipped() -> None:
    k = kernel()
    # Relabel MIGRATION (the first cap) as a future id 99: the walk must step over it.
    k.after["VFIO_IOMMU_GET_INFO"] = _corrupt(24, "<H", 99)
    probe = probe_legacy(BDF, GROUP, ops=k)
    assert probe.migration is None
    assert probe.dma_avail == 65535
    assert len(probe.iova_ranges) == 2


def test_no_vfio_container() -> None:
    k = kernel()
    k.fail("open:/dev/vfio/vfio", errno.ENOENT)
    assert failure(k) == f"{BDF}: kernel lacks the VFIO container: /dev/vfio/vfio does not exist (ENOENT)"
    k.assert_clean()


def test_permission_denied_on_the_group() -> None:
    k = kernel()
    k.fail(f"open:/dev/vfio/{GROUP}", errno.EACCES)
    text = failure(k)
    assert "permission denied opening /dev/vfio/7, run as root" in text
    assert "EACCES" in text
    k.assert_clean()


def test_group_not_bound_to_vfio() -> None:
    k = kernel()
    assert "/dev/vfio/9 does not exist: bind every device of IOMMU group 9 to vfio-pci" in failure(k, group=9)
    k.assert_clean()


def test_noiommu_group_is_refused() -> None:
    k = FakeKernel(devices=[FakeDevice(BDF, group=GROUP)], groups=[FakeGroup(GROUP, noiommu=True)])
    assert "is a no-IOMMU group (/dev/vfio/noiommu-7)" in failure(k)
    assert k.calls == ["VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION"]
    k.assert_clean()


def test_group_open_in_another_process() -> None:
    k = FakeKernel(devices=[FakeDevice(BDF, group=GROUP)], groups=[FakeGroup(GROUP, busy=True)])
    text = failure(k)
    assert "IOMMU group 7 is in use" in text
    assert "(EBUSY)" in text
    k.assert_clean()


def test_group_already_in_a_container_is_not_touched() -> None:
    k = FakeKernel(
        devices=[FakeDevice(BDF, group=GROUP)], groups=[FakeGroup(GROUP, container_set_elsewhere=True)]
    )
    assert "already belongs to a container" in failure(k)
    assert "VFIO_GROUP_SET_CONTAINER" not in k.calls
    k.assert_clean()


def test_group_not_viable() -> None:
    k = FakeKernel(devices=[FakeDevice(BDF, group=GROUP)], groups=[FakeGroup(GROUP, viable=False)])
    assert "IOMMU group 7 is not viable" in failure(k)
    assert "VFIO_GROUP_SET_CONTAINER" not in k.calls
    k.assert_clean()


def test_type1_v1_when_v2_is_missing() -> None:
    class OldType1(FakeKernel):
        def _extension(self, container, ext):  # type: ignore[no-untyped-def]
            return 0 if ext == 3 else super()._extension(container, ext)

    k = OldType1(devices=[FakeDevice(BDF, group=GROUP)])
    seen: list[int] = []
    original = k._container_ioctl

    def spy(container, name, arg):  # type: ignore[no-untyped-def]
        if name == "VFIO_SET_IOMMU":
            seen.append(arg)
        return original(container, name, arg)

    k._container_ioctl = spy  # type: ignore[method-assign]
    probe_legacy(BDF, GROUP, ops=k)
    assert seen == [1]
    k.assert_clean()


def test_no_type1_backend() -> None:
    class NoType1(FakeKernel):
        def _extension(self, container, ext):  # type: ignore[no-untyped-def]
            return 0

    k = NoType1(devices=[FakeDevice(BDF, group=GROUP)])
    assert "offers no type1 IOMMU backend" in failure(k)
    k.assert_clean()


@pytest.mark.parametrize(
    "name",
    [
        "VFIO_GET_API_VERSION",
        "VFIO_CHECK_EXTENSION",
        "VFIO_GROUP_GET_STATUS",
        "VFIO_GROUP_SET_CONTAINER",
        "VFIO_SET_IOMMU",
        "VFIO_IOMMU_GET_INFO",
    ],
)
@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EPERM, errno.ENODEV, errno.EBUSY, errno.EINVAL])
def test_every_failing_ioctl_is_one_line_and_leaves_nothing(name: str, code: int) -> None:
    k = kernel()
    k.fail(name, code)
    text = failure(k)
    assert f"{name} on /dev/vfio/" in text
    assert f"failed: {errno.errorcode[code]}, " in text
    k.assert_clean()


def test_enotty_says_the_kernel_lacks_the_ioctl() -> None:
    k = kernel()
    k.fail("VFIO_IOMMU_GET_INFO", errno.ENOTTY)
    assert failure(k) == (
        f"{BDF}: VFIO_IOMMU_GET_INFO on /dev/vfio/vfio failed: ENOTTY, the kernel lacks this ioctl"
    )


def test_failing_cleanup_does_not_hide_the_first_error() -> None:
    k = kernel()
    k.fail("VFIO_IOMMU_GET_INFO", errno.EIO)
    k.fail("VFIO_GROUP_UNSET_CONTAINER", errno.EINVAL)
    text = failure(k)
    assert "VFIO_IOMMU_GET_INFO" in text
    assert "EIO" in text
    assert k.open_paths == []
    # The unset failed, so closing the group fd was what took it out of the container.
    assert k.leaks == ["group 7 closed while in a container"]


def test_failing_cleanup_after_success_is_reported() -> None:
    k = kernel()
    k.fail("VFIO_GROUP_UNSET_CONTAINER", errno.EBUSY)
    assert "VFIO_GROUP_UNSET_CONTAINER on /dev/vfio/7 failed: EBUSY" in failure(k)
    assert k.open_paths == []


def test_failing_close_is_reported_and_the_rest_still_closed() -> None:
    k = kernel()
    k.fail(f"close:/dev/vfio/{GROUP}", errno.EIO)
    assert failure(k) == f"{BDF}: closing /dev/vfio/7 failed: EIO"
    k.assert_clean()


def test_set_iommu_eperm_explains_interrupt_remapping() -> None:
    k = kernel()
    k.fail("VFIO_SET_IOMMU", errno.EPERM)
    assert failure(k) == (
        f"{BDF}: VFIO_SET_IOMMU on /dev/vfio/vfio failed: EPERM, no interrupt remapping, so MSIs cannot be "
        "isolated (vfio_iommu_type1.allow_unsafe_interrupts=1 overrides)"
    )
    k.assert_clean()
