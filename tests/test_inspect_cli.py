"""``viommu inspect`` and ``viommu snapshot`` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sysfs_fixture import q35_lab
from viommu.cli import main


def test_inspect_tree_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q35_lab(tmp_path)
    assert main(["inspect", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("backend: sysfs (the only backend left: read-only sysfs view)")
    assert "skipped iommufd: reading a captured tree" in out
    assert "dmar0  intel-vtd  cap=d2008c40660462 ecap=f050da ver=1:0  SAGAW 48, MGAW 39  39" in out
    assert "  usable IOVA 0x0-0xfedfffff, 0xfef00000-0x7fffffffff" in out
    assert "  alias       requester ID 0000:02:00.0 (behind bridge 0000:01:00.0)" in out
    assert "VT-d scalable mode: off; kernel default assumed off" in out


def test_inspect_json_is_the_snapshot_format_and_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q35_lab(tmp_path)
    assert main(["inspect", "--root", str(tmp_path), "--backend", "sysfs", "--json"]) == 0
    first = capsys.readouterr().out
    assert main(["inspect", "--root", str(tmp_path), "--backend", "sysfs", "--json"]) == 0
    assert capsys.readouterr().out == first
    data = json.loads(first)
    assert data["schema"] == "viommu-snapshot/1"
    assert data["discovery"]["backend"] == "sysfs" and data["discovery"]["reason"] == "--backend sysfs"
    edu = next(d for d in data["devices"] if d["bdf"] == "0000:00:03.0")
    assert edu["caps"]["aw_bits"] == 39
    assert edu["caps"]["iova_ranges"] == [["0x0", "0xfedfffff"], ["0xfef00000", "0x7fffffffff"]]
    assert edu["pci"]["driver"] == "vfio-pci"


def test_snapshot_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q35_lab(tmp_path / "tree")
    out = tmp_path / "host.json"
    assert main(["snapshot", "--root", str(tmp_path / "tree"), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["machine"]["captured_at"].endswith("Z")
    assert main(["inspect", "--root", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"backend: snapshot (read {out}: recorded by the sysfs backend")


def test_broken_tree_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = q35_lab(tmp_path)
    (t.sys / "kernel/iommu_groups/1/reserved_regions").write_text("garbage\n")
    assert main(["inspect", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"viommu inspect: {tmp_path}/sys/kernel/iommu_groups/1/reserved_regions: line 1:")


def test_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--root", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"viommu inspect: {tmp_path}/nope: no such directory or file\n"


def test_vfio_backend_on_a_capture_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q35_lab(tmp_path)
    assert main(["inspect", "--root", str(tmp_path), "--backend", "iommufd"]) == 2
    assert "iommufd backend: reading a captured tree" in capsys.readouterr().err


def test_import_of_discover_is_light() -> None:
    code = "import sys, viommu.host.discover; print(sorted(m for m in sys.modules if m.startswith('viommu')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # a printed list of module names
    assert "viommu.host.sysfs" not in loaded and "viommu.regs.vtd" not in loaded
    assert "viommu.host.uapi.syscalls" not in loaded
