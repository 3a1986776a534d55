"""intel-iommu's host-device checks: order, texts and reason codes per release (brief §4.1)."""

from __future__ import annotations

import pytest

from viommu.errors import Refusal
from viommu.host.caps import HostIOMMUCaps, IommuType, IovaRange, PciAlias
from viommu.host.device import CAP_AW_BITS, CapUnsupported, HiodKind, HostIOMMUDevice
from viommu.models.base import DeviceSpec, PciAddr, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.reasons import REASONS

ADDR = PciAddr(1, 0)
OTHER = PciAddr(2, 0)
CM_SET = "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
CM_DONE = "We need to set caching-mode=on for intel-iommu to enable device assignment with IOMMU protection."
#: Host VT-d CAP with FL1GP (bit 56) set / clear.
HOST_CAP_FS1GP = 1 << 56 | 0x00D2008C222F0606
HOST_CAP_NO_FS1GP = 0x00D2008C222F0606


def host(
    aw: int = 48,
    *,
    kind: HiodKind = HiodKind.LEGACY_VFIO,
    iommu_type: IommuType = IommuType.INTEL_VTD,
    cap: int = HOST_CAP_FS1GP,
    aliased: bool = False,
) -> HostIOMMUDevice:
    caps = HostIOMMUCaps(
        iommu_type=iommu_type,
        registers={"cap": cap, "ecap": 0},
        # x86 hosts: usable below the MSI window and above it, up to 2^aw - 1.
        iova_ranges=(IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << aw) - 1)),
        reserved_regions=(),
        page_size_mask=0x40201000,
        alias=PciAlias("0000:00:1e.0", "0000:05:00.0") if aliased else PciAlias(),
    )
    return HostIOMMUDevice("0000:3b:00.0", caps, kind)


def viommu(device: str, version: str = "10.0") -> IntelIOMMU:
    return IntelIOMMU(DeviceSpec.parse(device), QemuVersion.parse(version))


def refusal(dev: IntelIOMMU, hiod: HostIOMMUDevice, *, hotplug: bool = False) -> Refusal:
    with pytest.raises(Refusal) as info:
        dev.set_iommu_device(ADDR, hiod, hotplug=hotplug)
    assert info.value.code in REASONS
    return info.value


def test_host_aw_bits_too_narrow() -> None:
    # DESIGN.md's example: vIOMMU aw-bits 48 over a 39-bit host IOMMU is refused.
    r = refusal(viommu("intel-iommu,caching-mode=on"), host(39))
    assert (r.code, r.message) == ("aw-bits-exceeds-host", "aw-bits 48 > host aw-bits 39")


def test_host_aw_bits_fits() -> None:
    dev = viommu("intel-iommu,caching-mode=on,aw-bits=39")
    dev.set_iommu_device(ADDR, host(39), hotplug=False)
    dev.set_iommu_device(OTHER, host(48), hotplug=True)
    assert set(dev.devices) == {ADDR, OTHER}


def test_9x_default_aw_fits_a_39_bit_host() -> None:
    viommu("intel-iommu,caching-mode=on", "9.2").set_iommu_device(ADDR, host(39), hotplug=False)


def test_duplicate_then_unset() -> None:
    dev = viommu("intel-iommu,caching-mode=on")
    dev.set_iommu_device(ADDR, host(), hotplug=False)
    r = refusal(dev, host())
    assert (r.code, r.message) == ("duplicate-host-iommu-device", "Host IOMMU device already exist")
    dev.unset_iommu_device(ADDR)
    dev.set_iommu_device(ADDR, host(), hotplug=True)


def test_caching_mode_before_10_2_cold_plug_fails_at_machine_done() -> None:
    dev = viommu("intel-iommu")
    dev.set_iommu_device(ADDR, host(), hotplug=False)  # accepted at realize ...
    with pytest.raises(Refusal) as info:
        dev.machine_done()  # ... and QEMU exits when the machine is done
    assert (info.value.code, info.value.message) == ("caching-mode-required", CM_DONE)
    assert not dev.frozen


def test_caching_mode_before_10_2_counts_devices_without_hiod() -> None:
    # An mdev vfio-pci never reaches set_iommu_device, but the machine-done hook still sees it.
    dev = viommu("intel-iommu", "9.1")
    with pytest.raises(Refusal, match="We need to set caching-mode=on"):
        dev.machine_done(vfio_devices=[ADDR])
    viommu("intel-iommu", "9.1").machine_done()  # no vfio-pci at all: fine


def test_caching_mode_before_10_2_hotplug() -> None:
    dev = viommu("intel-iommu")
    dev.machine_done()
    r = refusal(dev, host(), hotplug=True)
    assert (r.code, r.message) == ("caching-mode-required", CM_SET)


def test_caching_mode_from_10_2_checked_first_in_set() -> None:
    dev = viommu("intel-iommu", "10.2")
    # Refused even though the aw-bits check would fail too: caching-mode comes first.
    r = refusal(dev, host(39))
    assert (r.code, r.message) == ("caching-mode-required", CM_SET)
    dev.machine_done()
    assert dev.frozen


def test_flts_10_x_refuses_every_host_device_after_the_aw_check() -> None:
    for version in ("10.0", "10.1", "10.2"):
        dev = viommu("intel-iommu,caching-mode=on,x-scalable-mode=on,x-flts=on", version)
        r = refusal(dev, host(48, kind=HiodKind.IOMMUFD))
        text = "host device is uncompatible with stage-1 translation"
        assert (r.code, r.message) == ("flts-incompatible", text)
        assert refusal(dev, host(39)).code == "aw-bits-exceeds-host"


@pytest.mark.parametrize(
    ("hiod", "code", "message"),
    [
        (host(), "flts-needs-iommufd", "Need IOMMUFD backend when x-flts=on"),
        (host(kind=HiodKind.IOMMUFD, iommu_type=IommuType.ARM_SMMUV3), "iommu-type-mismatch",
         "Incompatible host platform IOMMU type 2"),
        (host(kind=HiodKind.IOMMUFD, cap=HOST_CAP_NO_FS1GP), "fs1gp-unsupported",
         "First stage 1GB large page is unsupported by host IOMMU"),
        (host(kind=HiodKind.IOMMUFD, aliased=True), "flts-behind-bridge",
         "Host device downstream to a PCI bridge is unsupported when x-flts=on"),
    ],
)
def test_flts_11_0_accel_checks(hiod: HostIOMMUDevice, code: str, message: str) -> None:
    dev = viommu("intel-iommu,caching-mode=on,scalable-mode=on,flts=on", "11.0")
    r = refusal(dev, hiod)
    assert (r.code, r.message) == (code, message)


def test_flts_11_0_accepts_a_fitting_iommufd_vtd_host() -> None:
    dev = viommu("intel-iommu,caching-mode=on,scalable-mode=on,flts=on", "11.0")
    dev.set_iommu_device(ADDR, host(kind=HiodKind.IOMMUFD), hotplug=False)
    # fs1gp=off lifts the FS1GP requirement.
    dev = viommu("intel-iommu,caching-mode=on,scalable-mode=on,flts=on,fs1gp=off", "11.0")
    dev.set_iommu_device(ADDR, host(kind=HiodKind.IOMMUFD, cap=HOST_CAP_NO_FS1GP), hotplug=False)


class _FailingCap(HostIOMMUDevice):
    def get_cap(self, cap_id: int) -> int:
        raise CapUnsupported(f"hiod_legacy_vfio_get_cap: unsupported capability {cap_id:x}")


class _NoGetCap:
    get_cap = None


def test_get_cap_failures() -> None:
    dev = viommu("intel-iommu,caching-mode=on")
    base = host()
    r = refusal(dev, _FailingCap(base.name, base.caps, base.kind))
    text = f"hiod_legacy_vfio_get_cap: unsupported capability {CAP_AW_BITS:x}"
    assert (r.code, r.message) == ("get-cap-failed", text)
    with pytest.raises(Refusal) as info:
        dev.set_iommu_device(ADDR, _NoGetCap(), hotplug=False)  # type: ignore[arg-type]
    assert (info.value.code, info.value.message) == ("get-cap-not-implemented", ".get_cap() not implemented")


def test_no_ranges_means_64_bits() -> None:
    # §2.3: a legacy container without IOVA-range info reports AW_BITS_MAX (64): every aw-bits fits.
    caps = HostIOMMUCaps(IommuType.INTEL_VTD, {}, (), (), 0x1000)
    viommu("intel-iommu,caching-mode=on").set_iommu_device(ADDR, HostIOMMUDevice("x", caps), hotplug=False)


def test_registers_do_not_depend_on_hosts() -> None:
    dev = viommu("intel-iommu,caching-mode=on,aw-bits=39")
    before = dev.guest_state()
    dev.set_iommu_device(ADDR, host(39), hotplug=False)
    dev.machine_done()
    dev.set_iommu_device(OTHER, host(48), hotplug=True)
    dev.unset_iommu_device(ADDR)
    dev.reset()
    assert dev.guest_state() == before
