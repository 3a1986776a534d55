qemu-system-x86_64 \
  -M q35 \
  -m 1024 \
  -cpu qemu64,phys-bits=35
