"""arm-smmuv3,accel=on (QEMU 11.0): IDR composition and the host IDR checks.

No aarch64 11.0 binary exists here; expected values come from the QEMU
sources, cited per test: ``smmuv3_init_id_regs`` (hw/arm/smmuv3.c; constants
SMMU_IDR1_SIDSIZE 16, SMMU_CMDQS 19, SMMU_EVENTQS 19 from smmuv3-internal.h),
``smmuv3_accel_idr_override``, ``smmuv3_accel_auto_finalise`` and
``smmuv3_accel_check_hw_compatible`` (hw/arm/smmuv3-accel.c at 13b941aa), and
the brief §4.3 texts.
"""

from __future__ import annotations

import pytest

from viommu import record
from viommu.errors import InputError, Refusal
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.host.profiles import load_profile
from viommu.models.base import DeviceSpec, PciAddr, QemuVersion
from viommu.models.qdev import DeviceConfigError
from viommu.models.registry import create
from viommu.models.smmuv3 import SMMUv3
from viommu.reasons import REASONS
from viommu.regs.smmuv3 import IDR0, IDR1, IDR3, IDR5

V11 = QemuVersion(11, 0)
ADDR = PciAddr(1, 0)


def smmu(props: str = "accel=on", version: QemuVersion = V11) -> SMMUv3:
    return SMMUv3(DeviceSpec.parse(f"arm-smmuv3,{props}"), version)


def grace(**idr: int) -> HostIOMMUDevice:
    """The bundled Grace profile's first device, as iommufd sees it, with IDRs overridden."""
    dev = load_profile("arm-nvidia-grace").devices[0]
    regs = dict(dev.caps.registers) | idr
    return HostIOMMUDevice(dev.name, record.replace(dev.caps, registers=regs), HiodKind.IOMMUFD)


def with_fields(reg: str, **fields: int) -> dict[str, int]:
    """The Grace value of ``reg`` with named fields replaced (through the register table)."""
    table = {"idr0": IDR0, "idr1": IDR1, "idr3": IDR3, "idr5": IDR5}[reg]
    value = load_profile("arm-nvidia-grace").devices[0].caps.registers[reg]
    return {reg: table.encode(dict(table.decode(value).fields) | fields)}


#: A Grace host with the 16K granule too, so that QEMU's exact granule match passes.
FITTING = with_fields("idr5", GRAN16K=1)


def refusal(dev: SMMUv3, hiod: HostIOMMUDevice) -> Refusal:
    with pytest.raises(Refusal) as info:
        dev.set_iommu_device(ADDR, hiod, hotplug=False)
    assert info.value.code in REASONS
    return info.value


def test_default_idrs_name_the_init_id_regs_fields() -> None:
    s = smmu()
    i0, i1, i3, i5 = (r.decode(s.idr(n)) for r, n in
                      ((IDR0, "idr0"), (IDR1, "idr1"), (IDR3, "idr3"), (IDR5, "idr5")))
    assert (i0["S1P"], i0["S2P"], i0["TTF"], i0["COHACC"]) == (1, 0, 2, 1)
    assert (i0["ASID16"], i0["VMID16"], i0["TTENDIAN"], i0["STALL_MODEL"]) == (1, 1, 2, 1)
    assert (i0["TERM_MODEL"], i0["ST_LEVEL"], i0["ATS"]) == (1, 1, 0)
    assert (i1["SIDSIZE"], i1["SSIDSIZE"], i1["CMDQS"], i1["EVENTQS"]) == (16, 0, 19, 19)
    assert (i3["HAD"], i3["RIL"], i3["BBML"], i3["XNX"]) == (1, 1, 2, 0)
    assert (i5["OAS"], i5["GRAN4K"], i5["GRAN16K"], i5["GRAN64K"]) == (4, 1, 1, 1)  # OAS 4: 44 bits
    state = s.guest_state()
    assert state["idr2"] == state["idr4"] == "0x00000000"
    assert state["aidr"] == "0x00000001"


def test_accel_overrides() -> None:
    s = smmu("accel=on,ril=off,ats=on,oas=48,ssidsize=20")
    assert IDR3.decode(s.idr("idr3"))["RIL"] == 0
    assert IDR0.decode(s.idr("idr0"))["ATS"] == 1
    assert IDR5.decode(s.idr("idr5"))["OAS"] == 5  # SMMU_IDR5_OAS_48
    assert IDR1.decode(s.idr("idr1"))["SSIDSIZE"] == 20


def test_stage_nested_sets_s2p_and_xnx() -> None:
    s = smmu("accel=on,stage=nested")
    assert (IDR0.decode(s.idr("idr0"))["S2P"], IDR3.decode(s.idr("idr3"))["XNX"]) == (1, 1)


def test_accel_only_properties_without_accel() -> None:
    with pytest.raises(DeviceConfigError) as info:
        smmu("ats=on", QemuVersion(10, 0))
    assert info.value.message == "ats can only be enabled if accel=on"
    with pytest.raises(DeviceConfigError):
        smmu("ril=off", QemuVersion(10, 0))


def test_accel_needs_the_11_0_profile() -> None:
    with pytest.raises(InputError) as info:
        smmu("accel=on", QemuVersion(10, 0))
    assert "11.0 only" in info.value.message


def test_bad_values() -> None:
    with pytest.raises(DeviceConfigError) as info:
        smmu("accel=on,oas=52")
    assert info.value.message == "Parameter 'oas' does not accept value '52'"
    with pytest.raises(DeviceConfigError):
        smmu("accel=on,ssidsize=21")
    with pytest.raises(DeviceConfigError):
        smmu("accel=on,granule=4k")


def test_grace_profile_lacks_16k_and_qemu_wants_an_exact_granule_match() -> None:
    # Profile IDR5 0x55: OAS 48-bit, GRAN4K and GRAN64K, no GRAN16K; QEMU has all three.
    r = refusal(smmu(), grace())
    assert r.code == "smmu-granule-mismatch"
    assert r.message == "Host SMMUv3 doesn't support 16K translation granule"


def test_grace_with_16k_fits_the_defaults_and_the_accel_options() -> None:
    smmu().set_iommu_device(ADDR, grace(**FITTING), hotplug=False)
    smmu("accel=on,ats=on,oas=48,ssidsize=20").set_iommu_device(ADDR, grace(**FITTING), hotplug=False)


@pytest.mark.parametrize(
    ("props", "idr", "code", "text"),
    [
        ("accel=on", with_fields("idr0", ST_LEVEL=0), "smmu-stlevel-mismatch",
         "Host SMMUv3 Stream Table format mismatch (host STLEVEL=0, QEMU STLEVEL=1)"),
        ("accel=on", with_fields("idr0", TTENDIAN=3), "smmu-ttendian-unsupported",
         "Host SMMUv3 doesn't support Little-endian translation table"),
        ("accel=on", with_fields("idr0", TTF=1), "smmu-ttf-unsupported",
         "Host SMMUv3 doesn't support AArch64 translation table format"),
        ("accel=on", with_fields("idr1", SIDSIZE=8), "smmu-sidsize-incompatible",
         "Host SMMUv3 SIDSIZE not compatible (host=8, QEMU=16)"),
        ("accel=on,ssidsize=20", with_fields("idr1", SSIDSIZE=10), "smmu-ssidsize-incompatible",
         "Host SMMUv3 SSIDSIZE not compatible (host=10, QEMU=20)"),
        ("accel=on", with_fields("idr3", RIL=0), "smmu-ril-unsupported",
         "Host SMMUv3 doesn't support Range Invalidation"),
        ("accel=on,oas=48", with_fields("idr5", OAS=4, GRAN16K=1), "smmu-oas-exceeds-host",
         "Host SMMUv3 supports only 44-bit IPA, but the vSMMU OAS implies 48-bit IPA"),
        ("accel=on,ats=on", with_fields("idr0", ATS=0), "smmu-ats-unsupported",
         "Host SMMUv3 doesn't support Address Translation Services"),
    ],
)
def test_each_field_check(props: str, idr: dict[str, int], code: str, text: str) -> None:
    regs = FITTING | idr if "idr5" not in idr else idr
    r = refusal(smmu(props), grace(**regs))
    assert (r.code, r.message) == (code, text)


def test_checks_run_in_qemu_order() -> None:
    # SIDSIZE too small and RIL missing: SIDSIZE is compared first.
    regs = FITTING | with_fields("idr1", SIDSIZE=8) | with_fields("idr3", RIL=0)
    assert refusal(smmu(), grace(**regs)).code == "smmu-sidsize-incompatible"


def test_legacy_backend_and_other_iommus_are_refused() -> None:
    legacy = record.replace(grace(**FITTING), kind=HiodKind.LEGACY_VFIO)
    r = refusal(smmu(), legacy)
    assert r.message == ("vfio-pci endpoint devices without an iommufd backend not allowed when using "
                         "arm-smmuv3,accel=on")
    from viommu.host.caps import IommuType

    vtd = record.replace(grace(**FITTING).caps, iommu_type=IommuType.INTEL_VTD)
    r = refusal(smmu(), HostIOMMUDevice("0000:3b:00.0", vtd, HiodKind.IOMMUFD))
    assert r.message == "Wrong data type (1) for Host SMMUv3 device info"


def test_auto_resolves_from_the_first_device_and_sticks() -> None:
    s = smmu("accel=on,ats=auto,ril=auto,ssidsize=auto")
    first = grace(**FITTING | with_fields("idr1", SSIDSIZE=10))
    s.set_iommu_device(ADDR, first, hotplug=False)
    assert IDR1.decode(s.idr("idr1"))["SSIDSIZE"] == 10
    assert IDR0.decode(s.idr("idr0"))["ATS"] == 1  # Grace IDR0 has ATS
    s.machine_done()
    # A hotplugged device with fewer PASID bits is checked against the fixed 10.
    narrow = grace(**FITTING | with_fields("idr1", SSIDSIZE=5))
    with pytest.raises(Refusal) as info:
        s.set_iommu_device(PciAddr(2, 0), narrow, hotplug=True)
    assert info.value.message == "Host SMMUv3 SSIDSIZE not compatible (host=5, QEMU=10)"
    s.unset_iommu_device(ADDR)
    assert IDR1.decode(s.idr("idr1"))["SSIDSIZE"] == 10


def test_auto_without_a_cold_plugged_device_fails_at_machine_done() -> None:
    s = smmu("accel=on,ats=auto")
    with pytest.raises(Refusal) as info:
        s.machine_done()
    assert info.value.message == (
        "arm-smmuv3 accel=on with 'auto' properties requires at least one cold-plugged VFIO device"
    )
    smmu("accel=on").machine_done()  # no auto: nothing to resolve


def test_same_device_twice_is_accepted_a_different_one_is_not() -> None:
    s = smmu()
    dev = grace(**FITTING)
    s.set_iommu_device(ADDR, dev, hotplug=False)
    s.set_iommu_device(ADDR, dev, hotplug=False)
    other = record.replace(dev, name="0008:01:00.1")
    assert refusal(s, other).code == "smmu-duplicate-hiod"


def test_emulated_smmu_accepts_everything() -> None:
    s = smmu("accel=off", QemuVersion(10, 0))
    s.set_iommu_device(ADDR, record.replace(grace(), kind=HiodKind.LEGACY_VFIO), hotplug=True)


def test_narrowed_proposes_what_the_host_lacks() -> None:
    host = grace(**FITTING | with_fields("idr3", RIL=0) | with_fields("idr1", SSIDSIZE=8))
    assert smmu("accel=on,ssidsize=20").narrowed(host) == {"ril": "off", "ssidsize": "8"}
    fixed = smmu("accel=on,ril=off,ssidsize=8")
    fixed.set_iommu_device(ADDR, host, hotplug=False)


def test_registry() -> None:
    assert isinstance(create(DeviceSpec.parse("arm-smmuv3,accel=on"), V11), SMMUv3)
