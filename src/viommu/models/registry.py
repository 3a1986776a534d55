"""Build the vIOMMU model a ``-device`` string names.

``amd-iommu`` exists in QEMU but has no ``set_iommu_device`` (brief §5.3,
item 2: it accepts every host device silently); it is not modelled, and
asking for it is an input error that says so.
"""

from __future__ import annotations

from viommu.errors import InputError
from viommu.models.base import VIOMMU, DeviceSpec, QemuVersion

#: Driver names create() knows, in the order they are documented.
MODELS: tuple[str, ...] = ("intel-iommu", "virtio-iommu-pci", "arm-smmuv3")
_MODULES = ("viommu.models.intel", "viommu.models.virtio", "viommu.models.smmuv3")


def create(
    spec: DeviceSpec,
    version: QemuVersion,
    *,
    machine: str | None = None,
    irqchip: object | None = None,
    where: str | None = None,
) -> VIOMMU:
    """The model for ``spec.driver``; unknown drivers raise InputError naming the known ones.

    ``irqchip`` (an :class:`viommu.models.intel.Irqchip`) only matters to intel-iommu.
    """
    driver = spec.driver
    if driver == "intel-iommu":
        from viommu.models.intel import IntelIOMMU, Irqchip

        if irqchip is None:
            irqchip = Irqchip.USERSPACE
        elif isinstance(irqchip, str) and irqchip in {m.value for m in Irqchip}:
            irqchip = Irqchip(irqchip)
        if not isinstance(irqchip, Irqchip):
            raise InputError(f"irqchip {irqchip!r} is not one of off, split, on", where=where)
        return IntelIOMMU(spec, version, machine=machine, irqchip=irqchip, where=where)
    if driver in ("virtio-iommu-pci", "virtio-iommu-device"):
        from viommu.models.virtio import VirtioIOMMU

        return VirtioIOMMU(spec, version, machine=machine, where=where)
    if driver == "arm-smmuv3":
        from viommu.models.smmuv3 import SMMUv3

        return SMMUv3(spec, version, machine=machine, where=where)
    if driver == "amd-iommu":
        raise InputError(
            "amd-iommu is not modelled: QEMU's amd-iommu has no set_iommu_device and accepts every "
            f"host device unchecked; known vIOMMUs: {', '.join(MODELS)}",
            where=where,
        )
    raise InputError(
        f"'{driver}' is not a vIOMMU that viommu models; known: {', '.join(MODELS)}", where=where
    )


def import_all() -> None:
    """Import every model module so that all their reason codes are registered."""
    import importlib

    for name in _MODULES:
        importlib.import_module(name)
