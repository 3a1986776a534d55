"""iommufd discovery: what the kernel reports for one device bound through its VFIO cdev.

The probe binds the device's cdev to a fresh iommufd, reads
IOMMU_GET_HW_INFO, attaches the device to a new IOAS to read its usable IOVA
ranges, optionally tries a nesting-parent HWPT, and then destroys every
object it created, detaches, and closes everything. It never maps anything.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

from viommu.errors import HostAccessError, InputError
from viommu.host.caps import IovaRange
from viommu.host.probes import IommufdProbe
from viommu.host.uapi import iommufd as uapi
from viommu.host.uapi import vfio
from viommu.host.uapi.iommufd import HwInfoType, Request
from viommu.host.uapi.syscalls import IoctlFailed, Node, SysOps, open_node, undone

_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
_CDEV = re.compile(r"vfio[0-9]+")
_MAJOR_MINOR = re.compile(r"([0-9]+):([0-9]+)\n?")

#: Calls allowed while the kernel's answer keeps outgrowing the buffer offered
#: (the IOVA ranges can change between two calls if another device attaches).
_ATTEMPTS = 4

#: iommufd refuses a device whose MSIs the platform cannot isolate (at bind or,
#: on some kernels, at attach), unless told otherwise.
_UNSAFE_INTERRUPTS = {
    errno.EPERM: "no interrupt remapping, so MSIs cannot be isolated "
    "(iommufd.allow_unsafe_interrupts=1 overrides)"
}

#: The largest vendor payload this mirror knows (SMMUv3); the kernel says if it has more.
_PAYLOAD_GUESS = max(
    ctypes.sizeof(uapi.iommu_hw_info_vtd),
    ctypes.sizeof(uapi.iommu_hw_info_arm_smmuv3),
    ctypes.sizeof(uapi.iommu_hw_info_amd),
)


def probe_iommufd(
    bdf: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev", ops: SysOps, probe_nesting: bool = True
) -> IommufdProbe:
    """Probe PCI device ``bdf`` (bound to vfio-pci) through its VFIO cdev and /dev/iommu.

    Raises :class:`InputError` for a malformed ``bdf`` or sysfs ``dev`` file and
    :class:`HostAccessError` (one line naming the ioctl, node, device and
    errno) when the host cannot be read.
    """
    if not _BDF.fullmatch(bdf):
        raise InputError(f"bad PCI address {bdf!r}: expected DDDD:BB:DD.F in lower-case hex")
    cdev, rdev = _find_cdev(bdf, Path(sysfs_root))
    iommu_why = {errno.ENOENT: f"kernel lacks iommufd (CONFIG_IOMMUFD): {dev_root}/iommu does not exist"}
    cdev_path = f"{dev_root}/vfio/devices/{cdev}"
    cdev_why = {
        errno.ENOENT: "kernel lacks the VFIO device cdev (Linux 6.6+ with CONFIG_VFIO_DEVICE_CDEV): "
        f"{cdev_path} does not exist"
    }
    # /dev/iommu first, so the device fd closes (unbinds) before the iommufd does.
    with (
        open_node(ops, f"{dev_root}/iommu", bdf, why=iommu_why) as iommufd,
        open_node(ops, cdev_path, bdf, why=cdev_why) as device,
    ):
        _check_node(device, rdev)
        dev_id = _bind(device, iommufd)
        hw_info, payload = _get_hw_info(iommufd, dev_id)
        ioas = _alloc_ioas(iommufd)
        with undone(lambda: _destroy(iommufd, ioas)):
            attach_errno, ranges, alignment = _attached_ranges(device, iommufd, ioas)
            nesting = _nest_parent(iommufd, dev_id, ioas) if probe_nesting else None
    registers, vendor_flags = _vendor_registers(hw_info.out_data_type, payload)
    return IommufdProbe(
        hw_info_type=hw_info.out_data_type,
        registers=registers,
        vendor_flags=vendor_flags,
        capabilities=hw_info.out_capabilities,
        max_pasid_log2=hw_info.out_max_pasid_log2,
        iova_ranges=ranges,
        iova_alignment=alignment,
        nesting=nesting,
        attach_errno=attach_errno,
    )


def _find_cdev(bdf: str, sysfs_root: Path) -> tuple[str, int]:
    """The device's ``vfioN`` cdev name and its ``dev`` number, from sysfs."""
    dev_dir = sysfs_root / "bus/pci/devices" / bdf
    if not dev_dir.is_dir():
        raise HostAccessError(f"no PCI device {bdf} under {dev_dir.parent}", where=bdf)
    vfio_dev = dev_dir / "vfio-dev"
    try:
        names = sorted(entry.name for entry in vfio_dev.iterdir() if _CDEV.fullmatch(entry.name))
    except FileNotFoundError:
        raise HostAccessError(
            f"{vfio_dev} does not exist: the device is not bound to vfio-pci, "
            "or the kernel predates the VFIO device cdev (Linux 6.6)",
            where=bdf,
            errno=errno.ENOENT,
        ) from None
    except OSError as exc:
        raise HostAccessError(f"cannot list {vfio_dev}: {exc.strerror}", where=bdf, errno=exc.errno) from None
    if len(names) != 1:
        raise HostAccessError(f"{vfio_dev} holds {len(names)} vfioN entries, expected one", where=bdf)
    dev_file = vfio_dev / names[0] / "dev"
    try:
        text = dev_file.read_text()
    except OSError as exc:
        raise HostAccessError(f"cannot read {dev_file}: {exc.strerror}", where=bdf, errno=exc.errno) from None
    match = _MAJOR_MINOR.fullmatch(text)
    if match is None:
        raise InputError(f"expected MAJOR:MINOR, found {text.strip()!r}", where=str(dev_file))
    return names[0], os.makedev(int(match[1]), int(match[2]))


def _check_node(device: Node, rdev: int) -> None:
    st = device.fstat()
    if not st.is_char_device or st.rdev != rdev:
        found = f"{os.major(st.rdev)}:{os.minor(st.rdev)}" if st.is_char_device else "not a char device"
        raise HostAccessError(
            f"{device.path} is not the device sysfs names "
            f"({found}, sysfs says {os.major(rdev)}:{os.minor(rdev)})",
            where=device.subject,
        )


def _bind(device: Node, iommufd: Node) -> int:
    # argsz 16 (the v6.6 struct): no VF token, accepted by every kernel with the cdev.
    bind = vfio.vfio_device_bind_iommufd(argsz=vfio.BIND_IOMMUFD_MIN_SIZE, iommufd=iommufd.fd)
    device.ioctl(
        vfio.Request.VFIO_DEVICE_BIND_IOMMUFD,
        bind,
        why={
            errno.ENOTTY: "the kernel lacks this ioctl (Linux 6.6+ with CONFIG_VFIO_DEVICE_CDEV)",
            errno.EBUSY: "the device is in use through its legacy VFIO group (by QEMU?)",
            errno.EINVAL: "the device is already open through its cdev (by QEMU?), "
            "or its IOMMU cannot enforce cache coherency",
            **_UNSAFE_INTERRUPTS,
        },
    )
    return int(bind.out_devid)


def _get_hw_info(iommufd: Node, dev_id: int) -> tuple[uapi.iommu_hw_info, bytes]:
    """IOMMU_GET_HW_INFO, negotiating the struct size and the vendor payload length."""
    size = ctypes.sizeof(uapi.iommu_hw_info)
    data_len = _PAYLOAD_GUESS
    for _ in range(_ATTEMPTS):
        payload = (ctypes.c_uint8 * data_len)()
        cmd = uapi.iommu_hw_info(
            size=size, dev_id=dev_id, data_len=data_len, data_uptr=ctypes.addressof(payload)
        )
        try:
            iommufd.ioctl(
                Request.IOMMU_GET_HW_INFO, cmd, why={errno.ENOTTY: "the kernel lacks this ioctl (Linux 6.6+)"}
            )
        except IoctlFailed as exc:
            # Defensive: v6.6 (32 bytes) accepts 40 with a zero tail, but a
            # kernel that refuses it still answers the original layout.
            if size > uapi.HW_INFO_MIN_SIZE and exc.errno in (errno.EINVAL, errno.E2BIG):
                size = uapi.HW_INFO_MIN_SIZE
                continue
            raise
        if cmd.data_len <= data_len:
            return cmd, bytes(payload)
        data_len = cmd.data_len
    raise HostAccessError(
        f"IOMMU_GET_HW_INFO on {iommufd.path} kept reporting a larger payload ({data_len} bytes)",
        where=iommufd.subject,
    )


def _vendor_registers(kind: int, payload: bytes) -> tuple[dict[str, int], int]:
    """Registers by name and the vendor flags word, decoded by ``out_data_type``."""
    if kind == HwInfoType.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        vtd = uapi.iommu_hw_info_vtd.from_buffer_copy(_padded(payload, uapi.iommu_hw_info_vtd))
        return {"cap": vtd.cap_reg, "ecap": vtd.ecap_reg}, vtd.flags
    if kind == HwInfoType.IOMMU_HW_INFO_TYPE_ARM_SMMUV3:
        smmu = uapi.iommu_hw_info_arm_smmuv3.from_buffer_copy(_padded(payload, uapi.iommu_hw_info_arm_smmuv3))
        registers = {f"idr{i}": smmu.idr[i] for i in range(6)}
        registers.update(iidr=smmu.iidr, aidr=smmu.aidr)
        return registers, smmu.flags
    if kind == HwInfoType.IOMMU_HW_INFO_TYPE_AMD:
        amd = uapi.iommu_hw_info_amd.from_buffer_copy(_padded(payload, uapi.iommu_hw_info_amd))
        return {"efr": amd.efr, "efr2": amd.efr2}, 0
    return {}, 0


def _padded(payload: bytes, struct: type[ctypes.Structure]) -> bytes:
    # The kernel zero-fills what it does not have; an older, shorter payload reads as zeros too.
    return payload.ljust(ctypes.sizeof(struct), b"\0")


def _alloc_ioas(iommufd: Node) -> int:
    cmd = uapi.iommu_ioas_alloc(size=ctypes.sizeof(uapi.iommu_ioas_alloc))
    iommufd.ioctl(Request.IOMMU_IOAS_ALLOC, cmd)
    return int(cmd.out_ioas_id)


def _destroy(iommufd: Node, object_id: int) -> None:
    cmd = uapi.iommu_destroy(size=ctypes.sizeof(uapi.iommu_destroy), id=object_id)
    iommufd.ioctl(Request.IOMMU_DESTROY, cmd)


def _attached_ranges(
    device: Node, iommufd: Node, ioas: int
) -> tuple[int | None, tuple[IovaRange, ...] | None, int | None]:
    """(attach errno, IOVA ranges, alignment) of ``ioas`` with the device attached."""
    attach = vfio.vfio_device_attach_iommufd_pt(argsz=vfio.ATTACH_PT_MIN_SIZE, pt_id=ioas)
    try:
        device.ioctl(vfio.Request.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach, why=_UNSAFE_INTERRUPTS)
    except IoctlFailed as exc:
        # EINVAL: no domain of this IOAS's kind fits the unit (e.g. a scalable-mode
        # VT-d unit offering first-stage tables only). A fact to report, not a failure.
        if exc.errno == errno.EINVAL:
            return exc.errno, None, None
        raise
    detach = vfio.vfio_device_detach_iommufd_pt(argsz=vfio.DETACH_PT_MIN_SIZE)
    with undone(lambda: device.ioctl(vfio.Request.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach)):
        ranges, alignment = _iova_ranges(iommufd, ioas)
    return None, ranges, alignment


def _iova_ranges(iommufd: Node, ioas: int) -> tuple[tuple[IovaRange, ...], int]:
    """IOMMU_IOAS_IOVA_RANGES: ask with no room, then with the count the kernel reports."""
    capacity = 0
    for _ in range(_ATTEMPTS):
        array = (uapi.iommu_iova_range * capacity)()
        cmd = uapi.iommu_ioas_iova_ranges(
            size=ctypes.sizeof(uapi.iommu_ioas_iova_ranges),
            ioas_id=ioas,
            num_iovas=capacity,
            allowed_iovas=ctypes.addressof(array) if capacity else 0,
        )
        try:
            iommufd.ioctl(Request.IOMMU_IOAS_IOVA_RANGES, cmd)
        except IoctlFailed as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            # The kernel wrote the struct back before failing: num_iovas is the count it has now.
            capacity = cmd.num_iovas
            continue
        ranges = []
        for entry in array[: cmd.num_iovas]:
            if entry.start > entry.last:
                raise HostAccessError(
                    f"IOMMU_IOAS_IOVA_RANGES returned an empty range 0x{entry.start:x}-0x{entry.last:x}",
                    where=iommufd.subject,
                )
            ranges.append(IovaRange(entry.start, entry.last))
        return tuple(sorted(ranges)), int(cmd.out_iova_alignment)
    raise HostAccessError(
        f"IOMMU_IOAS_IOVA_RANGES on {iommufd.path} kept reporting more ranges than offered "
        f"({_ATTEMPTS} attempts, last count {capacity})",
        where=iommufd.subject,
    )


def _nest_parent(iommufd: Node, dev_id: int, ioas: int) -> bool:
    """Whether the unit can allocate a nesting-parent HWPT for this device (EOPNOTSUPP: no)."""
    cmd = uapi.iommu_hwpt_alloc(
        size=ctypes.sizeof(uapi.iommu_hwpt_alloc),
        flags=uapi.IOMMU_HWPT_ALLOC_NEST_PARENT,
        dev_id=dev_id,
        pt_id=ioas,
        data_type=uapi.IOMMU_HWPT_DATA_NONE,
    )
    try:
        iommufd.ioctl(Request.IOMMU_HWPT_ALLOC, cmd)
    except IoctlFailed as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return False
        raise
    _destroy(iommufd, cmd.out_hwpt_id)
    return True
