"""libvirt domain XML in: libvirt's own XML/args pairs, hostdevs and controllers, hostile XML."""

from __future__ import annotations

from pathlib import Path

import pytest

from viommu.errors import InputError
from viommu.frontends import load_vm
from viommu.models.base import DeviceSpec

LV = Path(__file__).parent / "data" / "vms" / "libvirt"

#: (domain XML, the .args libvirt's qemuxmlconftest expects from it): see SOURCES.md.
PAIRS = [
    ("intel-iommu-caching-mode.xml", "intel-iommu-caching-mode.x86_64-latest.args"),
    ("intel-iommu-aw-bits.xml", "intel-iommu-aw-bits.x86_64-latest.args"),
    ("intel-iommu-eim.xml", "intel-iommu-eim.x86_64-latest.args"),
    ("intel-iommu-device-iotlb.xml", "intel-iommu-device-iotlb.x86_64-latest.args"),
    ("amd-iommu.xml", "amd-iommu.x86_64-latest.args"),
    ("virtio-iommu-x86_64.x86_64-latest.xml", "virtio-iommu-x86_64.x86_64-latest.args"),
]


@pytest.mark.parametrize(("xml", "args"), PAIRS)
def test_iommu_translation_matches_libvirts_own_command_line(xml: str, args: str) -> None:
    domain = load_vm(str(LV / xml))
    command = load_vm(str(LV / args))
    assert domain.kind == "libvirt" and command.kind == "qemu"
    assert domain.viommu is not None
    assert domain.viommu == command.viommu
    assert (domain.machine, domain.accel, domain.kernel_irqchip) == (
        command.machine, command.accel, command.kernel_irqchip)
    assert domain.unsupported == ()


def test_where_points_at_the_iommu_element() -> None:
    path = str(LV / "intel-iommu-aw-bits.xml")
    vm = load_vm(path)
    lines = Path(path).read_text().splitlines()
    line = int(vm.viommu_where.rsplit(":", 1)[1])
    assert lines[line - 1].strip() == "<iommu model='intel'>"
    assert vm.memory == 219100 * 1024


def test_dma_translation() -> None:
    vm = load_vm(str(LV / "intel-iommu-dma-translation.xml"))
    props = {"id": "iommu0", "intremap": "on", "dma-translation": "off"}
    assert vm.viommu == DeviceSpec("intel-iommu", props)


DOMAIN = """<?xml version='1.0'?>
<!-- a hand-written domain -->
<domain type='kvm'>
  <memory unit='GiB'>4</memory>
  <maxMemory slots='4' unit='GiB'>16</maxMemory>
  <os><type arch='x86_64' machine='pc-q35-9.1'>hvm</type></os>
  <features><ioapic driver='kvm'/></features>
  <cpu mode='host-passthrough'><maxphysaddr mode='passthrough' limit='39'/></cpu>
  <iommufd enabled='yes'/>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </controller>
    <controller type='pci' index='2' model='pcie-to-pci-bridge'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <controller type='pci' index='3' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </controller>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio' iommufd='yes'/>
      <source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></source>
      <alias name='ua-nic'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x01' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x5e' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </hostdev>
    <interface type='hostdev' managed='yes'>
      <source><address type='pci' domain='0x0000' bus='0x81' slot='0x10' function='0x2'/></source>
    </interface>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/></source></hostdev>
    <iommu model='virtio'>
      <driver aw_bits='48' caching_mode='on'>
        <granule size='64' unit='KiB'/>
      </driver>
    </iommu>
  </devices>
</domain>
"""


def test_hostdevs_controllers_and_cpu(tmp_path: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_text(DOMAIN)
    vm = load_vm(str(path))
    assert vm.machine == "pc-q35-9.1" and vm.kernel_irqchip == "on" and vm.accel == "kvm"
    assert (vm.memory, vm.max_memory) == (4 << 30, 16 << 30)
    assert vm.host_phys_bits and vm.host_phys_bits_limit == 39 and vm.phys_bits is None
    assert vm.viommu == DeviceSpec("virtio-iommu-pci", {"id": "iommu0", "aw-bits": "48", "granule": "64k"})
    nic, gpu, vf = vm.vfio
    assert (nic.host, nic.id, nic.iommufd, nic.bus, nic.addr, nic.behind_pci_bridge) == (
        "0000:3b:00.1", "ua-nic", "iommufd0", "pci.2", "0x1", True)
    assert (gpu.host, gpu.iommufd, gpu.bus, gpu.behind_pci_bridge) == ("0000:5e:00.0", None, "pci.3", False)
    assert (vf.host, vf.bus) == ("0000:81:10.2", None)
    assert vm.iommufd_objects == ("iommufd0",)
    # caching_mode is an intel attribute: libvirt refuses it on virtio, we report it.
    assert [u.where for u in vm.unsupported] == [f"{path}:36"]  # the <driver> line
    assert "caching_mode" in vm.unsupported[0].what


def test_unknown_model_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_text("<domain type='kvm'>\n<devices>\n<iommu model='riscv'/>\n</devices>\n</domain>\n")
    vm = load_vm(str(path))
    assert vm.viommu is None and [u.where for u in vm.unsupported] == [f"{path}:3"]


BAD = {
    "billion-laughs": ("<?xml version='1.0'?>\n<!DOCTYPE lolz [\n <!ENTITY lol 'lol'>\n"
                       " <!ENTITY lol2 '&lol;&lol;&lol;&lol;'>\n]>\n<domain>&lol2;</domain>\n",
                       "not allowed"),
    "external-entity": ("<?xml version='1.0'?>\n<!DOCTYPE d [\n<!ENTITY x SYSTEM 'file:///etc/passwd'>\n]>"
                        "\n<domain>&x;</domain>\n", "not allowed"),
    "dtd": ("<?xml version='1.0'?>\n<!DOCTYPE domain SYSTEM 'domain.dtd'>\n<domain/>\n", "not allowed"),
    "truncated": ("<domain type='kvm'>\n  <devices>\n    <iommu model='intel'>\n", "does not parse"),
    "wrong-root": ("<?xml version='1.0'?>\n\n<network><name>default</name></network>\n", "not a libvirt"),
    "bad-aw-bits": ("<domain>\n<devices>\n<iommu model='intel'>\n<driver aw_bits='wide'/>\n</iommu>\n"
                    "</devices>\n</domain>\n", "not a number"),
    "bad-onoff": ("<domain>\n<devices>\n<iommu model='intel'>\n<driver intremap='yes'/>\n</iommu>\n"
                  "</devices>\n</domain>\n", "on or off"),
    "two-iommus": ("<domain>\n<devices>\n<iommu model='intel'/>\n<iommu model='virtio'/>\n</devices>\n"
                   "</domain>\n", "second <iommu>"),
    "hostdev-no-source": ("<domain>\n<devices>\n<hostdev mode='subsystem' type='pci'/>\n</devices>\n"
                          "</domain>\n", "no <source>"),
}
#: The line each error must name: where the offending construct stands (a DTD is refused at
#: its <!DOCTYPE, before any entity in it is read).
BAD_LINES = {"billion-laughs": 2, "external-entity": 2, "dtd": 2, "truncated": 4, "wrong-root": 3,
             "bad-aw-bits": 4, "bad-onoff": 4, "two-iommus": 4, "hostdev-no-source": 3}


@pytest.mark.parametrize("name", sorted(BAD))
def test_hostile_and_malformed_xml_is_one_line_with_file_and_line(tmp_path: Path, name: str) -> None:
    text, words = BAD[name]
    path = tmp_path / f"{name}.xml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_vm(str(path))
    assert exc.value.where == f"{path}:{BAD_LINES[name]}"
    assert words in exc.value.message
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2
