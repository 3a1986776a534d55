"""Requester-ID aliasing decided by the bridge's port type, as QEMU and Linux decide it.

Found in the lab: QEMU's ``edu`` is a conventional PCI device; plugged into a
``pcie-root-port`` it sits on a PCI Express bus and is not aliased (QEMU's
``pci_device_get_iommu_bus_devfn`` tests ``pci_bus_is_express`` of the bus;
Linux's ``pci_for_each_dma_alias`` skips root and switch ports). The sysfs
backend used to take the device's own PCIe-ness for its bus and reported an
alias to the root port.
"""

from __future__ import annotations

from pathlib import Path

from sysfs_fixture import Tree
from viommu.host import pci
from viommu.host.discover import discover


def config_with_pcie_cap(port_type: int, *, at: int = 0x60, chain_from: int | None = 0x48) -> bytes:
    """256 bytes of type-1 config space: status.CAP_LIST, a PM capability, then PCIe with ``port_type``."""
    space = bytearray(256)
    space[0x06] = 0x10  # status: capabilities list present
    if chain_from is not None:
        space[0x34] = chain_from
        space[chain_from] = 0x01  # PCI power management
        space[chain_from + 1] = at
    else:
        space[0x34] = at
    space[at] = pci.PCI_CAP_ID_EXP
    space[at + 2] = (port_type << 4) | 0x2  # PCIe capability version 2
    return bytes(space)


def test_port_type_read_through_the_capability_chain() -> None:
    assert pci.pcie_port_type(config_with_pcie_cap(pci.PCI_EXP_TYPE_ROOT_PORT)) == 4
    assert pci.pcie_port_type(config_with_pcie_cap(pci.PCI_EXP_TYPE_PCI_BRIDGE, chain_from=None)) == 7
    # Unprivileged readers see 64 bytes only; no capability list; a list that loops.
    assert pci.pcie_port_type(config_with_pcie_cap(4)[:64]) is None
    assert pci.pcie_port_type(bytes(256)) is None
    looping = bytearray(256)
    looping[0x06], looping[0x34], looping[0x40], looping[0x41] = 0x10, 0x40, 0x01, 0x40
    assert pci.pcie_port_type(bytes(looping)) is None


def _tree(tmp_path: Path, *, port_driver: str | None, port_config: bytes | None,
          bridge_config: bytes | None) -> Tree:
    t = Tree(tmp_path, cmdline="intel_iommu=on")
    t.vtd("dmar0", "d2008c40660462\n", "f050da\n")
    for n in (1, 2, 3):
        t.group(n)
    # A conventional edu on a root port (as the lab's L0 builds it) ...
    port = t.device("0000:00:04.0", unit="dmar0", group=1, cls="0x060400", driver=port_driver)
    t.device("0000:01:00.0", unit="dmar0", group=2, cls="0x00ff00", pcie=False, driver="vfio-pci",
             parent="0000:00:04.0")
    # ... and one behind a root port and a PCIe-to-PCI bridge.
    t.device("0000:00:05.0", unit="dmar0", group=3, cls="0x060400", driver=port_driver)
    bridge = t.device("0000:02:00.0", unit="dmar0", group=3, cls="0x060400", parent="0000:00:05.0")
    t.device("0000:03:01.0", unit="dmar0", group=3, cls="0x00ff00", pcie=False, driver="vfio-pci",
             parent="0000:02:00.0")
    if port_config is not None:
        (port / "config").write_bytes(port_config)
    if bridge_config is not None:
        (bridge / "config").write_bytes(bridge_config)
    return t


def test_conventional_device_on_a_root_port_is_not_aliased(tmp_path: Path) -> None:
    # As root: config space names the port types.
    _tree(tmp_path, port_driver=None, port_config=config_with_pcie_cap(pci.PCI_EXP_TYPE_ROOT_PORT),
          bridge_config=config_with_pcie_cap(pci.PCI_EXP_TYPE_PCI_BRIDGE))
    inv = discover("sysfs", root=tmp_path)
    assert not inv.device("0000:01:00.0").caps.alias.aliased
    behind = inv.device("0000:03:01.0").caps.alias
    assert (behind.bridge, behind.alias_bdf) == ("0000:02:00.0", "0000:03:00.0")


def test_pcieport_driver_tells_when_config_space_is_unreadable(tmp_path: Path) -> None:
    # Unprivileged: 64 bytes of config space; the root port is bound to pcieport.
    _tree(tmp_path, port_driver="pcieport", port_config=bytes(64), bridge_config=bytes(64))
    inv = discover("sysfs", root=tmp_path)
    assert not inv.device("0000:01:00.0").caps.alias.aliased
    behind = inv.device("0000:03:01.0").caps.alias
    assert (behind.bridge, behind.alias_bdf) == ("0000:02:00.0", "0000:03:00.0")


def test_without_either_the_device_stands_in_for_its_bus(tmp_path: Path) -> None:
    # A capture with neither config nor drivers: the old rule (and its limit) remains.
    _tree(tmp_path, port_driver=None, port_config=None, bridge_config=None)
    inv = discover("sysfs", root=tmp_path)
    assert inv.device("0000:01:00.0").caps.alias.bridge == "0000:00:04.0"
