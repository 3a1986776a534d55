"""Front ends: ways into a VM's description (QEMU command lines, libvirt XML, a live QMP socket)."""
