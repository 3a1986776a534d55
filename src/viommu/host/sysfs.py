"""The sysfs backend: unprivileged, read-only discovery from /sys and /proc.

Read under ``root`` (``/`` for the running host, or an unpacked capture):

* ``sys/class/iommu/<unit>/{intel-iommu/{cap,ecap,version,address},amd-iommu/features}``;
* ``sys/kernel/iommu_groups/<N>/{devices/,reserved_regions,type}``
  (``reserved_regions`` since 4.11, ``type`` since 5.11: absent on older kernels);
* ``sys/bus/pci/devices/<BDF>/{iommu_group,iommu,driver}`` links, ``vendor``,
  ``device``, ``class``, and ``max_link_speed`` (present on PCIe functions only,
  which is how the PCIe-to-PCI bridges behind an alias are told apart);
* ``proc/sys/kernel/osrelease`` (AMD ``features`` field order) and
  ``proc/cmdline`` (``intel_iommu=sm_on|sm_off``), ``boot/config-<release>``.

Nothing is written and no device is opened. A file that cannot be read or
holds garbage is one error naming its path.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from viommu.errors import HostAccessError, InputError
from viommu.hexparse import parse_hex
from viommu.host import pci as pcimod
from viommu.host import units as unitmod
from viommu.host.caps import HostIOMMUCaps, HwCaps, IommuType, PciAlias, ReservedRegion, ResvType
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.host.inventory import (
    HostInventory,
    IommuGroup,
    IommuUnit,
    Machine,
    PciInfo,
    ScalableMode,
    natural_key,
)
from viommu.regs import sysfsfmt

_RESV_LINE = re.compile(r"0x([0-9a-f]{1,16}) 0x([0-9a-f]{1,16}) (\S+)")
#: sysfs spells IOMMU_RESV_SW_MSI "msi" too; a 2024 proposal spelt it "sw-msi".
_RESV_TYPES = {t.value: t for t in ResvType} | {"sw-msi": ResvType.MSI}


class Tree:
    """Files under ``root``, named in errors as ``label`` + the path below root."""

    def __init__(self, root: Path, label: str | None = None) -> None:
        self.root = root
        self.label = label if label is not None else str(root).rstrip("/")

    def name(self, rel: str) -> str:
        return f"{self.label}/{rel}"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def text(self, rel: str) -> str:
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="strict")
        except FileNotFoundError:
            raise InputError("missing (expected a file)", where=self.name(rel)) from None
        except UnicodeDecodeError:
            raise InputError("not text (garbage bytes)", where=self.name(rel)) from None
        except OSError as exc:
            raise HostAccessError(
                f"cannot read: {exc.strerror or exc}", where=self.name(rel), errno=exc.errno
            ) from None

    def optional_text(self, rel: str) -> str | None:
        return self.text(rel) if self.exists(rel) else None

    def link_name(self, rel: str) -> str:
        """The last component of the symlink ``rel`` (sysfs links name devices, groups, drivers)."""
        try:
            target = os.readlink(self.path(rel))
        except FileNotFoundError:
            raise InputError("missing link", where=self.name(rel)) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise InputError("not a symlink", where=self.name(rel)) from None
            raise HostAccessError(
                f"cannot read link: {exc.strerror or exc}", where=self.name(rel), errno=exc.errno
            ) from None
        return target.rstrip("/").rsplit("/", 1)[-1]

    def listdir(self, rel: str, *, natural: bool = False) -> list[str]:
        """Sorted entries; ``natural`` for group numbers and unit names (dmar2 < dmar10), not for BDFs."""
        try:
            return sorted(os.listdir(self.path(rel)), key=natural_key if natural else None)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostAccessError(
                f"cannot list: {exc.strerror or exc}", where=self.name(rel), errno=exc.errno
            ) from None

    def real_parts(self, rel: str) -> list[str]:
        """The components of ``rel`` with symlinks resolved, relative to root."""
        real = Path(os.path.realpath(self.path(rel)))
        try:
            return list(real.relative_to(os.path.realpath(self.root)).parts)
        except ValueError:
            raise InputError(f"link leads outside the tree (to {real})", where=self.name(rel)) from None


def kernel_release(tree: Tree) -> str | None:
    text = tree.optional_text("proc/sys/kernel/osrelease")
    return None if text is None else text.strip() or None


def scalable_mode(tree: Tree, release: str | None) -> ScalableMode:
    """The ``intel_iommu=`` scalable-mode choice: boot option, else the kernel's build default."""
    cmdline = tree.optional_text("proc/cmdline")
    if cmdline is not None:
        choice = None
        for word in cmdline.split():
            if word.startswith("intel_iommu="):
                for option in word.split("=", 1)[1].split(","):
                    if option in ("sm_on", "sm_off"):
                        choice = option  # the kernel applies options in order: the last wins
        if choice is not None:
            return ScalableMode(choice == "sm_on", f"intel_iommu={choice} on {tree.name('proc/cmdline')}")
    config_rel = f"boot/config-{release}" if release else None
    if config_rel and tree.exists(config_rel):
        on = "CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON=y" in tree.text(config_rel).splitlines()
        return ScalableMode(
            on,
            f"kernel default: CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON={'y' if on else 'n'} "
            f"in {tree.name(config_rel)}",
        )
    why = (
        "no intel_iommu=sm_on|sm_off on the command line"
        if cmdline is not None
        else "proc/cmdline unreadable"
    )
    return ScalableMode(
        False,
        f"kernel default assumed off ({why}; CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON is off upstream)",
    )


def machine(tree: Tree, release: str | None) -> Machine:
    def first_line(rel: str) -> str | None:
        try:
            text = tree.optional_text(rel)
        except (InputError, HostAccessError):
            return None  # identity is best effort: DMI files can be root-only
        return text.strip() or None if text is not None else None

    cpu = None
    phys_bits = None
    try:
        cpuinfo = tree.optional_text("proc/cpuinfo")
    except (InputError, HostAccessError):
        cpuinfo = None
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and cpu is None:
            cpu = value.strip()
        elif key == "address sizes" and phys_bits is None:
            # x86: "39 bits physical, 48 bits virtual" (arch/x86/kernel/cpu/proc.c)
            first = value.strip().split(" bits physical")[0]
            phys_bits = int(first) if first.isdecimal() and first.isascii() else None
        if cpu is not None and phys_bits is not None:
            break
    return Machine(
        hostname=first_line("proc/sys/kernel/hostname"),
        product=first_line("sys/class/dmi/id/product_name"),
        cpu=cpu,
        kernel=release,
        cpu_phys_bits=phys_bits,
    )


def _units(tree: Tree, sm: ScalableMode, release: str | None) -> dict[str, IommuUnit]:
    kernel = (
        sysfsfmt.kernel_version(release, where=tree.name("proc/sys/kernel/osrelease")) if release else None
    )
    found: dict[str, IommuUnit] = {}
    for name in tree.listdir("sys/class/iommu", natural=True):
        base = f"sys/class/iommu/{name}"
        if tree.exists(f"{base}/intel-iommu"):
            regs = {
                "cap": sysfsfmt.parse_vtd_register(
                    tree.text(f"{base}/intel-iommu/cap"), where=tree.name(f"{base}/intel-iommu/cap")
                ),
                "ecap": sysfsfmt.parse_vtd_register(
                    tree.text(f"{base}/intel-iommu/ecap"), where=tree.name(f"{base}/intel-iommu/ecap")
                ),
            }
            version = tree.optional_text(f"{base}/intel-iommu/version")
            if version is not None:
                regs["ver"] = sysfsfmt.parse_vtd_version(
                    version, where=tree.name(f"{base}/intel-iommu/version")
                )
            address = tree.optional_text(f"{base}/intel-iommu/address")
            found[name] = unitmod.vtd_unit(
                name,
                regs,
                address=None
                if address is None
                else parse_hex(address, where=tree.name(f"{base}/intel-iommu/address")),
                scalable_mode=sm.enabled,
            )
        elif tree.exists(f"{base}/amd-iommu"):
            rel = f"{base}/amd-iommu/features"
            feats = sysfsfmt.parse_amd_features(tree.text(rel), kernel=release, where=tree.name(rel))
            regs = {"efr": feats.efr} | ({} if feats.efr2 is None else {"efr2": feats.efr2})
            found[name] = unitmod.amd_unit(
                name, regs, kernel=kernel, notes=(f"features read as {feats.order}",)
            )
        elif name.startswith("smmu3."):
            found[name] = unitmod.smmuv3_unit(name, {})
        else:
            found[name] = IommuUnit(
                name, IommuType.UNKNOWN, {}, notes=("unknown IOMMU driver: no registers to decode",)
            )
    return found


def parse_reserved_regions(text: str, *, where: str) -> tuple[ReservedRegion, ...]:
    """``reserved_regions``: ``0x%016llx 0x%016llx %s`` per line, inclusive end."""
    regions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _RESV_LINE.fullmatch(line.strip())
        if match is None:
            raise InputError(f"line {number}: {line.strip()!r} is not 'START END TYPE' in hex", where=where)
        start, last, kind = int(match[1], 16), int(match[2], 16), match[3]
        if kind not in _RESV_TYPES:
            raise InputError(f"line {number}: unknown region type {kind!r}", where=where)
        if start > last:
            raise InputError(f"line {number}: start 0x{start:x} is above end 0x{last:x}", where=where)
        regions.append(ReservedRegion(start, last, _RESV_TYPES[kind]))
    return tuple(sorted(regions))


def _groups(tree: Tree) -> tuple[dict[int, IommuGroup], list[str]]:
    groups: dict[int, IommuGroup] = {}
    notes: list[str] = []
    for entry in tree.listdir("sys/kernel/iommu_groups", natural=True):
        base = f"sys/kernel/iommu_groups/{entry}"
        if not entry.isdigit():
            raise InputError("not an IOMMU group number", where=tree.name(base))
        text = tree.optional_text(f"{base}/reserved_regions")
        if text is None:
            notes.append(
                f"{tree.name(base)}/reserved_regions missing (kernel before 4.11): "
                "no reserved regions known, usable windows may be too wide"
            )
        kind = tree.optional_text(f"{base}/type")
        groups[int(entry)] = IommuGroup(
            number=int(entry),
            type=None if kind is None else kind.strip(),
            devices=tuple(tree.listdir(f"{base}/devices")),
            reserved_regions=()
            if text is None
            else parse_reserved_regions(text, where=tree.name(f"{base}/reserved_regions")),
        )
    return groups, notes


def _hex_attr(tree: Tree, rel: str, bits: int) -> int | None:
    text = tree.optional_text(rel)
    return None if text is None else parse_hex(text, bits=bits, where=tree.name(rel))


def _pci_info(tree: Tree, dev_rel: str) -> PciInfo:
    driver = tree.link_name(f"{dev_rel}/driver") if tree.exists(f"{dev_rel}/driver") else None
    return PciInfo(
        vendor=_hex_attr(tree, f"{dev_rel}/vendor", 16),
        device=_hex_attr(tree, f"{dev_rel}/device", 16),
        class_code=_hex_attr(tree, f"{dev_rel}/class", 24),
        driver=driver,
        pcie=tree.exists(f"{dev_rel}/max_link_speed"),
    )


def _secondary_express(tree: Tree, rel: str, pcie: bool) -> bool | None:
    """Whether the bridge at ``rel`` has a PCIe secondary bus; None when sysfs cannot tell.

    The PCIe port type is in config space beyond the first 64 bytes, which only root
    reads; without it, a bridge bound to ``pcieport`` is a root or switch port (portdrv
    binds nothing else), whose secondary bus is PCIe.
    """
    if not pcie:
        return False  # a conventional bridge has a conventional secondary bus
    try:
        config = tree.path(f"{rel}/config").read_bytes()
    except OSError:
        config = b""
    port_type = pcimod.pcie_port_type(config)
    if port_type is not None:
        return pcimod.secondary_is_express(port_type, pcie=True)
    if tree.exists(f"{rel}/driver") and tree.link_name(f"{rel}/driver") == "pcieport":
        return True
    return None


def _path_hops(tree: Tree, bdf: str) -> list[pcimod.Hop]:
    """Every PCI function from the root bus down to ``bdf`` (its directory chain under devices/)."""
    parts = tree.real_parts(f"sys/bus/pci/devices/{bdf}")
    hops = []
    for depth, part in enumerate(parts):
        if pcimod.BDF.fullmatch(part):
            rel = "/".join(parts[: depth + 1])
            pcie = tree.exists(f"{rel}/max_link_speed")
            express = _secondary_express(tree, rel, pcie) if part != bdf else None
            hops.append(pcimod.Hop(part, pcie, express))
    if not hops or hops[-1].bdf != bdf:
        raise InputError(
            f"link does not lead to a PCI device directory named {bdf}",
            where=tree.name(f"sys/bus/pci/devices/{bdf}"),
        )
    return hops


def read(root: str | Path = "/", *, label: str | None = None) -> HostInventory:
    """Discover from sysfs under ``root``; ``label`` names the root in errors (e.g. a tar file)."""
    tree = Tree(Path(root), label)
    release = kernel_release(tree)
    sm = scalable_mode(tree, release)
    units = _units(tree, sm, release)
    groups, notes = _groups(tree)
    devices, pci = [], {}
    for bdf in tree.listdir("sys/bus/pci/devices"):
        rel = f"sys/bus/pci/devices/{bdf}"
        pcimod.check_bdf(bdf, where=tree.name(rel))
        if not tree.exists(f"{rel}/iommu_group"):
            continue  # not behind an IOMMU: nothing to assign through VFIO
        group_name = tree.link_name(f"{rel}/iommu_group")
        if not group_name.isdigit() or int(group_name) not in groups:
            raise InputError(
                f"links to IOMMU group {group_name!r}, which does not exist",
                where=tree.name(f"{rel}/iommu_group"),
            )
        group = groups[int(group_name)]
        if bdf not in group.devices:
            raise InputError(
                f"{bdf} is not listed in its group's devices/ directory",
                where=tree.name(f"sys/kernel/iommu_groups/{group.number}/devices"),
            )
        unit_name = tree.link_name(f"{rel}/iommu")
        if unit_name not in units:
            raise InputError(
                f"links to IOMMU unit {unit_name!r}, which sys/class/iommu lacks",
                where=tree.name(f"{rel}/iommu"),
            )
        info = _pci_info(tree, rel)
        if pcimod.is_bridge(info.class_code):
            continue  # vfio-pci never binds bridges
        unit = units[unit_name]
        pci[bdf] = info
        devices.append(
            HostIOMMUDevice(
                bdf,
                device_caps(unit, group, alias=pcimod.dma_alias(_path_hops(tree, bdf))),
                HiodKind.LEGACY_VFIO,
            )
        )
        if any(r.type is ResvType.DIRECT for r in group.reserved_regions):
            notes.append(
                f"{bdf}: group {group.number} has a 'direct' (non-relaxable RMRR) region: "
                "the kernel refuses to give it to VFIO"
            )
    return HostInventory(
        backend="sysfs",
        reason="read-only sysfs view",
        skipped=(),
        machine=machine(tree, release),
        scalable_mode=sm,
        units=tuple(units.values()),
        groups=tuple(groups.values()),
        devices=tuple(devices),
        pci=pci,
        notes=tuple(notes),
    )


def device_caps(
    unit: IommuUnit, group: IommuGroup, *, alias: PciAlias, backend: str = "sysfs"
) -> HostIOMMUCaps:
    """The caps of a device behind ``unit`` in ``group``, derived without ioctls."""
    ranges = (
        ()
        if unit.aperture_bits is None
        else unitmod.usable_ranges(unit.aperture_bits, group.reserved_regions)
    )
    return HostIOMMUCaps(
        iommu_type=unit.iommu_type,
        registers=dict(unit.registers),
        iova_ranges=ranges,
        reserved_regions=group.reserved_regions,
        page_size_mask=unit.page_size_mask or 0,
        hw=HwCaps(
            dirty_tracking=bool(unit.dirty_tracking),
            max_pasid_log2=unit.pasid_bits or 0,
            nesting=unit.nesting,
        ),
        group=group.number,
        unit=unit.name,
        alias=alias,
        backend=backend,
    )


def iter_vfio_devices(inventory: HostInventory) -> Iterator[HostIOMMUDevice]:
    """The devices bound to vfio-pci, the only ones the ioctl backends open."""
    for dev in inventory.devices:
        if inventory.pci.get(dev.name, PciInfo()).driver == "vfio-pci":
            yield dev
