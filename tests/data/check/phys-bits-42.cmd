qemu-system-x86_64 \
  -M q35 \
  -m 4096 \
  -cpu qemu64,phys-bits=42 \
  -device intel-iommu,intremap=on,caching-mode=on,aw-bits=39 \
  -device vfio-pci,host=0000:02:00.0,id=hostdev0
