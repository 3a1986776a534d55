"""PCI addresses and requester-ID aliasing.

The alias rule is QEMU's ``pci_device_get_iommu_bus_devfn`` (qemu-framework
brief §1.4), which matches Linux's ``pci_for_each_dma_alias`` for the cases
sysfs can show. Walking up from the device towards the root bus:

* a conventional bus below a PCIe bridge (a PCIe-to-PCI bridge): the alias
  becomes (that secondary bus, devfn 0);
* a conventional bus below a conventional PCI-to-PCI bridge: the alias
  becomes the bridge itself;
* PCIe-to-PCIe hops (root ports, switch ports) do not alias.

The topmost aliasing hop wins: it is the requester ID the IOMMU sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from viommu.errors import InputError
from viommu.host.caps import PciAlias

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


@dataclass(frozen=True)
class Hop:
    """One device on the path from the root bus to a device: its address and whether it is PCIe."""

    bdf: str
    pcie: bool


def dma_alias(path: Sequence[Hop]) -> PciAlias:
    """The alias of ``path[-1]``, given every device from the root bus down to it.

    ``path[:-1]`` are the bridges above the device, topmost first; a bridge's
    secondary bus is conventional when the next hop down is not PCIe. QEMU
    walks upwards and keeps the last alias it computes, i.e. the topmost
    aliasing hop, which is the first one in this top-down order.
    """
    for bridge, child in pairwise(path):
        if child.pcie:
            continue  # an express bus: no alias at this hop
        if bridge.pcie:
            return PciAlias(bridge=bridge.bdf, alias_bdf=f"{bus_of(child.bdf)}:00.0")
        return PciAlias(bridge=bridge.bdf, alias_bdf=bridge.bdf)
    return PciAlias()
