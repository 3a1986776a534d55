"""Snapshots (viommu-snapshot/1) and sysfs captures: lossless round trips, one-line errors."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from sysfs_fixture import q35_lab
from viommu.cli import main
from viommu.errors import InputError
from viommu.host import capture, snapshot
from viommu.host.discover import discover


def _snapshot_text(tmp_path: Path) -> str:
    q35_lab(tmp_path / "tree")
    return snapshot.dumps(snapshot.stamped(discover("sysfs", root=tmp_path / "tree")))


def test_round_trip_is_lossless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    text = _snapshot_text(tmp_path)
    data = json.loads(text)
    assert data["schema"] == "viommu-snapshot/1"
    assert data["machine"]["captured_at"] == "2023-11-14T22:13:20Z"  # date -u -d @1700000000
    assert data["machine"]["kernel"] == "6.12.0"
    again = snapshot.loads(text, where="mem")
    assert snapshot.dumps(again) == text
    path = tmp_path / "host.json"
    path.write_text(text)
    loaded = discover(root=path)
    assert loaded.backend == "snapshot"
    assert "recorded by the sysfs backend on fixture-host at 2023-11-14T22:13:20Z" in loaded.reason
    original = discover("sysfs", root=tmp_path / "tree")
    assert loaded.devices == original.devices
    assert loaded.units == original.units
    assert loaded.groups == original.groups
    assert dict(loaded.pci) == dict(original.pci)


def _mutate(text: str, change: str) -> str:
    data = json.loads(text)
    if change == "old-schema":
        data["schema"] = "viommu-snapshot/0"
    elif change == "future-schema":
        data["schema"] = "viommu-snapshot/2"
    elif change == "no-schema":
        del data["schema"]
    elif change == "missing-units":
        del data["units"]
    elif change == "bad-hex":
        data["units"][0]["registers"]["cap"] = "d2008c40660462"
    elif change == "bad-region-type":
        data["groups"][1]["reserved_regions"][0]["type"] = "sw-msi-ish"
    elif change == "missing-caps-key":
        del data["devices"][0]["caps"]["iova_ranges"]
    elif change == "bool-for-number":
        data["groups"][0]["number"] = True
    elif change == "text-cpu-phys-bits":
        data["machine"]["cpu_phys_bits"] = "46"
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("old-schema", "'viommu-snapshot/0' is not supported"),
        ("future-schema", "'viommu-snapshot/2' is not supported"),
        ("no-schema", "no 'schema' key"),
        ("missing-units", "units: missing"),
        ("bad-hex", "units[0].registers.cap: expected a hex string"),
        ("bad-region-type", "groups[1].reserved_regions[0].type: unknown value 'sw-msi-ish'"),
        ("missing-caps-key", "devices[0].caps"),
        ("bool-for-number", "groups[0].number: unexpected bool"),
        ("text-cpu-phys-bits", "machine.cpu_phys_bits: unexpected str"),
    ],
)
def test_bad_snapshots_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(_mutate(_snapshot_text(tmp_path), change))
    with pytest.raises(InputError) as info:
        snapshot.load(path)
    assert expected in str(info.value) and str(path) in str(info.value)
    assert main(["inspect", "--root", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and expected in err


def test_snapshot_from_before_cpu_phys_bits_still_reads(tmp_path: Path) -> None:
    data = json.loads(_snapshot_text(tmp_path))
    assert "cpu_phys_bits" in data["machine"]
    data["machine"]["cpu_phys_bits"] = 46
    path = tmp_path / "with.json"
    path.write_text(json.dumps(data))
    assert snapshot.load(path).machine.cpu_phys_bits == 46
    del data["machine"]["cpu_phys_bits"]
    path.write_text(json.dumps(data))
    assert snapshot.load(path).machine.cpu_phys_bits is None


def test_malformed_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "viommu-snapshot/1", ')
    assert main(["inspect", "--root", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: not valid JSON (line 1 column" in err


def test_capture_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    q35_lab(tmp_path / "tree")
    out = tmp_path / "capture.tar"
    assert capture.capture_sysfs(out, root=tmp_path / "tree") == {}
    with tarfile.open(out) as tar:
        names = tar.getnames()
        link = tar.getmember("sys/bus/pci/devices/0000:00:03.0")
        assert link.issym() and link.linkname == "../../../devices/pci0000:00/0000:00:03.0"
    assert "sys/kernel/iommu_groups/1/reserved_regions" in names
    assert "sys/devices/virtual/iommu/dmar0/intel-iommu/cap" in names
    assert "proc/cmdline" in names and capture.MANIFEST in names
    from_tar = discover(root=out)
    from_tree = discover("sysfs", root=tmp_path / "tree")
    assert from_tar.backend == "sysfs" and str(out) in from_tar.reason
    assert from_tar.devices == from_tree.devices
    assert from_tar.units == from_tree.units
    assert from_tar.groups == from_tree.groups
    # Deterministic: the same tree gives the same bytes.
    again = tmp_path / "again.tar"
    capture.capture_sysfs(again, root=tmp_path / "tree")
    assert again.read_bytes() == out.read_bytes()


def test_capture_errors_name_the_tar(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(InputError, match="neither a snapshot JSON nor a sysfs capture tar") as info:
        discover(root=junk)
    assert "\n" not in str(info.value)  # tarfile's own error lists every method it tried, a line each
    hostile = tmp_path / "hostile.tar"
    with tarfile.open(hostile, "w") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info)
    with pytest.raises(InputError, match="not part of a sysfs capture"):
        discover(root=hostile)


def test_capture_cli_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q35_lab(tmp_path / "tree")
    out = tmp_path / "c.tar"
    assert main(["snapshot", "--root", str(tmp_path / "tree"), "--capture-sysfs", str(out)]) == 0
    assert main(["inspect", "--root", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["discovery"]["backend"] == "sysfs"
    assert [d["bdf"] for d in data["devices"]][:2] == ["0000:00:00.0", "0000:00:03.0"]


def test_reserved_regions_over_the_same_range_sort_by_type() -> None:
    """Two reserved regions with the same range and different types (found by the invariant
    tests): sorting them used to raise TypeError from comparing ResvType members."""
    from viommu.host.caps import ReservedRegion, ResvType

    a = ReservedRegion(0xFEE00000, 0xFEEFFFFF, ResvType.RESERVED)
    b = ReservedRegion(0xFEE00000, 0xFEEFFFFF, ResvType.MSI)
    assert sorted([a, b]) == [b, a] and sorted([b, a]) == [b, a]
    assert sorted([ReservedRegion(0x2000, 0x2FFF, ResvType.MSI), a]) == [
        ReservedRegion(0x2000, 0x2FFF, ResvType.MSI), a]
