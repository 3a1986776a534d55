"""Emitters out: rewritten argv, <iommu> elements, spliced domains, and the round trips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu_oracle import BINARY
from viommu.errors import InputError
from viommu.frontends import load_vm, parse_text
from viommu.frontends.emit import NotExpressible, libvirt_iommu, libvirt_replace, rewrite_argv, shell_join
from viommu.frontends.qemu_argv import parse_argv
from viommu.frontends.words import split_words
from viommu.models.base import DeviceSpec

DATA = Path(__file__).parent / "data" / "vms"
ONOFF = st.sampled_from(["on", "off"])


def _specs() -> st.SearchStrategy[DeviceSpec]:
    intel = st.fixed_dictionaries({}, optional={
        "intremap": ONOFF, "caching-mode": ONOFF, "eim": ONOFF, "device-iotlb": ONOFF,
        "aw-bits": st.sampled_from(["39", "48"]), "dma-translation": ONOFF})
    virtio = st.fixed_dictionaries({}, optional={
        "aw-bits": st.integers(32, 64).map(str), "granule": st.sampled_from(["host", "4k", "16k", "64k"])})
    amd = st.fixed_dictionaries({}, optional={
        "intremap": ONOFF, "device-iotlb": ONOFF, "xtsup": ONOFF, "pt": ONOFF})
    return st.one_of(
        intel.map(lambda p: DeviceSpec("intel-iommu", {"id": "iommu0", **p})),
        virtio.map(lambda p: DeviceSpec("virtio-iommu-pci", {"id": "iommu0", **p})),
        amd.map(lambda p: DeviceSpec("amd-iommu", {"pci-id": "iommu0", **p})),
        st.just(DeviceSpec("arm-smmuv3", {})),
    )


def _domain(iommu: str) -> str:
    return ("<domain type='kvm'>\n  <os><type machine='q35'>hvm</type></os>\n  <devices>\n"
            f"{iommu}    <memballoon model='none'/>\n  </devices>\n</domain>\n")


@given(_specs())
def test_libvirt_round_trip(spec: DeviceSpec) -> None:
    element = libvirt_iommu(spec, indent="    ")
    vm = parse_text(_domain(element + "\n"), path="d.xml")
    assert vm.viommu == spec
    assert vm.unsupported == ()


@given(_specs())
def test_argv_round_trip(spec: DeviceSpec) -> None:
    before = parse_argv(["qemu-system-x86_64", "-M", "q35", "-device", "intel-iommu,aw-bits=39",
                         "-global", "intel-iommu.caching-mode=on", "-m", "2G"])
    after = parse_argv(rewrite_argv(before, spec))
    assert after.viommu == spec
    assert after.memory == 2 << 30 and after.machine == "q35"


def test_rewrite_replaces_only_the_viommu_words() -> None:
    vm = load_vm(str(DATA / "proxmox" / "q35-viommu-intel-aw-bits.conf.cmd"))
    new = DeviceSpec("intel-iommu", {"intremap": "on", "caching-mode": "on", "aw-bits": "48"})
    out = rewrite_argv(vm, new)
    assert len(out) == len(vm.argv)
    changed = [i for i, (a, b) in enumerate(zip(vm.argv, out, strict=True)) if a != b]
    assert [out[i] for i in changed] == ["intel-iommu,intremap=on,caching-mode=on,aw-bits=48"]


def test_rewrite_inserts_after_machine_and_drops_folded_globals() -> None:
    vm = parse_argv(["kvm", "-m", "1G", "-M", "q35", "-vga", "none"])
    assert rewrite_argv(vm, DeviceSpec("virtio-iommu-pci", {})) == [
        "kvm", "-m", "1G", "-M", "q35", "-device", "virtio-iommu-pci", "-vga", "none"]
    vm = parse_argv(["-global", "intel-iommu.aw-bits=39", "-device", "intel-iommu", "-S"])
    assert rewrite_argv(vm, DeviceSpec("virtio-iommu-pci", {"aw-bits": "39"})) == [
        "-device", "virtio-iommu-pci,aw-bits=39", "-S"]


def test_rewrite_machine_smmuv3() -> None:
    vm = parse_argv(["-M", "virt,iommu=smmuv3,gic-version=3"])
    assert rewrite_argv(vm, DeviceSpec("arm-smmuv3", {})) == list(vm.argv)
    assert rewrite_argv(vm, DeviceSpec("virtio-iommu-pci", {})) == [
        "-M", "virt,gic-version=3", "-device", "virtio-iommu-pci"]


def test_rewrite_amd_keeps_its_pci_function() -> None:
    vm = load_vm(str(DATA / "libvirt" / "amd-iommu.x86_64-latest.args"))
    out = rewrite_argv(vm, DeviceSpec("amd-iommu", {"pci-id": "iommu0", "intremap": "on"}))
    again = parse_argv(out)
    assert again.viommu == DeviceSpec("amd-iommu", {"pci-id": "iommu0", "intremap": "on"})
    assert sum(w.startswith('{"driver":"AMDVI-PCI"') for w in out) == 1


def test_shell_join_splits_back() -> None:
    vm = load_vm(str(DATA / "libvirt" / "virtio-iommu-x86_64.x86_64-latest.args"))
    text = shell_join(vm.argv)
    assert [w.text for w in split_words(text, path="x")] == list(vm.argv)
    assert all(line.endswith(" \\") for line in text.splitlines()[:-1])
    assert text.splitlines()[9] == "-name guest=QEMUGuest1,debug-threads=on \\"


def test_libvirt_replace_touches_only_the_iommu(tmp_path: Path) -> None:
    src = DATA / "libvirt" / "intel-iommu-aw-bits.xml"
    vm = load_vm(str(src))
    spec = DeviceSpec("intel-iommu", {"intremap": "on", "caching-mode": "on", "aw-bits": "39"})
    text, diff = libvirt_replace(vm, spec)
    old, new = vm.text.splitlines(), text.splitlines()
    # Only the <driver> line differs; every other byte is as it was.
    assert len(old) == len(new)
    assert [(a, b) for a, b in zip(old, new, strict=True) if a != b] == [
        ("      <driver intremap='on' aw_bits='48'/>",
         "      <driver intremap='on' caching_mode='on' aw_bits='39'/>")]
    assert diff.startswith("--- a/intel-iommu-aw-bits.xml\n+++ b/intel-iommu-aw-bits.xml\n")
    assert [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("---", "+++"))] == [
        "-      <driver intremap='on' aw_bits='48'/>",
        "+      <driver intremap='on' caching_mode='on' aw_bits='39'/>"]
    path = tmp_path / "out.xml"
    path.write_text(text)
    assert load_vm(str(path)).viommu == DeviceSpec("intel-iommu", {"id": "iommu0", **spec.props})


def test_libvirt_replace_inserts_before_devices_end() -> None:
    vm = parse_text(_domain(""), path="/x/guest.xml")
    text, diff = libvirt_replace(vm, DeviceSpec("virtio-iommu-pci", {}))
    assert "    <memballoon model='none'/>\n    <iommu model='virtio'/>\n  </devices>\n" in text
    assert text.replace("    <iommu model='virtio'/>\n", "") == vm.text
    assert "+    <iommu model='virtio'/>" in diff.splitlines()


def test_libvirt_replace_self_closing_and_virtio_address() -> None:
    vm = parse_text(_domain("    <iommu model='intel'/>\n"), path="d.xml")
    spec = DeviceSpec("virtio-iommu-pci", {"id": "iommu0", "bus": "pcie.0", "addr": "0x1"})
    text, _ = libvirt_replace(vm, spec)
    assert ("    <iommu model='virtio'>\n      <address type='pci' domain='0x0000' bus='0x00' "
            "slot='0x01' function='0x0'/>\n    </iommu>\n    <memballoon") in text
    assert parse_text(text, path="d.xml").viommu == spec


def test_not_expressible_names_the_properties() -> None:
    with pytest.raises(NotExpressible) as exc:
        libvirt_iommu(DeviceSpec("intel-iommu",
                                 {"x-scalable-mode": "on", "aw-bits": "48", "x-pasid-mode": "on"}))
    assert exc.value.props == ("x-scalable-mode", "x-pasid-mode")
    assert "x-scalable-mode, x-pasid-mode" in exc.value.message
    with pytest.raises(InputError):
        libvirt_iommu(DeviceSpec("intel-iommu", {}), "virtio")


# -- the real QEMU binary accepts what rewrite_argv emits ---------------------------------

_BASE = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-monitor", "stdio", "-m", "256M",
         # edu stands in for vfio-pci (no VFIO device here), behind a root port and a PCI bridge.
         "-device", "pcie-root-port,id=rp1,chassis=1",
         "-device", "edu,bus=rp1",
         "-device", "pcie-pci-bridge,id=br1",
         "-device", "edu,bus=br1,addr=0x1"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == BINARY
    return subprocess.run(argv, input="quit\n", capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.qemu
@pytest.mark.parametrize(("before", "spec"), [
    ([], DeviceSpec("intel-iommu", {"caching-mode": "on", "aw-bits": "39", "intremap": "off"})),
    (["-device", "intel-iommu,aw-bits=48"],
     DeviceSpec("intel-iommu", {"caching-mode": "on", "aw-bits": "39"})),
    ([], DeviceSpec("virtio-iommu-pci", {"aw-bits": "39", "granule": "4k"})),
    (["-device", "intel-iommu", "-global", "intel-iommu.aw-bits=48"],
     DeviceSpec("virtio-iommu-pci", {"aw-bits": "48"})),
])
def test_qemu_accepts_the_rewritten_command_line(before: list[str], spec: DeviceSpec) -> None:
    vm = parse_argv(_BASE + before)
    out = rewrite_argv(vm, spec)
    assert parse_argv(out).viommu == spec
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr
    assert "qemu-system-x86_64:" not in proc.stderr


@pytest.mark.qemu
def test_qemu_refuses_what_we_would_call_a_broken_rewrite() -> None:
    # The same harness sees a failure: two vIOMMUs (a rewrite that forgot the old one).
    proc = _run([*_BASE, "-device", "intel-iommu", "-device", "virtio-iommu-pci"])
    assert proc.returncode != 0
