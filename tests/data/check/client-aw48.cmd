qemu-system-x86_64 \
  -M q35 \
  -m 2048 \
  -cpu qemu64 \
  -device intel-iommu,intremap=on,caching-mode=on \
  -device vfio-pci,host=0000:02:00.0,id=hostdev0
