"""The legacy-VFIO and iommufd backends: sysfs topology plus the kernel's own answers.

Only devices already bound to vfio-pci are probed (the others keep their
sysfs-derived caps, marked ``backend="sysfs"``). Where the kernel's answer
differs from the sysfs derivation, a note says so: that is how the lab run
checks the derivation against a real kernel.
"""

from __future__ import annotations

from viommu.host import units as unitmod
from viommu.host.caps import HostIOMMUCaps, HwCaps, IommuType, aw_bits_of
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.host.inventory import HostInventory, IommuUnit
from viommu.host.iommufd import probe_iommufd
from viommu.host.probes import IommufdProbe, LegacyProbe
from viommu.host.sysfs import iter_vfio_devices
from viommu.host.uapi.syscalls import SysOps
from viommu.host.vfio import probe_legacy
from viommu.record import replace

#: IOMMU_HW_CAP_DIRTY_TRACKING in ``out_capabilities``.
_HW_CAP_DIRTY_TRACKING = 1 << 0


def with_legacy(base: HostInventory, *, ops: SysOps, dev_root: str) -> HostInventory:
    """Probe each IOMMU group holding a vfio-pci device through a type1 container (once per group)."""
    probes: dict[int, LegacyProbe] = {}
    replaced: dict[str, HostIOMMUDevice] = {}
    notes = list(base.notes)
    for dev in iter_vfio_devices(base):
        group = dev.caps.group
        assert group is not None  # sysfs lists only devices with a group
        if group not in probes:
            probes[group] = probe_legacy(dev.name, group, dev_root=dev_root, ops=ops)
        probe = probes[group]
        caps = replace(
            dev.caps,
            iova_ranges=probe.iova_ranges,
            page_size_mask=dev.caps.page_size_mask if probe.iova_pgsizes is None else probe.iova_pgsizes,
            backend="vfio",
        )
        notes += _differences(dev, caps)
        if not probe.iova_ranges:
            notes.append(
                f"{dev.name}: the kernel has no IOVA_RANGE capability (before 5.4): QEMU sees aw-bits 64"
            )
        replaced[dev.name] = HostIOMMUDevice(dev.name, caps, HiodKind.LEGACY_VFIO)
    return _rebuild(base, "vfio", replaced, {}, notes)


def with_iommufd(
    base: HostInventory, *, sysfs_root: str, ops: SysOps, dev_root: str, probe_nesting: bool
) -> HostInventory:
    """Probe each vfio-pci device through its VFIO cdev and /dev/iommu."""
    replaced: dict[str, HostIOMMUDevice] = {}
    units: dict[str, IommuUnit] = {}
    notes = list(base.notes)
    for dev in iter_vfio_devices(base):
        probe = probe_iommufd(
            dev.name, sysfs_root=sysfs_root, dev_root=dev_root, ops=ops, probe_nesting=probe_nesting
        )
        unit = base.unit(dev.caps.unit) if dev.caps.unit is not None else None
        if unit is not None and not unit.registers and probe.registers and "idr0" in probe.registers:
            # SMMUv3: sysfs has no ID registers, GET_HW_INFO does: the unit becomes known.
            units[unit.name] = unitmod.smmuv3_unit(unit.name, probe.registers)
        caps = _iommufd_caps(dev.caps, probe)
        notes += _differences(dev, caps)
        if probe.attach_errno is not None:
            notes.append(
                f"{dev.name}: attaching to an IOAS failed (errno {probe.attach_errno}): "
                "QEMU's iommufd backend cannot use this device; no IOVA ranges"
            )
        replaced[dev.name] = HostIOMMUDevice(dev.name, caps, HiodKind.IOMMUFD)
    return _rebuild(base, "iommufd", replaced, units, notes)


def _iommufd_caps(caps: HostIOMMUCaps, probe: IommufdProbe) -> HostIOMMUCaps:
    kind = IommuType.from_code(probe.hw_info_type)
    return replace(
        caps,
        iommu_type=caps.iommu_type if kind is IommuType.UNKNOWN else kind,
        registers=dict(probe.registers) or dict(caps.registers),
        iova_ranges=probe.iova_ranges or (),
        iova_alignment=probe.iova_alignment,
        hw=HwCaps(
            dirty_tracking=bool(probe.capabilities & _HW_CAP_DIRTY_TRACKING),
            max_pasid_log2=probe.max_pasid_log2,
            nesting=probe.nesting,
            raw=probe.capabilities,
        ),
        vendor_flags=probe.vendor_flags,
        backend="iommufd",
    )


def _differences(before: HostIOMMUDevice, after: HostIOMMUCaps) -> list[str]:
    """Where the kernel disagrees with the sysfs derivation (an empty answer is not a disagreement)."""
    if not before.caps.iova_ranges or not after.iova_ranges or before.caps.iova_ranges == after.iova_ranges:
        return []
    return [
        f"{before.name}: the kernel's IOVA ranges differ from the sysfs derivation "
        f"(aw-bits {aw_bits_of(after.iova_ranges)} vs {aw_bits_of(before.caps.iova_ranges)})"
    ]


def _rebuild(
    base: HostInventory,
    backend: str,
    devices: dict[str, HostIOMMUDevice],
    units: dict[str, IommuUnit],
    notes: list[str],
) -> HostInventory:
    return replace(
        base,
        backend=backend,
        units=tuple(units.get(u.name, u) for u in base.units),
        devices=tuple(devices.get(d.name, d) for d in base.devices),
        notes=tuple(notes),
    )
