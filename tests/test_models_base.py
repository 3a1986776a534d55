"""DeviceSpec parsing follows QEMU's option syntax (observed on qemu-system-x86_64 10.0.2)."""

from viommu.models.base import DeviceSpec, QemuVersion


def test_short_form_booleans() -> None:
    # QEMU 10.0.2: "-device intel-iommu,nocaching-mode" gives CAP ...0606 (CM clear),
    # "-device intel-iommu,caching-mode" gives ...0686 (CM set); both warn "deprecated".
    assert DeviceSpec.parse("intel-iommu,nocaching-mode").props == {"caching-mode": "off"}
    assert DeviceSpec.parse("intel-iommu,caching-mode").props == {"caching-mode": "on"}


def test_escaped_comma_and_driver_key() -> None:
    spec = DeviceSpec.parse("driver=virtio-iommu-pci,id=a,,b")
    assert spec.driver == "virtio-iommu-pci"
    assert spec.props == {"id": "a,b"}
    assert str(spec) == "virtio-iommu-pci,id=a,,b"


def test_version_order() -> None:
    assert QemuVersion.parse("10.0") < QemuVersion.parse("10.2") < QemuVersion.parse("11.0.3")
