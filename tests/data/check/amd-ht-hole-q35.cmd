qemu-system-x86_64 \
  -M q35 \
  -m 1024G \
  -cpu EPYC,phys-bits=48 \
  -device vfio-pci,host=0000:41:00.1,id=nic0
