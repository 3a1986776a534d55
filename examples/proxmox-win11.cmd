/usr/bin/kvm \
  -id 101 \
  -name win11 \
  -nodefaults \
  -cpu host,+kvm_pv_eoi,+kvm_pv_unhalt \
  -m 8192 \
  -device 'intel-iommu,intremap=on,caching-mode=on' \
  -device 'vfio-pci,host=0000:02:00.0,id=hostpci0,bus=pcie.0,addr=0x10' \
  -machine 'type=q35+pve0,kernel-irqchip=split'
