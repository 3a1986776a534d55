"""viommu check / plan / migrate-check on the pain-point VMs of tests/data/check.

Expected texts come from the briefs (cited per test) or from the real QEMU binary (tests marked
``qemu``); expected addresses are worked out by hand from QEMU's rules, cited where used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from viommu.frontends import load_vm
from viommu.host.profiles import load_profile
from viommu.models.base import QemuVersion
from viommu.preflight import GuestLayout, check_vm, migrate_vm, plan_vm
from viommu.vm import VMConfig

DATA = Path(__file__).parent / "data" / "check"
SRC = Path(__file__).parent.parent / "src"
V10 = QemuVersion(10, 0)
CLIENT_39 = "intel-cometlake-u-xps13-7390"  # 39-bit VT-d (MGAW 38), DEFAULT_PROFILE
CLIENT_42 = "intel-arrowlake-s-265k"  # usable IOVA up to 0x3ffffffffff: 42 bits
GiB = 1 << 30


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-m", "viommu", *args], capture_output=True, text=True,
                          input=stdin, env=full, check=False)


def codes(report: Any) -> list[str]:
    return [w.code for w in report.warnings]


# --- the q35 memory map (hw/i386/pc_q35.c pc_q35_init, hw/i386/pc.c pc_pci_hole64_start) ---------


def test_layout_small_ram_stays_below_the_lowmem_limit() -> None:
    # 2 GiB < 0xb0000000: all of it below 4 GiB; the 64-bit hole starts at 4 GiB, 32 GiB long.
    layout = GuestLayout.q35(VMConfig("qemu", machine="q35", memory=2 * GiB))
    assert layout.ram_ranges() == [(0, 2 * GiB - 1)]
    assert layout.hole64 == (4 * GiB, 36 * GiB - 1)
    assert layout.phys_bits == 40  # TCG_PHYS_ADDR_BITS


def test_layout_large_ram_splits_at_2g() -> None:
    # 0xb0000000 bytes exactly is "ram_size >= 0xb0000000": 2 GiB low, 0x30000000 from 4 GiB,
    # the hole at the next GiB boundary (5 GiB).
    layout = GuestLayout.q35(VMConfig("qemu", machine="q35", memory=0xB000_0000))
    assert layout.ram_ranges() == [(0, 0x7FFF_FFFF), (0x1_0000_0000, 0x1_2FFF_FFFF)]
    assert layout.hole64[0] == 5 * GiB


def test_layout_default_ram_and_maxmem() -> None:
    # No -m: 128 MiB. maxmem 8 GiB: hotplug memory from ROUND_UP(4 GiB, 1 GiB) for 8 GiB - 128 MiB,
    # the hole at the next GiB boundary: 4 + 8 = 12 GiB.
    plain = GuestLayout.q35(VMConfig("qemu", machine="q35"))
    assert plain.ram_ranges() == [(0, 128 * (1 << 20) - 1)]
    hot = GuestLayout.q35(VMConfig("qemu", machine="q35", memory=128 << 20, max_memory=8 * GiB))
    assert hot.hole64[0] == 12 * GiB


# --- check ---------------------------------------------------------------------------------------


def test_proxmox_default_aw_bits_48_refused_on_39_bit_host() -> None:
    # qemu-framework.md §1 (the vfio prefix, 10.0) and peers.md: "Failed to set vIOMMU: aw-bits 48 >
    # host aw-bits 39" on client CPUs; the Comet Lake profile's unit is 39-bit.
    vm = load_vm(str(DATA / "proxmox-aw48.cmd"))
    report = check_vm(vm, load_profile(CLIENT_39), version=V10)
    assert not report.starts
    (dev,) = report.devices
    assert dev.cold.code == "aw-bits-exceeds-host"
    assert dev.cold.message == "vfio 0000:02:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39"
    row = next(r for r in dev.comparison if r["field"] == "aw-bits")
    assert (row["viommu"], row["host"], row["ok"]) == (48, 39, False)
    assert not dev.hotplug.accepted
    assert dev.fix == "set aw-bits=39"
    # 42 bits are not enough either; QEMU 9.2 (default aw-bits 39) starts the same VM.
    assert not check_vm(vm, load_profile(CLIENT_42), version=V10).starts
    assert check_vm(vm, load_profile(CLIENT_39), version=QemuVersion(9, 2)).starts


def test_caching_mode_missing_refused_at_machine_done_before_10_2() -> None:
    # qemu-framework.md §4 (intel-iommu check order): before 10.2 a cold-plugged vfio-pci without
    # caching-mode exits at machine-init-done with this text; hotplug gets pc_hotplug_allowed's text.
    vm = load_vm(str(DATA / "no-caching-mode.xml"))
    report = check_vm(vm, load_profile(CLIENT_39), version=V10)
    assert report.devices[0].cold.accepted
    assert report.machine_done is not None and not report.machine_done.accepted
    assert report.machine_done.code == "caching-mode-required"
    assert report.machine_done.message == (
        "We need to set caching-mode=on for intel-iommu to enable device assignment with IOMMU protection."
    )
    assert report.devices[0].hotplug.message == (
        "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
    )
    assert "caching-mode-missing" in codes(report)
    assert not report.starts
    # 10.2 refuses the device itself, with the vfio prefix.
    later = check_vm(vm, load_profile(CLIENT_39), version=QemuVersion(10, 2))
    assert later.devices[0].cold.message == (
        "vfio 0000:02:00.0: Failed to set vIOMMU: "
        "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
    )


def test_amd_ht_hole_under_1tib_guest() -> None:
    # pain-points.md B.10: the AMD IOMMU reserves 0xfd00000000-0xffffffffff. -m 1024G on q35:
    # 2 GiB low, 1022 GiB from 4 GiB, i.e. up to 1026 GiB - 1 = 0x100_7fff_ffff, across the hole.
    vm = load_vm(str(DATA / "amd-ht-hole.cmd"))
    report = check_vm(vm, load_profile("amd-epyc-genoa"), version=V10)
    hits = [w for w in report.warnings
            if w.code == "ram-overlaps-reserved" and w.values["what"] == "guest RAM"]
    assert hits and hits[0].values["reserved"] == ["0xfd00000000", "0xffffffffff"]
    assert hits[0].values["guest"] == ["0x100000000", "0x1007fffffff"]
    assert "unless the guest CPU model is AMD" not in hits[0].message  # pc-q35-7.0 never relocates
    q35 = check_vm(load_vm(str(DATA / "amd-ht-hole-q35.cmd")), load_profile("amd-epyc-genoa"), version=V10)
    assert any("unless the guest CPU model is AMD" in w.message for w in q35.warnings)


def test_phys_bits_above_the_iommu_width() -> None:
    # pain-points.md A.2/A.5: phys-bits 42 over a 39-bit vIOMMU and a 39-bit host unit.
    report = check_vm(load_vm(str(DATA / "phys-bits-42.cmd")), load_profile(CLIENT_39), version=V10)
    assert report.starts
    found = [w for w in report.warnings if w.code == "phys-bits-exceed-iommu"]
    assert {(w.values["guest_phys_bits"], w.values["iommu_bits"]) for w in found} == {(42, 39)}
    assert {w.device for w in found} == {None, "hostdev0"}
    # On a 42-bit host only the vIOMMU (aw-bits=39) is narrower than the guest.
    wide = check_vm(load_vm(str(DATA / "phys-bits-42.cmd")), load_profile(CLIENT_42), version=V10)
    assert [w.device for w in wide.warnings if w.code == "phys-bits-exceed-iommu"] == [None]


@pytest.mark.parametrize(("cpu", "accel", "phys", "source"), [
    # host_cpu_adjust_phys_bits: with host-phys-bits the host CPU's width wins over
    # phys-bits= (QEMU warns that they differ) and host-phys-bits-limit only lowers it;
    # under TCG host_cpu_realizefn does not run, so phys-bits= (else 40) stands.
    ("host,phys-bits=42", "kvm", None, "host CPU's width"),
    ("host,host-phys-bits-limit=42", "kvm", 42, "at most host-phys-bits-limit=42"),
    ("host,host-phys-bits=off,phys-bits=42", "kvm", 42, "phys-bits=42"),
    ("qemu64,host-phys-bits=on,phys-bits=42", "tcg", 42, "phys-bits=42"),
    ("max", "tcg", 40, "default phys-bits (40)"),
])
def test_guest_phys_bits_follow_qemu(cpu: str, accel: str, phys: int | None, source: str) -> None:
    from viommu.frontends.qemu_argv import parse_argv

    vm = parse_argv(["qemu-system-x86_64", "-M", "q35", "-accel", accel, "-m", "4G", "-cpu", cpu])
    layout = GuestLayout.q35(vm)
    assert layout.phys_bits == phys and source in layout.phys_bits_source
    report = check_vm(vm, load_profile(CLIENT_39), version=V10)
    assert any("phys-bits not compared" in n for n in report.notes) is (phys is None)


@pytest.mark.parametrize(("cpu", "guest_bits"), [
    ("host", 46),  # host-phys-bits: the host CPU's 46 bits, over the 39-bit host unit
    ("host,phys-bits=39", 46),  # phys-bits= loses to host-phys-bits
    ("host,host-phys-bits-limit=39", None),  # lowered to 39: fits
    ("host,host-phys-bits=off", 40),  # QEMU's default again
])
def test_host_phys_bits_take_the_host_cpu_width_from_the_inventory(cpu: str, guest_bits: int | None) -> None:
    from viommu.frontends.qemu_argv import parse_argv
    from viommu.host.inventory import Machine
    from viommu.record import replace

    profile = load_profile(CLIENT_39)
    host = replace(profile, machine=replace(profile.machine, cpu_phys_bits=46))
    vm = parse_argv(["qemu-system-x86_64", "-M", "q35", "-enable-kvm", "-m", "4G", "-cpu", cpu,
                     "-device", "intel-iommu,aw-bits=39,caching-mode=on",
                     "-device", "vfio-pci,host=0000:02:00.0,id=hostdev0"])
    assert isinstance(host.machine, Machine)
    report = check_vm(vm, host, version=V10)
    found = {w.values["guest_phys_bits"] for w in report.warnings if w.code == "phys-bits-exceed-iommu"}
    assert found == ({guest_bits} if guest_bits is not None else set())
    assert not any("phys-bits not compared" in n for n in report.notes)


def test_libvirt_host_passthrough_under_kvm_means_host_phys_bits() -> None:
    xml = ("<domain type='{virt}'><name>v</name><memory unit='GiB'>4</memory>"
           "<os><type arch='x86_64' machine='q35'>hvm</type></os><cpu mode='{mode}'/></domain>")
    for virt, mode, expected in (("kvm", "host-passthrough", True), ("kvm", "maximum", True),
                                 ("kvm", "host-model", False), ("qemu", "host-passthrough", False)):
        from viommu.frontends.libvirt_xml import parse_libvirt

        vm = parse_libvirt(xml.format(virt=virt, mode=mode), path="d.xml")
        assert vm.host_phys_bits is expected, (virt, mode)


def test_partially_assigned_group_is_not_viable() -> None:
    # The Renoir profile's group 6 holds 05:00.0 (amdgpu), 05:00.1 (vfio-pci), 05:00.3 (xhci_hcd).
    report = check_vm(load_vm(str(DATA / "group-partial.cmd")), load_profile("amd-ryzen-renoir-4300g"),
                      version=V10)
    (w,) = [w for w in report.warnings if w.code == "group-partially-assigned"]
    assert w.values["group"] == 6
    assert w.values["unassigned"] == ["0000:05:00.0", "0000:05:00.3"]
    assert "not viable" in w.message and "amdgpu" in w.message


def test_split_group_behind_the_viommu() -> None:
    # 00:14.0 and 00:14.2 share group 4 but sit on different root ports: two address spaces.
    report = check_vm(load_vm(str(DATA / "eight-devices.cmd")), load_profile(CLIENT_39), version=V10)
    assert report.starts
    split = {w.values["group"] for w in report.warnings if w.code == "group-split-address-spaces"}
    assert split == {4, 13}


def test_missing_host_device_is_refused() -> None:
    report = check_vm(load_vm(str(DATA / "group-partial.cmd")), load_profile(CLIENT_39), version=V10)
    assert [d.cold.code for d in report.devices] == ["host-device-missing"]
    assert not report.starts


def test_unsupported_parts_are_reported() -> None:
    proxmox = Path(__file__).parent / "data" / "vms" / "proxmox"
    vm = load_vm(str(proxmox / "q35-viommu-intel-aw-bits.conf.cmd"))
    assert vm.unsupported
    report = check_vm(vm, load_profile(CLIENT_39), version=V10)
    assert codes(report).count("input-not-modelled") == len(vm.unsupported)


# --- plan and migrate -------------------------------------------------------------------------------


def test_plan_fits_both_hosts_and_is_explicit() -> None:
    vm = load_vm(str(DATA / "client-aw48.cmd"))
    report = plan_vm(vm, [load_profile(CLIENT_39), load_profile(CLIENT_42)], version=V10)
    assert report.fits and report.plan is not None
    props = dict(report.plan.spec.props)
    assert props["aw-bits"] == "39" and props["caching-mode"] == "on"
    assert {c.name for c in report.plan.choices} >= {"aw-bits"}
    # Maximal: on the 42-bit host alone nothing narrows aw-bits below 48... but 42 < 48, so 39 again;
    # on a 48-bit-capable server unit it stays 48.
    vm_server = load_vm(str(DATA / "client-aw48.cmd"), None)
    server = load_profile("intel-icelake-sp")
    moved = [d.__class__(**{**d.__dict__, "host": "0000:18:00.1"}) for d in vm_server.vfio]
    wide = plan_vm(vm_server.__class__(**{**vm_server.__dict__, "vfio": tuple(moved)}), [server], version=V10)
    assert wide.plan is not None and wide.plan.spec.props["aw-bits"] == "48"


def test_plan_refuses_when_a_host_lacks_the_device() -> None:
    vm = load_vm(str(DATA / "client-aw48.cmd"))
    report = plan_vm(vm, [load_profile(CLIENT_39), load_profile("intel-icelake-sp")], version=V10)
    assert not report.fits and report.code == "host-device-missing"


def test_migrate_state_mismatch_across_releases() -> None:
    # qemu-framework.md §3: 10.2 sets CAP.ESRTPS, so the guest-visible CAP differs from 10.0's.
    vm = load_vm(str(DATA / "phys-bits-42.cmd"))
    same = migrate_vm(vm, load_profile(CLIENT_39), load_profile(CLIENT_42), version=V10)
    assert same.migrates
    report = migrate_vm(vm, load_profile(CLIENT_39), load_profile(CLIENT_42), version=V10,
                        dest_version=QemuVersion(10, 2))
    assert not report.migrates and report.decision is not None
    assert report.decision.code == "migration-state-mismatch"
    assert [d["field"] for d in report.decision.detail["differences"]] == ["cap"]


def test_migrate_device_refused_after_the_aw_bits_default_changed() -> None:
    # qemu-framework.md §3: the aw-bits default went from 39 (9.2) to 48 (10.0); a VM that leaves it
    # implicit starts on 9.2 and is refused by a 10.0 destination on the same 39-bit host.
    vm = load_vm(str(DATA / "client-aw48.cmd"))
    report = migrate_vm(vm, load_profile(CLIENT_39), load_profile(CLIENT_39), version=QemuVersion(9, 2),
                        dest_version=V10)
    assert report.source_check.starts
    assert report.decision is not None and report.decision.code == "migration-device-refused"
    assert "aw-bits 48 > host aw-bits 39" in (report.decision.message or "")


# --- the CLI -------------------------------------------------------------------------------------


def test_check_cli_json_is_deterministic_and_exit_1() -> None:
    first = cli("check", str(DATA / "proxmox-aw48.cmd"), "--profile", CLIENT_39, "--json")
    second = cli("check", str(DATA / "proxmox-aw48.cmd"), "--profile", CLIENT_39, "--json")
    assert first.returncode == 1 and first.stdout == second.stdout
    data = json.loads(first.stdout)
    assert data["verdict"] == "refused" and data["devices"][0]["code"] == "aw-bits-exceeds-host"
    assert data["host"]["backend"] == "profile"


def test_check_cli_argv_after_dashes() -> None:
    words = (DATA / "phys-bits-42.cmd").read_text().replace("\\\n", " ").split()
    out = cli("check", "--profile", CLIENT_42, "--json", "--", *words)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["verdict"] == "starts"


def test_check_cli_snapshot_host(tmp_path: Path) -> None:
    snap = tmp_path / "host.json"
    snap.write_text(cli("inspect", "--profile", CLIENT_42, "--json").stdout)
    out = cli("check", str(DATA / "phys-bits-42.cmd"), "--host", str(snap))
    assert out.returncode == 0, out.stderr
    assert "verdict: the VM starts" in out.stdout


def test_kata_grace_command_line_names_a_property_upstream_11_0_lacks() -> None:
    # Kata's Grace fixture sets pasid=on: the arm-smmuv3 of upstream QEMU 11.0 has ssidsize=
    # instead (brief 4.3, smmuv3-accel.c 13b941aa), so qdev refuses the option at its line
    # with its usual "Property '<type>.<name>' not found".
    vm = Path(__file__).parent / "data" / "vms" / "kata" / "grace_1_single_gpu.args"
    out = cli("check", str(vm), "--profile", "arm-nvidia-grace", "--qemu-version", "11.0")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"viommu check: {vm}:30: Property 'arm-smmuv3.pasid' not found\n"


@pytest.mark.parametrize("name", ["bad.xml", "bad.cmd"])
def test_malformed_input_one_line_exit_2(name: str) -> None:
    out = cli("check", str(DATA / name), "--profile", CLIENT_39)
    assert out.returncode == 2
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert name in out.stderr and "Traceback" not in out.stderr


def test_colour_only_when_asked() -> None:
    plain = cli("check", str(DATA / "proxmox-aw48.cmd"), "--profile", CLIENT_39)
    forced = cli("check", str(DATA / "proxmox-aw48.cmd"), "--profile", CLIENT_39, "--color", "always")
    assert "\x1b[" not in plain.stdout and "\x1b[31m" in forced.stdout
    env_off = cli("check", str(DATA / "proxmox-aw48.cmd"), "--profile", CLIENT_39, env={"FORCE_COLOR": "1",
                                                                                      "NO_COLOR": "1"})
    assert "\x1b[" not in env_off.stdout


def test_plan_cli_formats() -> None:
    hosts = ["--host", CLIENT_39, "--host", CLIENT_42]
    qemu = cli("plan", str(DATA / "client-aw48.cmd"), *hosts)
    assert qemu.returncode == 0, qemu.stderr
    assert "-device intel-iommu,aw-bits=39,caching-mode=on" in qemu.stdout.replace("'", "")
    assert "# aw-bits=39:" in qemu.stderr
    xml = cli("plan", str(DATA / "aw48.xml"), *hosts, "--format", "libvirt")
    assert xml.returncode == 0, xml.stderr
    assert "aw_bits='39'" in xml.stdout.replace('"', "'") and "\n--- a/aw48.xml" in xml.stdout
    js = cli("plan", str(DATA / "client-aw48.cmd"), *hosts, "--format", "json")
    assert json.loads(js.stdout)["verdict"] == "fits"
    none = cli("plan", str(DATA / "client-aw48.cmd"), "--host", CLIENT_39, "--host", "intel-icelake-sp")
    assert none.returncode == 1 and "host-device-missing" in none.stderr


def test_migrate_check_cli() -> None:
    ok = cli("migrate-check", str(DATA / "phys-bits-42.cmd"), "--source", CLIENT_39, "--dest", CLIENT_42)
    assert ok.returncode == 0, ok.stderr
    bad = cli("migrate-check", str(DATA / "phys-bits-42.cmd"), "--source", CLIENT_39, "--dest", CLIENT_42,
              "--dest-qemu-version", "10.2", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == "migration-state-mismatch"


def test_explain() -> None:
    listed = cli("--explain", "list")
    assert listed.returncode == 0
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    assert {"aw-bits-exceeds-host", "caching-mode-missing", "ram-overlaps-reserved",
            "migration-state-mismatch", "unknown-property"} <= names
    one = cli("--explain", "ram-overlaps-reserved")
    assert one.returncode == 0 and "HyperTransport" in one.stdout
    assert cli("--explain", "no-such-code").returncode == 2


# --- the libvirt hook ----------------------------------------------------------------------------


def test_hook_ignores_other_operations_without_reading_stdin() -> None:
    out = cli("libvirt-hook", "guest", "started", "begin", "-", stdin="not xml at all")
    assert out.returncode == 0 and out.stderr == ""


def test_hook_refuses_prepare_with_one_line_per_device() -> None:
    env = {"VIOMMU_HOOK_HOST": CLIENT_39}
    domain = (DATA / "aw48.xml").read_text()
    out = cli("libvirt-hook", "client", "prepare", "begin", "-", stdin=domain, env=env)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "viommu: client: hostdev0 (0000:02:00.0): [aw-bits-exceeds-host] "
        "vfio 0000:02:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39"
    ]
    aw39 = (DATA / "aw48.xml").read_text().replace("caching_mode='on'", "caching_mode='on' aw_bits='39'")
    fits = cli("libvirt-hook", "client", "prepare", "begin", "-", stdin=aw39, env=env)
    assert fits.returncode == 0, fits.stderr
    broken = cli("libvirt-hook", "client", "prepare", "begin", "-", stdin="<domain>", env=env)
    assert broken.returncode == 2 and len(broken.stderr.splitlines()) == 1
