"""Placeholder factory (intel-iommu only) until the virtio/smmuv3 models land."""

from __future__ import annotations

from viommu.errors import InputError
from viommu.models.base import VIOMMU, DeviceSpec, QemuVersion


def create(spec: DeviceSpec, version: QemuVersion, *, machine: str | None = None, irqchip: str | None = None,
           where: str | None = None) -> VIOMMU:
    if spec.driver == "intel-iommu":
        from viommu.models.intel import IntelIOMMU, Irqchip

        return IntelIOMMU(spec, version, machine=machine, irqchip=Irqchip(irqchip or "off"), where=where)
    raise InputError(f"vIOMMU {spec.driver!r} is not modelled", where=where)
