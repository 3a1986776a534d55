"""vIOMMU models (intel-iommu, virtio-iommu, arm-smmuv3 accel), faithful to QEMU."""
