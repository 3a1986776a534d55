"""intel-iommu version profiles against the values in the qemu-framework brief.

Every expected register below is copied from the brief's §3.4 tables (CAP and
ECAP per configuration and release) or §3.6 (real guests' dmesg lines), which
were derived from QEMU's sources and confirmed by guest logs; none comes from
the code under test. Profiles other than 10.0 cannot be checked against a
binary here, so these tables are their proof.
"""

from __future__ import annotations

import pytest

from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.intel import IntelIOMMU, Irqchip, compose
from viommu.models.qdev import DeviceConfigError

SPLIT = Irqchip.SPLIT
KERNEL = Irqchip.KERNEL


def regs(props: dict[str, str], version: str, machine: str | None = None,
         irqchip: Irqchip = Irqchip.USERSPACE) -> tuple[int, int]:
    return compose(props, version, machine, irqchip=irqchip)


# §3.4, CAP table: (configuration, CAP, releases it applies to).
@pytest.mark.parametrize(
    ("props", "version", "machine", "cap"),
    [
        # "defaults, aw 39": 9.1/9.2 default; 10.0-10.1 with a <=9.1 machine type or aw-bits=39
        ({}, "9.1", None, 0x00D2008C22260206),
        ({}, "9.2", None, 0x00D2008C22260206),
        ({}, "10.0", "pc-q35-9.1", 0x00D2008C22260206),
        ({}, "10.1", "pc-q35-9.1", 0x00D2008C22260206),
        ({"aw-bits": "39"}, "10.0", None, 0x00D2008C22260206),
        ({"aw-bits": "39"}, "10.1", None, 0x00D2008C22260206),
        # "aw 39 + caching-mode": 9.1/9.2
        ({"caching-mode": "on"}, "9.1", None, 0x00D2008C22260286),
        ({"caching-mode": "on"}, "9.2", None, 0x00D2008C22260286),
        # "defaults, aw 48": 10.0, 10.1
        ({}, "10.0", None, 0x00D2008C222F0606),
        ({}, "10.1", None, 0x00D2008C222F0606),
        # "aw 48 + caching-mode": 10.0, 10.1
        ({"caching-mode": "on"}, "10.0", None, 0x00D2008C222F0686),
        ({"caching-mode": "on"}, "10.1", None, 0x00D2008C222F0686),
        # "aw 48, dma-translation=off": 10.0, 10.1
        ({"dma-translation": "off"}, "10.0", None, 0x00D2008C222F0006),
        ({"dma-translation": "off"}, "10.1", None, 0x00D2008C222F0006),
        # "aw 48 (+ESRTPS)": 10.2; "+ caching-mode": 10.2 and 11.0.3
        ({}, "10.2", None, 0x80D2008C222F0606),
        ({"caching-mode": "on"}, "10.2", None, 0x80D2008C222F0686),
        ({"caching-mode": "on"}, "11.0.3", None, 0x80D2008C222F0686),
        # "+ESRTPS +bit6 bug": 11.0.0-11.0.2
        ({}, "11.0", None, 0x80D2008C222F0646),
        ({}, "11.0.2", None, 0x80D2008C222F0646),
        ({"caching-mode": "on"}, "11.0.0", None, 0x80D2008C222F06C6),
        ({"caching-mode": "on"}, "11.0.2", None, 0x80D2008C222F06C6),
        # "scalable + flts (+fs1gp)": base | 1<<56
        ({"x-scalable-mode": "on", "x-flts": "on"}, "10.0", None, 0x01D2008C222F0606),
        ({"x-scalable-mode": "on", "x-flts": "on"}, "10.1", None, 0x01D2008C222F0606),
        ({"x-scalable-mode": "on", "x-flts": "on"}, "10.2", None, 0x81D2008C222F0606),
        ({"scalable-mode": "on", "flts": "on"}, "11.0.0", None, 0x81D2008C222F0646),
    ],
)
def test_cap_table(props: dict[str, str], version: str, machine: str | None, cap: int) -> None:
    assert regs(props, version, machine)[0] == cap


# §3.4, ECAP table: columns "<=10.2 (PT default on)" and "2026 tree (no PT)" = 11.0.0-11.0.2.
@pytest.mark.parametrize(
    ("props", "irqchip", "old", "new"),
    [
        ({}, Irqchip.USERSPACE, 0xF00F4A, 0xF00F0A),  # TCG/qtest defaults (IR, no EIM)
        ({}, SPLIT, 0xF00F5A, 0xF00F1A),  # KVM split irqchip defaults (IR+EIM)
        ({}, KERNEL, 0xF42, 0xF02),  # KVM full in-kernel irqchip (IR off)
        ({"device-iotlb": "on"}, SPLIT, 0xF00F5E, 0xF00F1E),  # + device-iotlb: +0x4
        ({"snoop-control": "on"}, Irqchip.USERSPACE, 0xF00FCA, 0xF00F8A),  # + snoop-control: +0x80
        ({"SCALABLE": "on"}, Irqchip.USERSPACE, 0x480080F00F4A, 0x480080F00F0A),
        ({"SCALABLE": "on", "FLTS": "on"}, Irqchip.USERSPACE, 0x880000F00F4A, 0x880000F00F0A),
    ],
)
def test_ecap_table(props: dict[str, str], irqchip: Irqchip, old: int, new: int) -> None:
    names_10 = {"SCALABLE": "x-scalable-mode", "FLTS": "x-flts"}
    names_11 = {"SCALABLE": "scalable-mode", "FLTS": "flts"}
    for version in ("10.0", "10.1", "10.2"):
        assert regs({names_10.get(k, k): v for k, v in props.items()}, version, irqchip=irqchip)[1] == old
    assert regs({names_11.get(k, k): v for k, v in props.items()}, "11.0", irqchip=irqchip)[1] == new


def test_ecap_scalable_9x_has_no_first_stage() -> None:
    # §3.3 note: "in 9.1 there is no flts; scalable mode always gives SMTS|SRS|SLTS".
    assert regs({"x-scalable-mode": "on"}, "9.1")[1] == 0x480080F00F4A
    with pytest.raises(DeviceConfigError, match=r"Property 'intel-iommu\.x-flts' not found"):
        regs({"x-scalable-mode": "on", "x-flts": "on"}, "9.2")


def test_pasid_size_from_10_1() -> None:
    # §3.4: "+ x-pasid-mode (with scalable): +1<<40; +0x3800000000 PSS from ~10.1 -> 0x493880F00F4A".
    props = {"x-scalable-mode": "on", "x-pasid-mode": "on"}
    assert regs(props, "10.1")[1] == 0x493880F00F4A
    assert regs(props, "10.0")[1] == 0x480080F00F4A | 1 << 40


def test_svm_bits() -> None:
    # §3.4: "+ svm: +0x0000040220000000 (PRS|NWFS|PDS)" on top of scalable+flts+PASID+DT (11.0.0 column).
    base = {"scalable-mode": "on", "flts": "on", "x-pasid-mode": "on", "device-iotlb": "on"}
    without = regs(base, "11.0")[1]
    assert regs({**base, "svm": "on"}, "11.0")[1] - without == 0x0000040220000000


def test_pt_fixed_in_11_0_3() -> None:
    # §3.5: 11.0.3 guests show "cap 80d2008c222f0686 ecap f00f4a" (PT back in ECAP, CAP bit 6 clear).
    assert regs({"caching-mode": "on"}, "11.0.3") == (0x80D2008C222F0686, 0xF00F4A)


@pytest.mark.parametrize(
    ("props", "version", "line"),
    [
        # §3.6, guest dmesg lines from hw-iommu-corpus.csv (all KVM with split irqchip).
        ({"intremap": "on", "caching-mode": "on"}, "9.1", "cap d2008c22260286 ecap f00f5a"),
        ({"device-iotlb": "on"}, "10.0", "cap d2008c222f0606 ecap f00f5e"),
        ({"caching-mode": "on"}, "10.2", "cap 80d2008c222f0686 ecap f00f5a"),
        ({"caching-mode": "on"}, "11.0.0", "cap 80d2008c222f06c6 ecap f00f1a"),
    ],
)
def test_real_guest_lines(props: dict[str, str], version: str, line: str) -> None:
    _, cap, _, ecap = line.split()
    assert regs(props, version, irqchip=SPLIT) == (int(cap, 16), int(ecap, 16))


def test_machine_compat_quirk_9_2() -> None:
    # §3.1: the aw-bits=39 compat entry sits in pc_compat_9_1, so on QEMU >= 10.0 a pc-q35-9.2
    # machine gets 48 although QEMU 9.2 itself gave 39.
    assert regs({}, "10.0", "pc-q35-9.2")[0] == 0x00D2008C222F0606
    assert regs({}, "9.2", "pc-q35-9.2")[0] == 0x00D2008C22260206


@pytest.mark.parametrize(
    ("props", "version", "message"),
    [
        # §4.1 "Not host-related" texts, per release.
        ({"aw-bits": "40"}, "9.1", "Supported values for aw-bits are: 39, 48"),
        ({"aw-bits": "40"}, "10.0", "Legacy mode: supported values for aw-bits are: 39, 48"),
        ({"x-scalable-mode": "on", "aw-bits": "40"}, "10.2",
         "Scalable mode(flts=off): supported values for aw-bits are: 39, 48"),
        ({"x-scalable-mode": "on", "x-flts": "on", "aw-bits": "39"}, "10.0",
         "Scalable mode(flts=on): supported value for aw-bits is: 48"),
        ({"x-flts": "on"}, "10.0", "x-flts is only available in scalable mode"),
        ({"flts": "on"}, "11.0", "flts is only available in scalable mode"),
        ({"x-pasid-mode": "on"}, "9.1", "Need to set scalable mode for PASID"),
        ({"x-scalable-mode": "on", "dma-drain": "off"}, "10.1", "Need to set dma_drain for scalable mode"),
        ({"x-scalable-mode": "on", "x-pasid-mode": "on", "device-iotlb": "on"}, "10.2",
         "PASID based device IOTLB is not supported"),
        ({"intremap": "off", "eim": "on"}, "9.2", "eim=on cannot be selected without intremap=on"),
        ({"svm": "on"}, "11.0", "Need to set device IOTLB for svm"),
        ({"svm": "on", "device-iotlb": "on"}, "11.0", "Need to set flts for svm"),
        ({"dma-drain": "on"}, "11.0", "Property 'intel-iommu.dma-drain' not found"),
        ({"pt": "on"}, "11.0", "Property 'intel-iommu.pt' not found"),
        ({"x-scalable-mode": "on"}, "11.0", "Property 'intel-iommu.x-scalable-mode' not found"),
    ],
)
def test_config_refusals(props: dict[str, str], version: str, message: str) -> None:
    with pytest.raises(DeviceConfigError) as info:
        regs(props, version)
    assert info.value.message == message


def test_intremap_with_kernel_irqchip() -> None:
    # §4.1 x86-iommu text; intremap=auto resolves to off with a full in-kernel irqchip instead.
    with pytest.raises(DeviceConfigError) as info:
        regs({"intremap": "on"}, "10.0", irqchip=KERNEL)
    expected = "Interrupt Remapping cannot work with kernel-irqchip=on, please use 'split|off'."
    assert info.value.message == expected
    assert info.value.code == "intremap-kernel-irqchip"


def test_guest_state_and_reset() -> None:
    dev = IntelIOMMU(DeviceSpec.parse("intel-iommu,caching-mode=on"), QemuVersion(10, 0))
    before = dev.guest_state()
    assert before == {"model": "intel-iommu", "cap": "0x00d2008c222f0686", "ecap": "0x0000000000f00f4a",
                      "ver": "0x00000010"}
    dev.reset()
    assert dev.guest_state() == before


def test_unknown_profile() -> None:
    from viommu.errors import InputError

    with pytest.raises(InputError, match=r"no intel-iommu profile for QEMU 9\.0"):
        regs({}, "9.0")
