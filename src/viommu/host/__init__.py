"""Host IOMMU discovery: HostIOMMUDevice and its sysfs, VFIO, iommufd and snapshot backends."""
