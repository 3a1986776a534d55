qemu-system-x86_64 -M q35 -device vfio-pci,host=not-a-bdf
