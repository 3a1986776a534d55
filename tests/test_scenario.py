"""Scenario files and `viommu simulate`: the shipped examples and bad input.

Expected messages are QEMU's texts from the brief (qemu-framework.md §1.3 prefix
"Failed to set vIOMMU: " since 10.0, §4.1 "aw-bits %d > host aw-bits %d",
"Need IOMMUFD backend when x-flts=on"); the host's 39 bits are the real laptop's
MGAW (cap 0xd2008c40660462 in its dmesg, hw-iommu-corpus.csv); the aw-bits 39 +
caching-mode CAP 0x00d2008c22260286 is what the QEMU 10.0.2 binary printed
(tests/data/intel/qemu-10.0-registers.csv).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from viommu.errors import InputError
from viommu.scenario import load_scenario, simulate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CAP_AW39_CM = "0x00d2008c22260286"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "viommu", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def events(name: str) -> list[tuple[str, str | None, bool, str | None]]:
    sim = simulate(load_scenario(EXAMPLES / name))
    return [(d.event, d.target, d.accepted, d.code) for d in sim.trace]


def test_seed_check_refuses_the_cold_plug_and_qemu_does_not_start() -> None:
    sim = simulate(load_scenario(EXAMPLES / "seed-check.toml"))
    plug = sim.trace[1]
    assert (plug.event, plug.accepted, plug.code) == ("cold-plug", False, "aw-bits-exceeds-host")
    assert plug.message == "vfio 0000:02:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39"
    rows = {r["field"]: r for r in plug.detail["comparison"]}
    assert (rows["aw-bits"]["viommu"], rows["aw-bits"]["host"], rows["aw-bits"]["ok"]) == (48, 39, False)
    assert not sim.started and len(sim.not_run) == 2
    assert [d.event for d in sim.trace] == ["realize", "cold-plug"]


def test_seed_sync_narrows_at_cold_plug_and_freezes() -> None:
    sim = simulate(load_scenario(EXAMPLES / "seed-sync.toml"))
    plug = sim.trace[1]
    assert plug.accepted and plug.detail["narrowed"] == {"aw-bits": "39"}
    assert plug.state["cap"] == CAP_AW39_CM
    after = [d for d in sim.trace if d.event in ("hotplug", "dma-map")]
    assert all(d.state["cap"] == CAP_AW39_CM for d in after)
    # The IOVA at 2^39 is beyond what the guest sees; the last page below it maps on the host.
    assert [(d.event, d.accepted, d.code) for d in after] == [
        ("hotplug", True, None), ("dma-map", False, "guest-map-illegal"), ("dma-map", True, None)]


def test_seed_plan_is_explicit_before_the_vm_starts() -> None:
    sim = simulate(load_scenario(EXAMPLES / "seed-plan.toml"))
    assert sim.machine.spec.props["aw-bits"] == "39"
    assert sim.trace[0].state["cap"] == CAP_AW39_CM
    assert all(d.accepted for d in sim.trace if d.event in ("cold-plug", "hotplug"))


def test_seed_none_violates_safety() -> None:
    """Before 9.1 nothing checks: the guest maps at 2^39 (legal under aw-bits 48), the host cannot."""
    sim = simulate(load_scenario(EXAMPLES / "seed-none.toml"))
    maps = [d for d in sim.trace if d.event == "dma-map"]
    assert maps[0].code == "host-map-failed" and maps[0].detail["errno"] == 22  # EINVAL
    assert maps[1].accepted
    assert sim.refused


def test_migrations_to_a_narrower_host_under_each_policy() -> None:
    refused = ("migrate", "laptop", False)
    assert events("migrate-narrower-check.toml")[-1] == (*refused, "migration-device-refused")
    assert events("migrate-narrower-sync.toml")[-1] == (*refused, "migration-state-mismatch")
    assert events("migrate-narrower-plan.toml")[-1] == ("migrate", "laptop", True, None)
    sim = simulate(load_scenario(EXAMPLES / "migrate-narrower-sync.toml"))
    diff = sim.trace[-1].detail["differences"]
    assert [d["field"] for d in diff] == ["cap"]


def test_flts_with_a_legacy_backend_on_11_0() -> None:
    sim = simulate(load_scenario(EXAMPLES / "flts-legacy.toml"))
    hot = sim.trace[-1]
    assert (hot.event, hot.accepted, hot.code) == ("hotplug", False, "flts-needs-iommufd")
    assert hot.message == "vfio 0000:5e:00.0: Failed to set vIOMMU: Need IOMMUFD backend when x-flts=on"


def test_intel_on_an_amd_host_misses_the_hypertransport_hole() -> None:
    sim = simulate(load_scenario(EXAMPLES / "reserved-region-intel.toml"))
    assert sim.trace[1].accepted  # QEMU only compares aw-bits
    assert sim.trace[-1].code == "host-map-failed"


def test_simulate_json_is_deterministic_and_exit_codes_follow_the_contract() -> None:
    first = run_cli("simulate", str(EXAMPLES / "seed-plan.toml"), "--json")
    second = run_cli("simulate", str(EXAMPLES / "seed-plan.toml"), "--json")
    assert first.returncode == 0 and first.stdout == second.stdout
    data = json.loads(first.stdout)
    assert data["policy"] == "plan" and data["started"] is True
    assert run_cli("simulate", str(EXAMPLES / "seed-check.toml")).returncode == 1


BASE = """\
[vm]
viommu = "intel-iommu,caching-mode=on"

[hosts.a]
profile = "intel-cometlake-u-xps13-7390"

[[devices]]
id = "d0"
bdf = "0000:02:00.0"
"""


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (BASE.replace('bdf = "0000:02:00.0"', 'bdf = "0000:42:00.0"'), 9,
         "devices[0].bdf: no assignable device"),
        (BASE.replace('id = "d0"', 'id = "d0"\ncolour = "red"'), 9, "devices[0].colour: unknown key"),
        (BASE + '\n[[events]]\ndo = "dma-map"\ndevice = "d0"\niova = "lots"\nsize = 4096\n', 14,
         "events[0].iova: expected a size"),
        (BASE + '\n[[events]]\ndo = "explode"\n', 12, "events[0].do: unknown event 'explode'"),
        (BASE + '\n[[events]]\ndo = "unplug"\ndevice = "d9"\n', 13, "events[0].device: no device 'd9'"),
        (BASE.replace('viommu = "intel-iommu,caching-mode=on"', 'viommu = "intel-iommu"\npolicy = "yolo"'),
         3, "vm.policy: unknown policy 'yolo'"),
        (BASE.replace('profile = "intel-cometlake-u-xps13-7390"', 'profile = "no-such-box"'), 5,
         "hosts.a.profile:"),
        (BASE.replace('bdf = "0000:02:00.0"', 'bdf = "0000:02:00.0"\nbackend = "vfio"'), 10,
         "devices[0].backend: backend must be legacy or iommufd"),
    ],
)
def test_scenario_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert needle in str(info.value)
    out = run_cli("simulate", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm\nviommu = 1\n")
    out = run_cli("simulate", str(bad))
    assert out.returncode == 2 and "not valid TOML" in out.stderr and "line 1" in out.stderr
    out = run_cli("simulate", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "cannot read scenario" in out.stderr
    assert "Traceback" not in out.stderr


def test_virtio_granule_frozen_before_a_hotplug() -> None:
    """Brief §4.2: mask 0xffffffffffff0000 (granule=64k) overlaps a 4K|2M|1G host, but the frozen
    64K granule is not among the host's page sizes: "<name>: virtio-iommu does not support frozen
    granule 0x10000"."""
    sim = simulate(load_scenario(EXAMPLES / "virtio-page-size.toml"))
    hot = sim.trace[-1]
    assert (hot.event, hot.accepted, hot.code) == ("hotplug", False, "frozen-granule-unsupported")
    assert hot.message == (
        "vfio 0000:18:00.1: Failed to set vIOMMU: 0000:18:00.1: virtio-iommu does not support frozen "
        "granule 0x10000"
    )
    assert hot.state["page_size_mask"] == "0xffffffffffff0000"


def test_virtio_tells_the_guest_about_the_hypertransport_hole() -> None:
    sim = simulate(load_scenario(EXAMPLES / "reserved-region-virtio.toml"))
    hole, above = sim.trace[-2], sim.trace[-1]
    assert hole.code == "guest-map-illegal" and "0xfd00000000-0xffffffffff" in (hole.message or "")
    assert above.accepted
    assert not sim.refused
