"""QEMU command lines in: real Proxmox and libvirt outputs, constructed edge cases, bad input."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viommu.errors import InputError
from viommu.frontends import detect_kind, load_vm
from viommu.frontends.qemu_argv import parse_argv, parse_size
from viommu.frontends.words import split_words
from viommu.models.base import DeviceSpec

DATA = Path(__file__).parent / "data" / "vms"
PVE = DATA / "proxmox"
KATA = DATA / "kata"


def write(tmp_path: Path, text: str, name: str = "vm.sh") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the shell splitter ------------------------------------------------------------------


_WORDS = st.text(alphabet=st.sampled_from(list("ab,=-./{}\":' \\$\n\t")), max_size=40)


@given(st.lists(_WORDS, max_size=6))
def test_words_agree_with_shlex_on_quoted_words(words: list[str]) -> None:
    # shlex.quote's output is what shell text looks like; both splitters must give the words back.
    text = " ".join(shlex.quote(w) for w in words)
    assert [w.text for w in split_words(text, path="f")] == shlex.split(text)


def test_words_join_continuations_and_keep_lines() -> None:
    text = "qemu-system-x86_64 \\\n  -M q35 \\\n  -device 'intel-iommu,\ncaching-mode=on' # c\n-m 1G\n"
    words = split_words(text, path="f")
    assert [(w.text, w.line) for w in words] == [
        ("qemu-system-x86_64", 1), ("-M", 2), ("q35", 2), ("-device", 3),
        ("intel-iommu,\ncaching-mode=on", 3), ("-m", 5), ("1G", 5)]


@pytest.mark.parametrize(("text", "line"), [("a \\\nb 'c\nd", 2), ('a\n\n"b', 3)])
def test_unbalanced_quote_names_the_line_it_opened(text: str, line: int) -> None:
    with pytest.raises(InputError) as exc:
        split_words(text, path="vm.sh")
    assert exc.value.where == f"vm.sh:{line}"
    assert "unbalanced" in exc.value.message


# -- real command lines ----------------------------------------------------------------


def test_proxmox_intel_viommu() -> None:
    # src/test/cfg2cmd/q35-viommu-intel-aw-bits.conf.cmd: the vIOMMU is on line 19.
    path = str(PVE / "q35-viommu-intel-aw-bits.conf.cmd")
    vm = load_vm(path)
    assert vm.kind == "qemu"
    assert vm.machine == "q35+pve0"
    assert vm.viommu == DeviceSpec("intel-iommu", {"intremap": "on", "caching-mode": "on", "aw-bits": "39"})
    assert vm.viommu_where == f"{path}:19"
    assert vm.kernel_irqchip == "split"
    assert vm.memory == 512 << 20  # "-m 512": MiB
    assert vm.argv[0] == "/usr/bin/kvm"
    readconfig = "-readconfig /usr/share/qemu-server/pve-q35-4.0.cfg"
    assert [u.what.split(":")[0] for u in vm.unsupported] == [readconfig]


def test_proxmox_hostpci_buses_from_readconfig_are_unknown_not_guessed() -> None:
    # Proxmox puts pci.0 and the ich9-pcie-port-N root ports in pve-q35-4.0.cfg (-readconfig),
    # so only the two root ports on the command line are known.
    vm = load_vm(str(PVE / "q35-linux-hostpci.conf.cmd"))
    assert vm.viommu is None
    hosts = {d.id: (d.host, d.bus, d.addr) for d in vm.vfio}
    assert hosts == {
        "hostpci0": ("0000:00:ff.1", "pci.0", "0x10"),
        "hostpci1": ("0000:d0:13.0", "ich9-pcie-port-2", "0x0"),
        "hostpci2": ("0000:00:f4.0", "pci.0", "0x1b"),
        "hostpci3": ("0000:d0:15.1", "ich9-pcie-port-4", "0x0"),
        "hostpci4": ("0000:d0:17.0", "ich9-pcie-port-5", "0x0"),
        "hostpci7": ("0000:d0:15.2", "ich9-pcie-port-8", "0x0"),
    }
    assert all(not d.behind_pci_bridge and d.backend == "legacy" for d in vm.vfio)
    unknown = sorted(u.what.split(":")[0] for u in vm.unsupported if "is not defined" in u.what)
    assert unknown == ["vfio-pci hostpci0", "vfio-pci hostpci1", "vfio-pci hostpci2", "vfio-pci hostpci3"]


def proxmox_with_its_config(tmp_path: Path, name: str) -> str:
    """A Proxmox command line whose -readconfig names the bundled pve-q35-4.0.cfg (on a
    Proxmox host it is /usr/share/qemu-server/pve-q35-4.0.cfg)."""
    text = (PVE / name).read_text().replace("/usr/share/qemu-server/pve-q35-4.0.cfg",
                                            str(PVE / "pve-q35-4.0.cfg"))
    return write(tmp_path, text, name)


def test_proxmox_readconfig_defines_pci_0_behind_the_dmi_to_pci_bridge(tmp_path: Path) -> None:
    # pve-q35-4.0.cfg: pci.0 is a pci-bridge on pcidmi, an i82801b11-bridge (DMI-to-PCI) on
    # pcie.0; ich9-pcie-port-1..4 are root ports. Devices on pci.0 take the bridge's
    # requester ID; those on root ports do not.
    vm = load_vm(proxmox_with_its_config(tmp_path, "q35-linux-hostpci.conf.cmd"))
    assert {d.id: (d.bus, d.behind_pci_bridge) for d in vm.vfio} == {
        "hostpci0": ("pci.0", True),
        "hostpci1": ("ich9-pcie-port-2", False),
        "hostpci2": ("pci.0", True),
        "hostpci3": ("ich9-pcie-port-4", False),
        "hostpci4": ("ich9-pcie-port-5", False),
        "hostpci7": ("ich9-pcie-port-8", False),
    }
    assert vm.unsupported == ()


@pytest.mark.parametrize(("target", "why"), [
    ("/dev/zero", "not a regular file"), ("missing.cfg", "no such file or directory"),
])
def test_unreadable_readconfig_is_reported_not_read(tmp_path: Path, target: str, why: str) -> None:
    path = target if target.startswith("/") else str(tmp_path / target)
    vm = parse_argv(["qemu-system-x86_64", "-readconfig", path, "-device", "vfio-pci,host=01:00.0,bus=rp9"])
    first, second = (u.what for u in vm.unsupported)
    assert first == f"-readconfig {path}: {why} here; the devices and buses it defines are not read"
    assert "bus 'rp9' is not defined on the command line (a -readconfig file may define it)" in second


def test_readconfig_memory_group_reads_like_dash_m(tmp_path: Path) -> None:
    cfg = tmp_path / "mem.cfg"
    cfg.write_text('[memory]\n  size = "4096"\n  maxmem = "8G"\n')
    via_file = parse_argv(["qemu-system-x86_64", "-readconfig", str(cfg)])
    via_argv = parse_argv(["qemu-system-x86_64", "-m", "4096,maxmem=8G"])
    both = {(vm.memory, vm.max_memory) for vm in (via_file, via_argv)}
    assert both == {(4 << 30, 8 << 30)}
    cfg.write_text('[memory]\n  size = "4Q"\n')
    with pytest.raises(InputError, match="not a size") as exc:
        parse_argv(["qemu-system-x86_64", "-readconfig", str(cfg)])
    assert exc.value.where == f"{cfg}:2"


def test_a_viommu_from_readconfig_is_checked_but_not_rewritten(tmp_path: Path) -> None:
    from viommu.frontends.emit import rewrite_argv

    cfg = tmp_path / "iommu.cfg"
    cfg.write_text('[machine]\n  type = "q35"\n\n[device "qemu_iommu"]\n  driver = "intel-iommu"\n'
                   '  caching-mode = "on"\n  intremap = "on"\n')
    vm = parse_argv(["qemu-system-x86_64", "-readconfig", str(cfg), "-m", "1G"])
    assert vm.machine == "q35"
    assert vm.viommu == DeviceSpec("intel-iommu",
                                   {"id": "qemu_iommu", "caching-mode": "on", "intremap": "on"})
    assert vm.viommu_where == f"{cfg}:7" and vm.viommu_argv == ()
    with pytest.raises(InputError, match="defined in a -readconfig file"):
        rewrite_argv(vm, DeviceSpec("intel-iommu", {"aw-bits": "39"}))


def test_kata_grace_arm_smmuv3_accel_on_an_expander_bus() -> None:
    # runtime-rs golden fixture: no program name, one word a line, "#" comment lines.
    path = str(KATA / "grace_1_single_gpu.args")
    vm = load_vm(path)
    assert vm.kind == "qemu" and vm.machine == "virt" and vm.accel == "kvm"
    assert vm.viommu == DeviceSpec("arm-smmuv3", {
        "primary-bus": "pcie.1", "id": "smmuv3.1", "accel": "on", "ats": "on", "ril": "off",
        "pasid": "on", "oas": "48"})
    assert vm.viommu_where == f"{path}:30"
    assert [(d.host, d.id, d.iommufd, d.bus, d.backend) for d in vm.vfio] == [
        ("0008:06:00.0", "dev0", "iommufd0", "pcie.port1", "iommufd")]  # vfio-pci-nohotplug
    assert vm.unsupported == ()


def test_kata_grace_second_smmu_is_reported_and_its_gpus_kept() -> None:
    path = str(KATA / "grace_3_four_gpus_2_per_smmu.args")
    vm = load_vm(path)
    assert vm.viommu is not None and vm.viommu.props["primary-bus"] == "pcie.1"
    assert [d.host for d in vm.vfio] == ["0008:06:00.0", "0009:06:00.0", "0010:06:00.0", "0011:06:00.0"]
    assert [(u.what.split(" (")[0], u.where) for u in vm.unsupported] == [
        ("a second arm-smmuv3", f"{path}:90")]


def test_kata_x86_gpus_each_with_its_own_iommufd_and_no_viommu() -> None:
    vm = load_vm(str(KATA / "q35_vanilla_8gpu_4nvswitch.args"))
    assert vm.machine == "q35" and vm.viommu is None
    assert len(vm.vfio) == 12
    assert all(d.iommufd == f"iommufd{d.id}" and d.backend == "iommufd" for d in vm.vfio)
    ports = {f"rp-numa{node}-{port}" for node, count in ((0, 8), (1, 4)) for port in range(count)}
    assert {d.bus for d in vm.vfio} == ports  # root ports on two pxb-pcie expanders
    assert vm.iommufd_objects == tuple(f"iommufd{d.id}" for d in vm.vfio)


@pytest.mark.parametrize(("argv", "host_phys"), [
    # host_cpu_max_instance_init (target/i386/host-cpu.c) turns host-phys-bits on for the
    # host and max models when the accelerator uses the host's CPUID (KVM), not under TCG.
    (["/usr/bin/kvm", "-cpu", "host,+kvm_pv_eoi"], True),  # Debian's kvm: -enable-kvm
    (["qemu-system-x86_64", "-enable-kvm", "-cpu", "max"], True),
    (["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host,phys-bits=39"], True),
    (["qemu-system-x86_64", "-cpu", "max"], False),  # TCG
    (["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,host-phys-bits=off"], False),
    (["qemu-system-x86_64", "-enable-kvm", "-cpu", "Skylake-Server,+x2apic"], False),
    (["qemu-system-x86_64", "-cpu", "qemu64,host-phys-bits=on"], True),  # as written (TCG ignores it)
])
def test_cpu_host_and_max_under_kvm_mean_host_phys_bits(argv: list[str], host_phys: bool) -> None:
    assert parse_argv(argv).host_phys_bits is host_phys


def test_proxmox_host_phys_bits_and_virtio() -> None:
    vm = load_vm(str(PVE / "custom-cpu-model-host-phys-bits.conf.cmd"))
    assert vm.host_phys_bits is True and vm.phys_bits is None
    assert vm.machine == "pc-i440fx-5.1+pve0"
    virtio = load_vm(str(PVE / "q35-viommu-virtio.conf.cmd"))
    assert virtio.viommu == DeviceSpec("virtio-iommu-pci", {})


def test_libvirt_args_json_device_and_env() -> None:
    vm = load_vm(str(DATA / "libvirt" / "intel-iommu-caching-mode.x86_64-latest.args"))
    # JSON true is QEMU's on; kernel_irqchip (libvirt's spelling) is kernel-irqchip.
    assert vm.viommu == DeviceSpec("intel-iommu", {"id": "iommu0", "intremap": "on", "caching-mode": "on"})
    assert (vm.accel, vm.kernel_irqchip, vm.machine) == ("kvm", "split", "q35")
    assert vm.memory == 219136 * 1024
    assert vm.unsupported == ()


def test_amd_companion_is_part_of_the_viommu() -> None:
    vm = load_vm(str(DATA / "libvirt" / "amd-iommu.x86_64-latest.args"))
    assert vm.viommu is not None and vm.viommu.driver == "amd-iommu"
    assert [vm.argv[i] for i in vm.viommu_argv if vm.argv[i] != "-device"] == [
        '{"driver":"AMDVI-PCI","id":"iommu0","bus":"pcie.0","addr":"0x1"}',
        '{"driver":"amd-iommu","pci-id":"iommu0","intremap":"on","device-iotlb":true}']


# -- constructed command lines ----------------------------------------------------------


def test_topology_bridges_switches_and_bypass() -> None:
    argv = ["qemu-system-x86_64", "-M", "q35,accel=tcg", "-cpu", "max,phys-bits=42",
            "-m", "size=4G,maxmem=8G", "-object", "iommufd,id=fd0",
            "-device", "pcie-root-port,id=rp1,chassis=1",
            "-device", "pcie-pci-bridge,id=br1,bus=rp1",
            "-device", "vfio-pci,host=01:00.0,id=behind,bus=br1,addr=0x1,iommufd=fd0",
            "-device", "x3130-upstream,id=up,bus=rp1",
            "-device", "xio3130-downstream,id=down,bus=up,chassis=2",
            "-device", "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:02:00.1,id=sw,bus=down",
            "-device", "pxb-pcie,id=pxb,bus_nr=64,bypass_iommu=true",
            "-device", "ioh3420,id=rp2,bus=pxb,chassis=3",
            "-device", '{"driver":"vfio-pci","host":"0000:03:00.0","id":"byp","bus":"rp2"}',
            "-device", "vfio-pci,host=04:00.0"]
    vm = parse_argv(argv)
    devs = {d.label: d for d in vm.vfio}
    assert devs["behind"].host == "0000:01:00.0"
    assert devs["behind"].behind_pci_bridge and devs["behind"].iommufd == "fd0"
    assert devs["behind"].where == "argv[14]"  # the -device value word
    assert devs["sw"].host == "0000:02:00.1" and not devs["sw"].behind_pci_bridge
    assert devs["byp"].bypass_iommu and not devs["sw"].bypass_iommu
    assert devs["0000:04:00.0"].bus is None
    assert vm.iommufd_objects == ("fd0",)
    assert (vm.accel, vm.phys_bits, vm.memory, vm.max_memory) == ("tcg", 42, 4 << 30, 8 << 30)
    assert vm.unsupported == ()


def test_default_bus_bypass_and_mdev_sysfsdev() -> None:
    vm = parse_argv(["-M", "q35,default_bus_bypass_iommu=on", "-device",
                     "vfio-pci,host=0000:05:00.0",
                     "-device",
                     "vfio-pci,sysfsdev=/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"])
    assert [d.bypass_iommu for d in vm.vfio] == [True]
    assert [u.where for u in vm.unsupported] == ["argv[5]"]
    assert "mdev" in vm.unsupported[0].what


def test_global_and_set_fold_into_the_viommu_explicit_wins() -> None:
    vm = parse_argv(["-M", "q35", "-global", "intel-iommu.aw-bits=39",
                     "-global", "driver=x86-iommu,property=intremap,value=on",
                     "-global", "intel-iommu.caching-mode=off",
                     "-device", "intel-iommu,id=vtd,caching-mode=on",
                     "-set", "device.vtd.device-iotlb=on"])
    assert vm.viommu == DeviceSpec("intel-iommu", {"id": "vtd", "caching-mode": "on", "device-iotlb": "on",
                                                   "aw-bits": "39", "intremap": "on"})
    assert vm.viommu_argv == tuple(range(2, 12))


def test_machine_smmuv3_and_enable_kvm() -> None:
    vm = parse_argv(["qemu-system-aarch64", "-enable-kvm", "-machine", "virt,iommu=smmuv3,gic-version=3"])
    assert vm.viommu == DeviceSpec("arm-smmuv3", {})
    assert vm.viommu_where == "argv[3]" and vm.accel == "kvm"


def test_second_smmuv3_is_reported_not_refused() -> None:
    vm = parse_argv(["-M", "virt", "-device", "arm-smmuv3,primary-bus=pcie.0",
                     "-device", "arm-smmuv3,primary-bus=pxb1"])
    assert vm.viommu == DeviceSpec("arm-smmuv3", {"primary-bus": "pcie.0"})
    assert [u.where for u in vm.unsupported] == ["argv[5]"]


@pytest.mark.parametrize(("argv", "where", "words"), [
    (["-device", "intel-iommu", "-device", "virtio-iommu-pci"], "argv[3]", "second vIOMMU"),
    (["-device", "vfio-pci,id=x"], "argv[1]", "host= or sysfsdev="),
    (["-device", "vfio-pci,host=1:0.0"], "argv[1]", "not a PCI address"),
    (["-m", "4Q"], "argv[1]", "not a size"),
    (["-m", "1G,maxmem=1.5"], "argv[1]", "fraction"),  # maxmem is bytes when bare
    (["-M", "q35", "-device"], "argv[2]", "needs a value"),
    (["-device", "-M", "q35"], "argv[0]", "needs a value"),
    (["-device", '{"driver": "intel-iommu",'], "argv[1]", "JSON"),
    (["-M", "q35,kernel-irqchip=maybe"], "argv[1]", "kernel-irqchip"),
    (["ls", "-l"], "argv[0]", "neither a QEMU option nor a QEMU binary"),
    (["-cpu", "max,phys-bits=x"], "argv[1]", "whole number"),
    (["-M", "q35", "stray"], "argv[2]", "not an option"),
])
def test_bad_command_lines_are_one_line(argv: list[str], where: str, words: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_argv(argv)
    assert exc.value.where == where
    assert words in exc.value.message
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_bad_file_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "qemu-system-x86_64 \\\n  -M q35 \\\n  -device intel-iommu \\\n"
                           "  -device virtio-iommu-pci\n")
    with pytest.raises(InputError) as exc:
        load_vm(path)
    assert str(exc.value).startswith(f"{path}:4: a second vIOMMU")


def test_sizes_follow_qemu_strtosz() -> None:
    # QEMU docs (qemu-options.hx, -m): "Optionally, a suffix of M or G can be used".
    assert parse_size("512", default_unit="M", what="-m", where="x") == 512 << 20
    assert parse_size("1.5G", what="-m", where="x") == 3 << 29
    assert parse_size("0x1000", what="-m", where="x") == 4096
    assert parse_size("2t", what="-m", where="x") == 2 << 40


def test_detection(tmp_path: Path) -> None:
    assert detect_kind("\ufeff  <?xml version='1.0'?><domain/>") == "libvirt"
    assert detect_kind("<!-- c --><domain/>") == "libvirt"
    assert detect_kind('[vm]\nviommu = "intel-iommu"\n') == "scenario"
    assert detect_kind("[viommu]\nmodel = 'intel-iommu'\n") == "scenario"
    assert detect_kind("qemu-system-x86_64 -M q35\n") == "qemu"
    assert detect_kind("x = 1\n") == "qemu"


def test_stdin_and_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"-M q35 -device intel-iommu\n")))
    vm = load_vm("-")
    assert vm.viommu == DeviceSpec("intel-iommu", {}) and vm.viommu_where == "<stdin>:1"
    with pytest.raises(InputError):
        load_vm(None, [])


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_vm(str(tmp_path / "nope"))
    assert exc.value.where == str(tmp_path / "nope")
