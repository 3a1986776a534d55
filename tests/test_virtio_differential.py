"""virtio-iommu-pci model vs the real QEMU 10.0 binary.

Every case is asked of the binary first (paused TCG machine, nothing read
back): where QEMU refuses, the model must refuse with the same text and blame
the same option; where QEMU starts, the model must accept. The defaults after
machine compat are read with QMP ``qom-get``. No expected value comes from the
model.
"""

from __future__ import annotations

import random

import pytest

from qemu_oracle import Outcome, qom_get, run_many
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.qdev import DeviceConfigError
from viommu.models.virtio import VirtioIOMMU

pytestmark = pytest.mark.qemu

QEMU_10_0 = QemuVersion(10, 0)
SEED = 20250202
RANDOM_CASES = 60

HANDPICKED: tuple[tuple[str, str], ...] = (
    ("q35", "virtio-iommu-pci"),
    ("pc", "virtio-iommu-pci"),
    ("microvm", "virtio-iommu-pci"),
    ("q35", "virtio-iommu-device"),
    ("q35", "virtio-iommu-pci,aw-bits=31"),
    ("q35", "virtio-iommu-pci,aw-bits=32"),
    ("q35", "virtio-iommu-pci,aw-bits=64"),
    ("q35", "virtio-iommu-pci,aw-bits=65"),
    ("q35", "virtio-iommu-pci,aw-bits=0"),
    ("q35", "virtio-iommu-pci,aw-bits=256"),
    ("q35", "virtio-iommu-pci,aw-bits=0x30"),
    ("q35", "virtio-iommu-pci,aw-bits=x"),
    ("q35", "virtio-iommu-pci,granule=4k"),
    ("q35", "virtio-iommu-pci,granule=64k,aw-bits=48"),
    ("q35", "virtio-iommu-pci,granule=32k"),
    ("q35", "virtio-iommu-pci,granule=HOST"),
    ("q35", "virtio-iommu-pci,granule=bad,aw-bits=31"),
    ("q35", "virtio-iommu-pci,aw-bits=31,granule=bad"),
    ("q35", "virtio-iommu-pci,boot-bypass=off"),
    ("q35", "virtio-iommu-pci,boot-bypass=maybe"),
    ("q35", "virtio-iommu-pci,foo=1"),
    ("q35", "virtio-iommu-pci,reserved-regions=0x1000:0x1fff:0"),
    ("q35", "virtio-iommu-pci,reserved-regions[0]=0xfee00000:0xfeefffff:1"),
    ("q35", "virtio-iommu-pci,len-reserved-regions=1"),
    ("q35", "virtio-iommu-pci,virtio-backend=x"),
    ("q35", "virtio-iommu-pci,legacy-primary-bus=x"),
    ("q35", "virtio-iommu-pci,busnr=3"),
    ("q35", "virtio-iommu-pci,type=x"),
    ("q35", "virtio-iommu-pci,hotplugged=on"),
    ("q35", "virtio-iommu-pci,primary-bus=pcie.0"),
    ("q35", "virtio-iommu-pci,primary-bus=nope"),
    ("q35", "virtio-iommu-pci,disable-legacy=on,disable-modern=on"),
    ("q35", "virtio-iommu-pci,disable-legacy=on,disable-modern=on,aw-bits=3"),
    ("q35", "virtio-iommu-pci,disable-legacy=off"),
    ("q35", "virtio-iommu-pci,disable-modern=on"),
    ("q35", "virtio-iommu-pci,failover_pair_id=x"),
    ("q35", "virtio-iommu-pci,failover_pair_id=x,aw-bits=3"),
    ("q35", "virtio-iommu-pci,addr=0"),
    ("q35", "virtio-iommu-pci,addr=00.0,disable-legacy=on,disable-modern=on"),
    ("q35", "virtio-iommu-pci,addr=3"),
    ("q35", "virtio-iommu-pci,addr=0x1f.7"),
    ("q35", "virtio-iommu-pci,addr=1f.2"),
    ("q35", "virtio-iommu-pci,addr=1f.8"),
    ("q35", "virtio-iommu-pci,addr=20"),
    ("q35", "virtio-iommu-pci,addr=zz"),
    ("pc", "virtio-iommu-pci,addr=1.1"),
    ("pc", "virtio-iommu-pci,addr=1.2"),
    ("q35", "virtio-iommu-pci,bus=pcie.0,addr=5"),
    ("q35", "virtio-iommu-pci,bus=main-system-bus"),
    ("q35", "virtio-iommu-pci,bus=nope"),
    ("q35", "virtio-iommu-pci,bus=ide.5"),
    ("pc", "virtio-iommu-pci,bus=pcie.0"),
    ("pc", "virtio-iommu-pci,bus=pci.0"),
    ("pc", "virtio-iommu-pci,bus=ide.2"),
    ("q35", "virtio-iommu-pci,id=1x"),
    ("q35", "virtio-iommu-pci,id=viommu0"),
    ("q35", "virtio-iommu-pci,rombar=x"),
    ("q35", "virtio-iommu-pci,rombar=-2147483649"),
    ("q35", "virtio-iommu-pci,rombar=0x10"),
    ("q35", "virtio-iommu-pci,class=x"),
    ("q35", "virtio-iommu-pci,acpi-index=5"),
    ("q35", "virtio-iommu-pci,x-max-bounce-buffer-size=4k"),
    ("q35", "virtio-iommu-pci,x-max-bounce-buffer-size=abc"),
    ("q35", "virtio-iommu-pci,x-max-bounce-buffer-size=-1"),
    ("q35", "virtio-iommu-pci,ats=on,aer=on,packed=on"),
    ("pc-q35-8.2", "virtio-iommu-pci,aw-bits=31"),
    ("pc-q35-11.0", "virtio-iommu-pci"),
)

KEYS = {
    "aw-bits": ("31", "32", "39", "48", "64", "65", "0x40", "256", "x"),
    "granule": ("4k", "8k", "16k", "64k", "host", "2k", "4K"),
    "boot-bypass": ("on", "off", "yes", "n", "1"),
    "disable-legacy": ("on", "off", "auto", "maybe"),
    "disable-modern": ("on", "off"),
    "packed": ("on", "off", "x"),
    "addr": ("4", "4.1", "0x1e", "1f.3", "zz"),
    "rombar": ("0", "-1", "x"),
}


def random_cases() -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(RANDOM_CASES):
        keys = rng.sample(sorted(KEYS), rng.randint(1, 4))
        props = ",".join(f"{k}={rng.choice(KEYS[k])}" for k in keys)
        cases.append((rng.choice(("q35", "pc", "pc-q35-9.0")), f"virtio-iommu-pci,{props}"))
    return cases


CASES = HANDPICKED + tuple(random_cases())


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str], Outcome]:
    results = run_many(((m, [d]) for m, d in CASES), workers=2, reads=())
    return dict(zip(CASES, results, strict=True))


@pytest.mark.parametrize(("machine", "device"), CASES)
def test_model_matches_binary(machine: str, device: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    seen = outcomes[(machine, device)]
    try:
        VirtioIOMMU(DeviceSpec.parse(device), QEMU_10_0, machine=machine)
    except DeviceConfigError as exc:
        assert seen.refused, f"QEMU starts, the model refuses: {exc}"
        assert exc.message == seen.error
        blamed = None if exc.where in (None, "-M " + machine) else exc.where
        assert blamed == seen.location
        return
    assert not seen.refused, f"QEMU refuses ({seen.error}), the model accepts"


def test_enough_cases() -> None:
    assert len(set(CASES)) >= 100


def test_realized_on_crashes_qemu_and_the_model_refuses() -> None:
    (seen,) = run_many([("q35", ["virtio-iommu-pci,realized=on"])], reads=())
    assert seen.returncode != 0
    with pytest.raises(DeviceConfigError) as info:
        VirtioIOMMU(DeviceSpec.parse("virtio-iommu-pci,realized=on"), QEMU_10_0)
    assert info.value.code == "qemu-assertion"


@pytest.mark.parametrize("machine", ["q35", "pc", "pc-q35-9.0", "pc-q35-8.2", "pc-i440fx-8.2", "pc-q35-7.0"])
@pytest.mark.parametrize("extra", ["", ",aw-bits=48,granule=64k,boot-bypass=off"])
def test_defaults_after_machine_compat(machine: str, extra: str) -> None:
    real = qom_get(f"virtio-iommu-pci,id=v{extra}", ["aw-bits", "granule", "boot-bypass", "reserved-regions"],
                   machine=machine)
    dev = VirtioIOMMU(DeviceSpec.parse(f"virtio-iommu-pci{extra}"), QEMU_10_0, machine=machine)
    assert dev.config.aw_bits == real["aw-bits"]
    assert dev.config.granule == real["granule"]
    assert dev.config.boot_bypass == real["boot-bypass"]
    assert [f"0x{s:x}:0x{e:x}:{t}" for s, e, t in dev.config.reserved_regions] == real["reserved-regions"]
