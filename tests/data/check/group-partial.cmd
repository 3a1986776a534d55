qemu-system-x86_64 \
  -M q35 \
  -m 4096 \
  -device vfio-pci,host=0000:05:00.1,id=gpu-audio
