"""Build sysfs trees in the kernel's real formats, for the discovery tests.

The layout mirrors a real host: class and bus entries are relative symlinks
into ``sys/devices``; ``reserved_regions`` lines are ``0x%016llx 0x%016llx
%s``; ``intel-iommu/cap`` is ``%llx`` without ``0x``; AMD ``features`` is
written verbatim, so tests choose its format. Values are written as given:
a test can write garbage to see the error.
"""

from __future__ import annotations

import os
from pathlib import Path

MSI_LINE = "0x00000000fee00000 0x00000000feefffff msi\n"
HT_LINE = "0x000000fd00000000 0x000000ffffffffff reserved\n"


def region(start: int, last: int, kind: str) -> str:
    return f"0x{start:016x} 0x{last:016x} {kind}\n"


class Tree:
    """A root directory holding ``sys/`` and ``proc/``."""

    def __init__(self, root: Path, *, release: str | None = "6.12.0", cmdline: str | None = "quiet") -> None:
        self.root = root
        self.sys = root / "sys"
        for d in ("class/iommu", "kernel/iommu_groups", "bus/pci/devices", "bus/pci/drivers"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        if release is not None:
            self.write("proc/sys/kernel/osrelease", release + "\n")
        if cmdline is not None:
            self.write("proc/cmdline", cmdline + "\n")
        self.write("proc/sys/kernel/hostname", "fixture-host\n")
        self.write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Fixture CPU @ 1.00GHz\n")
        self._unit_dirs: dict[str, Path] = {}
        self._dev_dirs: dict[str, Path] = {}

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @staticmethod
    def link(at: Path, target: Path) -> None:
        at.parent.mkdir(parents=True, exist_ok=True)
        at.symlink_to(os.path.relpath(target, at.parent))

    # ----- units -----------------------------------------------------------------

    def vtd(
        self, name: str, cap: str, ecap: str, *, version: str = "1:0\n", address: str = "fed90000\n"
    ) -> Path:
        unit = self.sys / "devices/virtual/iommu" / name
        self.write(str((unit / "intel-iommu/cap").relative_to(self.root)), cap)
        self.write(str((unit / "intel-iommu/ecap").relative_to(self.root)), ecap)
        self.write(str((unit / "intel-iommu/version").relative_to(self.root)), version)
        self.write(str((unit / "intel-iommu/address").relative_to(self.root)), address)
        return self._unit(name, unit)

    def amd(self, name: str, features: str, *, pci: str = "0000:00:00.2") -> Path:
        unit = self.sys / f"devices/pci0000:00/{pci}/iommu/{name}"
        self.write(str((unit / "amd-iommu/cap").relative_to(self.root)), "190b640f\n")
        self.write(str((unit / "amd-iommu/features").relative_to(self.root)), features)
        return self._unit(name, unit)

    def smmu(self, name: str) -> Path:
        unit = self.sys / "devices/platform/arm-smmu-v3.0.auto/iommu" / name
        unit.mkdir(parents=True)
        return self._unit(name, unit)

    def _unit(self, name: str, unit: Path) -> Path:
        self.link(self.sys / "class/iommu" / name, unit)
        self._unit_dirs[name] = unit
        return unit

    # ----- groups and devices -------------------------------------------------------

    def group(self, number: int, regions: str | None = MSI_LINE, *, kind: str | None = "DMA\n") -> Path:
        group = self.sys / "kernel/iommu_groups" / str(number)
        (group / "devices").mkdir(parents=True)
        if regions is not None:
            (group / "reserved_regions").write_text(regions)
        if kind is not None:
            (group / "type").write_text(kind)
        return group

    def device(
        self,
        bdf: str,
        *,
        unit: str | None,
        group: int | None,
        ident: tuple[str, str] = ("0x8086", "0x1234"),
        cls: str = "0x020000",
        driver: str | None = None,
        pcie: bool = True,
        parent: str | None = None,
    ) -> Path:
        domain = bdf.split(":")[0]
        base = self._dev_dirs[parent] if parent else self.sys / f"devices/pci{domain}:00"
        dev = base / bdf
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(ident[0] + "\n")
        (dev / "device").write_text(ident[1] + "\n")
        (dev / "class").write_text(cls + "\n")
        if pcie:
            (dev / "max_link_speed").write_text("8.0 GT/s PCIe\n")
        self.link(self.sys / "bus/pci/devices" / bdf, dev)
        if group is not None:
            grp = self.sys / "kernel/iommu_groups" / str(group)
            self.link(dev / "iommu_group", grp)
            self.link(grp / "devices" / bdf, dev)
        if unit is not None:
            self.link(dev / "iommu", self._unit_dirs[unit])
            self.link(self._unit_dirs[unit] / "devices" / bdf, dev)
        if driver is not None:
            drv = self.sys / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            self.link(dev / "driver", drv)
        self._dev_dirs[bdf] = dev
        return dev


def q35_lab(
    root: Path, *, cmdline: str = "intel_iommu=on", cap: str = "d2008c40660462\n", ecap: str = "f050da\n"
) -> Tree:
    """A guest like the lab's L1: one VT-d unit, an edu device on vfio-pci, a NIC behind a
    pcie-pci-bridge (so it has an alias), ICH9 functions sharing a group with the LPC bridge."""
    t = Tree(root, cmdline=cmdline)
    t.vtd("dmar0", cap, ecap)
    t.group(0)
    t.group(1)
    t.group(2)
    t.group(3)
    t.group(4, "0x0000000000000000 0x0000000000ffffff direct-relaxable\n" + MSI_LINE)
    t.device("0000:00:00.0", unit="dmar0", group=0, ident=("0x8086", "0x29c0"), cls="0x060000", pcie=False)
    t.device(
        "0000:00:03.0",
        unit="dmar0",
        group=1,
        ident=("0x1234", "0x11e8"),
        cls="0x00ff00",
        driver="vfio-pci",
        pcie=False,
    )
    t.device(
        "0000:00:04.0", unit="dmar0", group=2, ident=("0x1b36", "0x000c"), cls="0x060400", driver="pcieport"
    )
    t.device(
        "0000:01:00.0",
        unit="dmar0",
        group=3,
        ident=("0x1b36", "0x000e"),
        cls="0x060400",
        parent="0000:00:04.0",
    )
    t.device(
        "0000:02:01.0",
        unit="dmar0",
        group=3,
        ident=("0x8086", "0x100e"),
        cls="0x020000",
        driver="e1000",
        pcie=False,
        parent="0000:01:00.0",
    )
    t.device("0000:00:1f.0", unit="dmar0", group=4, ident=("0x8086", "0x2918"), cls="0x060100", pcie=False)
    t.device(
        "0000:00:1f.2",
        unit="dmar0",
        group=4,
        ident=("0x8086", "0x2922"),
        cls="0x010601",
        driver="ahci",
        pcie=False,
    )
    return t
