"""PCI addresses and requester-ID aliasing.

The alias rule is QEMU's ``pci_device_get_iommu_bus_devfn`` (qemu-framework
brief §1.4), which matches Linux's ``pci_for_each_dma_alias`` for the cases
sysfs can show. Walking up from the device towards the root bus:

* a conventional bus below a PCIe bridge (a PCIe-to-PCI bridge): the alias
  becomes (that secondary bus, devfn 0);
* a conventional bus below a conventional PCI-to-PCI bridge: the alias
  becomes the bridge itself;
* PCIe-to-PCIe hops (root ports, switch ports) do not alias.

Whether a bus is conventional is a property of the bridge above it (QEMU's
``pci_bus_is_express``, Linux's switch on the bridge's PCIe port type), not of
the device on it: QEMU happily plugs a conventional device (``edu``) into a
root port, and it is not aliased there (seen in the lab). So the bridge's
PCIe port type decides when it is known (:attr:`Hop.secondary_express`);
only when it is not does the child's own PCIe-ness stand in for its bus.

The topmost aliasing hop wins: it is the requester ID the IOMMU sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from viommu.errors import InputError
from viommu.host.caps import PciAlias
from viommu.record import record

BDF = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")

#: PCI class codes (class << 8 | subclass) of bridges, which vfio-pci never binds.
BRIDGE_CLASSES = (0x0604, 0x0609)


def check_bdf(text: str, *, where: str | None = None) -> str:
    """``text`` if it is a PCI address ``DDDD:BB:DD.F`` (lower-case hex, as sysfs names devices)."""
    if BDF.fullmatch(text) is None:
        raise InputError(f"{text!r} is not a PCI address DDDD:BB:DD.F", where=where)
    return text


def bus_of(bdf: str) -> str:
    """``"0000:04:00.0"`` -> ``"0000:04"``."""
    return bdf.rsplit(":", 1)[0]


def is_bridge(class_code: int | None) -> bool:
    """Whether a 24-bit class code is a PCI-to-PCI bridge."""
    return class_code is not None and class_code >> 8 in BRIDGE_CLASSES


#: PCIe capability ID and the Device/Port Type values (PCIe base spec 7.5.3.2) of bridges.
PCI_CAP_ID_EXP = 0x10
PCI_EXP_TYPE_ROOT_PORT = 0x4
PCI_EXP_TYPE_UPSTREAM = 0x5
PCI_EXP_TYPE_DOWNSTREAM = 0x6
PCI_EXP_TYPE_PCI_BRIDGE = 0x7
PCI_EXP_TYPE_PCIE_BRIDGE = 0x8


@record(frozen=True)
class Hop:
    """One device on the path from the root bus to a device: its address and whether it is PCIe."""

    bdf: str
    pcie: bool
    #: For a bridge: whether its secondary bus is PCI Express (None: not known, e.g. a capture
    #: without config space; the device below then stands in for its bus).
    secondary_express: bool | None = None


def pcie_port_type(config: bytes) -> int | None:
    """The PCIe Device/Port Type from a config-space dump, or None (no PCIe capability or too short).

    Walks the capability list from the pointer at 0x34 (valid when status bit 4 is set),
    bounded so that a looping list ends.
    """
    if len(config) < 0x40 or not config[0x06] & 0x10:
        return None
    offset = config[0x34] & 0xFC
    for _ in range(48):
        if offset < 0x40 or offset + 4 > len(config):
            return None
        if config[offset] == PCI_CAP_ID_EXP:
            return (config[offset + 2] >> 4) & 0xF
        offset = config[offset + 1] & 0xFC
    return None


def secondary_is_express(port_type: int | None, *, pcie: bool) -> bool:
    """Whether a bridge's secondary bus is PCIe, from its port type (a conventional bridge: no)."""
    if not pcie or port_type is None:
        return False
    return port_type in (PCI_EXP_TYPE_ROOT_PORT, PCI_EXP_TYPE_UPSTREAM, PCI_EXP_TYPE_DOWNSTREAM,
                         PCI_EXP_TYPE_PCIE_BRIDGE)


def dma_alias(path: Sequence[Hop]) -> PciAlias:
    """The alias of ``path[-1]``, given every device from the root bus down to it.

    ``path[:-1]`` are the bridges above the device, topmost first; a bridge's
    secondary bus is conventional when the next hop down is not PCIe. QEMU
    walks upwards and keeps the last alias it computes, i.e. the topmost
    aliasing hop, which is the first one in this top-down order.
    """
    for bridge, child in pairwise(path):
        express = bridge.secondary_express if bridge.secondary_express is not None else child.pcie
        if express:
            continue  # an express bus: no alias at this hop
        if bridge.pcie:
            return PciAlias(bridge=bridge.bdf, alias_bdf=f"{bus_of(child.bdf)}:00.0")
        return PciAlias(bridge=bridge.bdf, alias_bdf=bridge.bdf)
    return PciAlias()
