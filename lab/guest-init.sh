#!/bin/sh
# PID 1 of the lab guest (L1). The root filesystem is L0's / over 9p, read-only;
# the guest's scratch space is a tmpfs on /dev/viommu-lab (not /tmp: the checkout
# under test may live in L0's /tmp, and a tmpfs there would hide it), with the
# results share mounted on /dev/viommu-lab/results. Binds every edu device to
# vfio-pci through driver_override, runs lab/guest_probe.py with L0's Python,
# then powers off. Everything it prints goes to the serial console.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LAB=/dev/viommu-lab
export HOME=$LAB TMPDIR=$LAB
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p $LAB
mount -t tmpfs tmpfs $LAB
mkdir -p $LAB/results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results $LAB/results
: > $LAB/results/booted
echo "lab-init: $(uname -r), cmdline: $(cat /proc/cmdline)"
for dev in /sys/bus/pci/devices/*; do
    if [ "$(cat "$dev/vendor")" = 0x1234 ] && [ "$(cat "$dev/device")" = 0x11e8 ]; then
        echo vfio-pci > "$dev/driver_override"
        echo "${dev##*/}" > /sys/bus/pci/drivers_probe
        echo "lab-init: ${dev##*/} -> $(basename "$(readlink "$dev/driver")")"
    fi
done
. $LAB/results/env.sh
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO/src" "$PYTHON" "$REPO/lab/guest_probe.py" $LAB/results \
    > $LAB/results/probe.log 2>&1
rc=$?
echo "lab-init: guest_probe exited $rc"
tail -n 40 $LAB/results/probe.log
echo "$rc" > $LAB/results/probe.rc
sync
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 30
