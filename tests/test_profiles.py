"""Bundled profiles: real register values from the shipped corpus, typical topologies, stated provenance."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from viommu.cli import main
from viommu.errors import InputError
from viommu.host.caps import IommuType, ResvType
from viommu.host.discover import discover
from viommu.host.profiles import default_profile_name, list_profiles, load_profile, profile_names

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "src/viommu/data/hw-iommu-corpus.csv"


def _corpus_rows() -> dict[str, dict[str, str]]:
    with CORPUS.open(newline="", encoding="utf-8") as stream:
        return {row["raw_line"]: row for row in csv.DictReader(stream)}


def test_at_least_ten_covering_the_brief() -> None:
    infos = list_profiles()
    assert len(infos) >= 10
    vendors = {i.vendor for i in infos}
    assert {"Intel", "AMD", "ARM"} <= vendors
    names = profile_names()
    assert any("epyc" in n for n in names) and any("ryzen" in n for n in names)
    assert sum(n.startswith("intel-") for n in names) >= 6
    for info in infos:
        assert info.units >= 1 and info.devices >= 3 and info.source and info.platform


@pytest.mark.parametrize("name", profile_names())
def test_registers_are_the_corpus_rows(name: str) -> None:
    rows = _corpus_rows()
    inv = load_profile(name)
    assert inv.backend == "profile" and name in inv.reason
    by_unit = {u["unit"]: u for u in inv.provenance["units"]}
    for unit in inv.units:
        row = rows[by_unit[unit.name]["corpus_line"]]
        assert by_unit[unit.name]["corpus_source"] == row["source"]
        if row["vendor"] == "Intel":
            assert unit.registers["cap"] == int(row["cap"], 16)
            assert unit.registers["ecap"] == int(row["ecap_or_efr"], 16)
        elif row["vendor"] == "AMD":
            efr, *efr2 = (int(v, 16) for v in row["ecap_or_efr"].split(","))
            assert unit.registers["efr"] == efr and [unit.registers["efr2"]] == efr2
        else:
            # No raw SMMUv3 IDRs exist in the corpus: the profile must say its IDRs are derived.
            assert row["cap"] == "ias=48,oas=48"
            assert any("DERIVED" in note for note in inv.provenance["notes"])


@pytest.mark.parametrize("name", profile_names())
def test_topology_is_plausible(name: str) -> None:
    inv = load_profile(name)
    assert len(inv.devices) >= 3 and len(inv.groups) >= 3
    assert any(d.caps.alias.aliased for d in inv.devices), "one device sits behind a PCIe-to-PCI bridge"
    assert "illustrative" in inv.provenance["topology"]
    for group in inv.groups:
        kinds = {(r.start, r.last, r.type) for r in group.reserved_regions}
        if inv.provenance["vendor"] in ("Intel", "AMD"):
            assert (0xFEE00000, 0xFEEFFFFF, ResvType.MSI) in kinds
        if inv.provenance["vendor"] == "AMD":
            assert (0xFD_0000_0000, 0xFF_FFFF_FFFF, ResvType.RESERVED) in kinds
        if inv.provenance["vendor"] == "ARM":
            assert (0x8000000, 0x80FFFFF, ResvType.MSI) in kinds


def test_default_profile_is_a_39_bit_client_part() -> None:
    name = default_profile_name()
    assert name in profile_names()
    inv = load_profile(name)
    assert {u.iommu_type for u in inv.units} == {IommuType.INTEL_VTD}
    # cap 1c0000c40660462: MGAW field 0x26 -> 39 bits (linux-uapi.md §5.3 worked example).
    assert {d.caps.aw_bits for d in inv.devices} == {39}


def test_profiles_are_up_to_date_with_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/make_profiles.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_unknown_profile_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match=r"unknown profile 'nope' \(known: amd-"):
        discover(profile="nope")
    assert main(["inspect", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--profile: unknown profile 'nope'" in err


def test_profile_with_another_backend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--profile", default_profile_name(), "--backend", "sysfs"]) == 2
    assert "cannot be combined with --backend sysfs" in capsys.readouterr().err


def test_profiles_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "vendor", "platform", "units", "devices", "source"]
    assert f"{default_profile_name()} (default)" in out
    assert len(out.splitlines()) == len(profile_names()) + 1
