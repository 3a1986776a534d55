"""Decodes of real units against values worked out by hand (tests/data/regs/expected.toml).

Every expected number in the data file has its working beside it; none came
from viommu. The QEMU entries are also re-read from the real binary when it
is present (``qemu`` marker).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from viommu.regs import amd, smmuv3, vtd

EXPECTED = Path(__file__).parent / "data" / "regs" / "expected.toml"
with EXPECTED.open("rb") as _handle:
    DATA: dict[str, list[dict[str, Any]]] = tomllib.load(_handle)


def _want(value: Any) -> Any:
    """TOML has no null: the string "null" stands for None."""
    return None if value == "null" else value


def _check(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    for key, value in expected.items():
        assert key in actual, f"{what}: no {key}"
        assert actual[key] == _want(value), f"{what}.{key}: {actual[key]!r} != {_want(value)!r}"


@pytest.mark.parametrize("case", DATA["vtd"], ids=lambda c: c["name"][:50])
def test_vtd_machine(case: dict[str, Any]) -> None:
    ver = vtd.parse_version(case["ver"]) if "ver" in case else None
    unit = vtd.decode(int(case["cap"], 16), int(case["ecap"], 16), ver)
    fields = {**unit.register("cap").fields, **unit.register("ecap").fields}
    _check(fields, case["fields"], "fields")
    _check(dict(unit.derived), case["derived"], "derived")


@pytest.mark.parametrize("case", DATA["amd"], ids=lambda c: c["name"][:50])
def test_amd_machine(case: dict[str, Any]) -> None:
    efr2 = int(case["efr2"], 16) if "efr2" in case else None
    unit = amd.decode(int(case["efr"], 16), efr2)
    _check(dict(unit.register("efr").fields), case["fields"], "efr")
    if "efr2_fields" in case:
        _check(dict(unit.register("efr2").fields), case["efr2_fields"], "efr2")
    _check(dict(unit.derived), case["derived"], "derived")


@pytest.mark.parametrize("case", DATA["smmuv3"], ids=lambda c: c["name"][:50])
def test_smmuv3_machine(case: dict[str, Any]) -> None:
    values = {k: int(case[k], 16) for k in smmuv3.REGISTERS if k in case}
    unit = smmuv3.decode(values)
    fields = {k: v for _key, d in unit.registers for k, v in d.fields.items()}
    _check(fields, case["fields"], "fields")
    _check(dict(unit.derived), case["derived"], "derived")


def test_worked_examples_cover_a_dozen_machines() -> None:
    assert len(DATA["vtd"]) + len(DATA["amd"]) + len(DATA["smmuv3"]) >= 12


_QEMU_DEVICES = {
    "QEMU 10.0.2 intel-iommu defaults (TCG: IR on, EIM off), aw-bits 48": "intel-iommu",
    "QEMU 10.0.2 intel-iommu,x-scalable-mode=on,x-flts=on (first stage only)":
        "intel-iommu,x-scalable-mode=on,x-flts=on",
    "QEMU 10.0.2 intel-iommu,x-scalable-mode=on (second stage only)": "intel-iommu,x-scalable-mode=on",
    "QEMU 10.0.2 intel-iommu,aw-bits=39": "intel-iommu,aw-bits=39",
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(_QEMU_DEVICES))
def test_qemu_entries_match_the_binary(name: str) -> None:
    from qemu_oracle import read_vtd_regs

    case = next(c for c in DATA["vtd"] if c["name"] == name)
    regs = read_vtd_regs(_QEMU_DEVICES[name])
    assert not isinstance(regs, str), regs
    assert regs == (int(case["cap"], 16), int(case["ecap"], 16))
