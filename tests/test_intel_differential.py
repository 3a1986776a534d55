"""intel-iommu model vs the real QEMU 10.0 binary, combination by combination.

Cases are generated deterministically (a seeded generator plus hand-picked
edge cases), valid and invalid. The binary is asked first, for all cases at
once (two QEMU processes at a time, about 0.1 s each); every case then
compares the model with what the binary said: CAP and ECAP bit for bit when
QEMU starts, the refusal text and the option QEMU blames when it does not.
No expected value comes from the model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from qemu_oracle import Outcome, run_many
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.models.qdev import DeviceConfigError

pytestmark = pytest.mark.qemu

QEMU_10_0 = QemuVersion(10, 0)
SEED = 20250101
RANDOM_CASES = 400

BOOLS = (
    "caching-mode", "x-scalable-mode", "x-flts", "fs1gp", "snoop-control", "x-pasid-mode",
    "dma-drain", "dma-translation", "device-iotlb", "pt", "stale-tm", "x-buggy-eim",
)
ON_OFF_AUTO = ("eim", "intremap")
GOOD_BOOL = ("on", "off")
ODD_BOOL = ("yes", "no", "true", "false", "y", "n")
BAD_BOOL = ("ON", "1", "maybe", "", "Off")
GOOD_AW = ("39", "48")
ODD_AW = ("0x30", "060", "+39", " 48", "-0", "0x27", "0X30", "048")
BAD_AW = ("40", "0", "64", "255", "256", "-1", "abc", "48 ", "", "0x", "08", "57", "99999999999999999999")
STRANGE_KEYS = (
    "foo=1", "scalable-mode=on", "flts=on", "svm=on", "type=x", "hotpluggable=on",
    "hotplugged=off", "parent_bus=x", "id=iommu0", "id=1x", "id=", "bus=main-system-bus",
    "bus=pcie.0", "bus=nope", "bus=isa.0", "bus=ide.5", "bus=ide.6", "bus=i2c", "realized=off",
    "realized=maybe", "version=16", "version=4294967295", "version=4294967296", "version=-1", "version=x",
)
MACHINES = ("q35", "pc-q35-10.0", "pc-q35-9.2", "pc-q35-9.1", "pc-q35-4.0.1", "pc-q35-3.1",
            "pc-q35-2.9", "pc-q35-2.7", "pc-q35-2.4")
BAD_MACHINES = ("pc", "pc-i440fx-9.1", "microvm", "pc-q35-11.0", "pc-q35-10.1", "pc-q35-2.3", "q36")

HANDPICKED: tuple[tuple[str, str], ...] = (
    ("q35", "intel-iommu"),
    ("q35", "intel-iommu,aw-bits=39"),
    ("q35", "intel-iommu,caching-mode=on"),
    ("q35", "intel-iommu,caching-mode"),
    ("q35", "intel-iommu,x-scalable-mode=on"),
    ("q35", "intel-iommu,x-scalable-mode=on,x-flts=on"),
    ("q35", "intel-iommu,x-scalable-mode=on,x-flts=on,fs1gp=off"),
    ("q35", "intel-iommu,x-scalable-mode=on,x-flts=on,aw-bits=39"),
    ("q35", "intel-iommu,x-scalable-mode=on,aw-bits=40"),
    ("q35", "intel-iommu,x-flts=on"),
    ("q35", "intel-iommu,x-pasid-mode=on"),
    ("q35", "intel-iommu,x-pasid-mode=on,x-scalable-mode=on"),
    ("q35", "intel-iommu,x-pasid-mode=on,x-scalable-mode=on,device-iotlb=on"),
    ("q35", "intel-iommu,x-scalable-mode=on,dma-drain=off"),
    ("q35", "intel-iommu,eim=on"),
    ("q35", "intel-iommu,eim=off,x-buggy-eim=on"),
    ("q35", "intel-iommu,x-buggy-eim=on"),
    ("q35", "intel-iommu,intremap=off"),
    ("q35", "intel-iommu,intremap=off,eim=on"),
    ("q35", "intel-iommu,intremap=off,eim=auto,x-buggy-eim=on"),
    ("q35", "intel-iommu,dma-translation=off"),
    ("q35", "intel-iommu,dma-translation=off,aw-bits=39"),
    ("q35", "intel-iommu,pt=off,device-iotlb=on,snoop-control=on"),
    ("q35", "intel-iommu,aw-bits=abc,caching-mode=maybe"),
    ("q35", "intel-iommu,caching-mode=maybe,aw-bits=abc"),
    ("q35", "intel-iommu,x-flts=maybe,pt=maybe"),
    ("q35", "intel-iommu,foo=1,eim=bad"),
    ("q35", "intel-iommu,caching-mode=on,caching-mode=off"),
    ("q35", "intel-iommu,caching-mode=maybe,aw-bits=abc,caching-mode=on"),
    # zz0 and zz1 share a QDict hash bucket: QEMU reports the one given first.
    ("q35", "intel-iommu,zz0=1,zz1=1"),
    ("q35", "intel-iommu,zz1=1,zz0=1"),
    ("q35", "intel-iommu,id=1a,bus=nope"),
    ("q35", "intel-iommu,bus=pcie.0,foo=1"),
    ("q35", "intel-iommu,realized=on"),
    ("pc-q35-9.1", "intel-iommu"),
    ("pc-q35-9.1", "intel-iommu,aw-bits=48"),
    ("pc-q35-9.1", "intel-iommu,x-scalable-mode=on,x-flts=on"),
    ("pc-q35-9.2", "intel-iommu"),
    ("pc-q35-3.1", "intel-iommu,x-scalable-mode=on"),
    ("pc-q35-3.1", "intel-iommu,x-scalable-mode=on,dma-drain=on"),
    ("pc-q35-2.7", "intel-iommu"),
    ("pc-q35-2.7", "intel-iommu,eim=off"),
    ("pc-q35-2.9", "intel-iommu,pt=on"),
    ("pc", "intel-iommu"),
    ("microvm", "intel-iommu,bus=nope"),
    ("pc-q35-11.0", "intel-iommu,id=1x"),
    ("pc-q35-11.0", "intel-iommu,foo=1"),
)


def _random_cases(rng: random.Random) -> Iterator[tuple[str, str]]:
    while True:
        roll = rng.random()
        machine = rng.choice(BAD_MACHINES) if roll < 0.04 else "q35" if roll < 0.6 else rng.choice(MACHINES)
        parts: dict[str, str] = {}
        if rng.random() < 0.5:
            parts["x-scalable-mode"] = "on"
        for name in rng.sample(BOOLS, rng.randint(0, 5)):
            roll = rng.random()
            pool = GOOD_BOOL if roll < 0.88 else ODD_BOOL if roll < 0.96 else BAD_BOOL
            parts[name] = rng.choice(pool)
        for name in ON_OFF_AUTO:
            if rng.random() < 0.3:
                roll = rng.random()
                parts[name] = rng.choice(("on", "off", "auto") if roll < 0.9 else ("ON", "yes", "1"))
        if rng.random() < 0.5:
            roll = rng.random()
            pool = GOOD_AW if roll < 0.7 else ODD_AW if roll < 0.85 else BAD_AW
            parts["aw-bits"] = rng.choice(pool)
        if "on" in (parts.get("x-flts"), parts.get("x-pasid-mode")) and rng.random() < 0.8:
            # Mostly valid: first-stage and PASIDs need scalable mode (and drain, and no device IOTLB).
            parts["x-scalable-mode"] = "on"
            parts.pop("dma-drain", None)
            if parts.get("x-pasid-mode") == "on":
                parts.pop("device-iotlb", None)
        if parts.get("x-scalable-mode") == "on" and parts.get("dma-drain") == "off" and rng.random() < 0.7:
            del parts["dma-drain"]
        items = [f"{k}={v}" for k, v in parts.items()]
        if rng.random() < 0.12:
            items.append(rng.choice(STRANGE_KEYS))
        rng.shuffle(items)
        yield machine, ",".join(["intel-iommu", *items])


def cases() -> list[tuple[str, str]]:
    out = list(dict.fromkeys(HANDPICKED))
    seen = set(out)
    gen = _random_cases(random.Random(SEED))
    while len(out) < len(HANDPICKED) + RANDOM_CASES:
        case = next(gen)
        if case not in seen:
            seen.add(case)
            out.append(case)
    return out


CASES = cases()


@pytest.fixture(scope="module")
def oracle(qemu_binary: object) -> dict[tuple[str, str], Outcome]:
    outcomes = run_many([(machine, [device]) for machine, device in CASES])
    return dict(zip(CASES, outcomes, strict=True))


def _model(machine: str, device: str) -> tuple[int, int] | tuple[str, str | None]:
    where = f"-device {device}"
    try:
        dev = IntelIOMMU(DeviceSpec.parse(device), QEMU_10_0, machine=machine, where=where)
    except DeviceConfigError as exc:
        return exc.message, exc.where
    return dev.cap, dev.ecap


def test_enough_cases() -> None:
    assert len(CASES) >= 300
    assert len(set(CASES)) == len(CASES)


@pytest.mark.parametrize(("machine", "device"), CASES, ids=[f"{m}|{d}" for m, d in CASES])
def test_model_matches_qemu(oracle: dict[tuple[str, str], Outcome], machine: str, device: str) -> None:
    seen = oracle[(machine, device)]
    if seen.refused:
        expected: tuple[int, int] | tuple[str, str | None] = (seen.error or "", seen.location)
        assert _model(machine, device) == expected, seen.stderr
    else:
        got = _model(machine, device)
        qemu = f"QEMU CAP 0x{seen.cap:016x} ECAP 0x{seen.ecap:016x}"
        assert got == (seen.cap, seen.ecap), f"model {got!r}, {qemu}"


def test_cases_cover_both_outcomes(oracle: dict[tuple[str, str], Outcome]) -> None:
    refused = sum(o.refused for o in oracle.values())
    # The generator must exercise both paths substantially, or agreement means little.
    assert refused >= 60
    assert len(oracle) - refused >= 150
    assert len({(o.cap, o.ecap) for o in oracle.values() if not o.refused}) >= 20
    assert len({o.error for o in oracle.values() if o.refused}) >= 15
