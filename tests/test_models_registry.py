"""The model factory: dispatch on the driver, one-line refusals for the rest."""

from __future__ import annotations

import pytest

from viommu.errors import InputError
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.models.registry import MODELS, create, import_all
from viommu.reasons import REASONS


def test_dispatch() -> None:
    dev = create(DeviceSpec.parse("intel-iommu,caching-mode=on"), QemuVersion(10, 0))
    assert isinstance(dev, IntelIOMMU)
    assert {type(create(DeviceSpec.parse(d), v)).__name__ for d, v in (
        ("virtio-iommu-pci", QemuVersion(10, 0)), ("arm-smmuv3,accel=on", QemuVersion(11, 0)))} == {
        "VirtioIOMMU", "SMMUv3"}


@pytest.mark.parametrize("driver", ["amd-iommu", "e1000", "intel_iommu"])
def test_other_drivers_are_input_errors(driver: str) -> None:
    with pytest.raises(InputError) as info:
        create(DeviceSpec.parse(driver), QemuVersion(10, 0), where="-device x")
    assert driver in str(info.value) and all(m in str(info.value) for m in MODELS)
    assert str(info.value).startswith("-device x: ")


def test_import_all_registers_every_models_codes() -> None:
    import_all()
    for code in ("aw-bits-exceeds-host", "page-size-incompatible", "frozen-granule-unsupported",
                 "aliased-bdf-unsupported", "smmu-auto-unresolved", "smmu-granule-mismatch"):
        assert code in REASONS
