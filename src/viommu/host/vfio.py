"""Legacy VFIO discovery: what a type1 container reports for one IOMMU group.

The probe opens a fresh container, attaches the group, selects type1, reads
VFIO_IOMMU_GET_INFO and its capability chain, then detaches the group and
closes everything. It never maps anything and leaves the host as it found it.
"""

from __future__ import annotations

import ctypes
import errno
from contextlib import AbstractContextManager

from viommu.errors import HostAccessError
from viommu.host.caps import IovaRange
from viommu.host.probes import LegacyProbe
from viommu.host.uapi import vfio
from viommu.host.uapi.syscalls import Node, SysOps, open_node, undone
from viommu.host.uapi.vfio import Extension, Request

#: GET_INFO re-calls allowed while the kernel keeps asking for a larger buffer
#: (the caps can grow between calls if another group joins the container).
_INFO_ATTEMPTS = 4

#: type1 refuses a group whose MSIs the platform cannot isolate, unless told otherwise.
_UNSAFE_INTERRUPTS = {
    errno.EPERM: "no interrupt remapping, so MSIs cannot be isolated "
    "(vfio_iommu_type1.allow_unsafe_interrupts=1 overrides)"
}

_HEADER = ctypes.sizeof(vfio.vfio_info_cap_header)
_INFO = ctypes.sizeof(vfio.vfio_iommu_type1_info)


def probe_legacy(bdf: str, group: int, *, dev_root: str = "/dev", ops: SysOps) -> LegacyProbe:
    """Probe IOMMU group ``group`` (the group of PCI device ``bdf``) through a type1 container.

    ``bdf`` only names the device in errors. Raises :class:`HostAccessError`
    (one line naming the ioctl, node, device and errno) when the host cannot
    be read: no VFIO, permission, a no-IOMMU group, a group in use or not
    viable, a kernel error.
    """
    vfio_dir = f"{dev_root}/vfio"
    container_why = {errno.ENOENT: f"kernel lacks the VFIO container: {vfio_dir}/vfio does not exist"}
    with open_node(ops, f"{vfio_dir}/vfio", bdf, why=container_why) as container:
        version = container.ioctl(Request.VFIO_GET_API_VERSION)
        if version != vfio.VFIO_API_VERSION:
            raise HostAccessError(
                f"{container.path} speaks VFIO API version {version}, expected {vfio.VFIO_API_VERSION}",
                where=bdf,
            )
        iommu_type = _type1_flavour(container)
        with _open_group(ops, vfio_dir, group, bdf) as group_node:
            _require_unused_viable(group_node, group)
            group_node.ioctl(
                Request.VFIO_GROUP_SET_CONTAINER,
                ctypes.c_int32(container.fd),
                why={errno.EBUSY: "a device of the group is in use through its VFIO cdev (by QEMU?)"},
            )
            with undone(lambda: group_node.ioctl(Request.VFIO_GROUP_UNSET_CONTAINER)):
                container.ioctl(Request.VFIO_SET_IOMMU, iommu_type, why=_UNSAFE_INTERRUPTS)
                info = _get_info(container)
                # Asked after SET_IOMMU: only then does type1 itself answer, and
                # DMA_CC reflects the domains of this group.
                extensions = tuple(
                    int(ext) for ext in Extension if container.ioctl(Request.VFIO_CHECK_EXTENSION, ext) > 0
                )
    return _decode_info(info, extensions, container_path=f"{vfio_dir}/vfio", where=bdf)


def _type1_flavour(container: Node) -> int:
    for flavour in (Extension.VFIO_TYPE1v2_IOMMU, Extension.VFIO_TYPE1_IOMMU):
        if container.ioctl(Request.VFIO_CHECK_EXTENSION, flavour) > 0:
            return int(flavour)
    raise HostAccessError(
        f"{container.path} offers no type1 IOMMU backend (is vfio_iommu_type1 loaded?)",
        where=container.subject,
    )


def _open_group(ops: SysOps, vfio_dir: str, group: int, bdf: str) -> AbstractContextManager[Node]:
    path = f"{vfio_dir}/{group}"
    noiommu = f"{vfio_dir}/noiommu-{group}"
    if not ops.exists(path) and ops.exists(noiommu):
        raise HostAccessError(
            f"IOMMU group {group} is a no-IOMMU group ({noiommu}): there is no IOMMU to discover",
            where=bdf,
            errno=errno.ENOENT,
        )
    why = {
        errno.ENOENT: f"{path} does not exist: bind every device of IOMMU group {group} to vfio-pci",
        errno.EBUSY: f"IOMMU group {group} is in use: {path} is open in another process (QEMU?)",
    }
    return open_node(ops, path, bdf, why=why)


def _require_unused_viable(group_node: Node, group: int) -> None:
    status = vfio.vfio_group_status(argsz=ctypes.sizeof(vfio.vfio_group_status))
    group_node.ioctl(Request.VFIO_GROUP_GET_STATUS, status)
    if status.flags & vfio.VFIO_GROUP_FLAGS_CONTAINER_SET:
        raise HostAccessError(
            f"IOMMU group {group} already belongs to a container: it is in use by another process",
            where=group_node.subject,
            errno=errno.EBUSY,
        )
    if not status.flags & vfio.VFIO_GROUP_FLAGS_VIABLE:
        raise HostAccessError(
            f"IOMMU group {group} is not viable: bind every device in it to vfio-pci or leave it driverless",
            where=group_node.subject,
        )


def _get_info(container: Node) -> bytearray:
    """VFIO_IOMMU_GET_INFO with argsz growth: 24 bytes first, then whatever the kernel asks for."""
    size = _INFO
    for _ in range(_INFO_ATTEMPTS):
        buf = bytearray(size)
        vfio.vfio_iommu_type1_info.from_buffer(buf).argsz = size
        container.ioctl(Request.VFIO_IOMMU_GET_INFO, buf)
        wanted = vfio.vfio_iommu_type1_info.from_buffer_copy(buf).argsz
        # Kernels before v5.4 copy back only 16 bytes and never raise argsz.
        if wanted <= size:
            return buf
        size = wanted
    raise HostAccessError(
        f"VFIO_IOMMU_GET_INFO on {container.path} kept asking for a larger buffer ({size} bytes)",
        where=container.subject,
    )


def _decode_info(
    buf: bytearray, extensions: tuple[int, ...], *, container_path: str, where: str
) -> LegacyProbe:
    info = vfio.vfio_iommu_type1_info.from_buffer_copy(buf)
    caps = _walk_caps(buf, info, container_path=container_path, where=where)
    ranges: tuple[IovaRange, ...] = ()
    if vfio.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE in caps:
        ranges = _iova_ranges(buf, caps[vfio.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE], where=where)
    migration = None
    if vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION in caps:
        mig = vfio.vfio_iommu_type1_info_cap_migration.from_buffer_copy(
            buf, caps[vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION]
        )
        migration = (mig.flags, mig.pgsize_bitmap, mig.max_dirty_bitmap_size)
    dma_avail = None
    if vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL in caps:
        dma_avail = vfio.vfio_iommu_type1_info_dma_avail.from_buffer_copy(
            buf, caps[vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL]
        ).avail
    return LegacyProbe(
        iova_ranges=ranges,
        iova_pgsizes=info.iova_pgsizes if info.flags & vfio.VFIO_IOMMU_INFO_PGSIZES else None,
        dma_avail=dma_avail,
        migration=migration,
        dma_cc=Extension.VFIO_DMA_CC_IOMMU in extensions,
        extensions=extensions,
    )


#: The size each known capability needs inside the buffer (the IOVA ranges follow their header).
_CAP_SIZES = {
    vfio.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: ctypes.sizeof(vfio.vfio_iommu_type1_info_cap_iova_range),
    vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: ctypes.sizeof(vfio.vfio_iommu_type1_info_cap_migration),
    vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: ctypes.sizeof(vfio.vfio_iommu_type1_info_dma_avail),
}


def _walk_caps(
    buf: bytearray, info: vfio.vfio_iommu_type1_info, *, container_path: str, where: str
) -> dict[int, int]:
    """Offsets of the capabilities by id, following ``next``; the order is the kernel's business."""
    if not info.flags & vfio.VFIO_IOMMU_INFO_CAPS:
        return {}
    found: dict[int, int] = {}
    seen: set[int] = set()
    offset = info.cap_offset
    while offset:
        if offset in seen or offset < _INFO or offset + _HEADER > len(buf):
            raise HostAccessError(
                f"VFIO_IOMMU_GET_INFO on {container_path} returned a malformed capability chain "
                f"(offset {offset} in a {len(buf)}-byte buffer{', a loop' if offset in seen else ''})",
                where=where,
            )
        seen.add(offset)
        header = vfio.vfio_info_cap_header.from_buffer_copy(buf, offset)
        need = _CAP_SIZES.get(header.id)
        if need is not None:
            if offset + need > len(buf):
                raise HostAccessError(
                    f"VFIO_IOMMU_GET_INFO on {container_path} returned capability {header.id} "
                    f"overrunning the buffer (offset {offset}, {need} bytes, buffer {len(buf)})",
                    where=where,
                )
            found.setdefault(header.id, offset)
        offset = header.next
    return found


def _iova_ranges(buf: bytearray, offset: int, *, where: str) -> tuple[IovaRange, ...]:
    cap = vfio.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, offset)
    first = offset + ctypes.sizeof(cap)
    step = ctypes.sizeof(vfio.vfio_iova_range)
    if first + cap.nr_iovas * step > len(buf):
        raise HostAccessError(
            f"VFIO_IOMMU_GET_INFO returned {cap.nr_iovas} IOVA ranges overrunning the {len(buf)}-byte buffer",
            where=where,
        )
    ranges = []
    for i in range(cap.nr_iovas):
        entry = vfio.vfio_iova_range.from_buffer_copy(buf, first + i * step)
        if entry.start > entry.end:
            raise HostAccessError(
                f"VFIO_IOMMU_GET_INFO returned an empty IOVA range 0x{entry.start:x}-0x{entry.end:x}",
                where=where,
            )
        ranges.append(IovaRange(entry.start, entry.end))
    return tuple(sorted(ranges))
