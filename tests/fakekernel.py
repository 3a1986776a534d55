"""A fake Linux kernel behind the ``SysOps`` interface, for the VFIO and iommufd probes.

It models the kernel semantics of the uapi brief (linux-uapi.md §2-3), per
kernel version, independently of the ctypes mirrors under test: every user
struct is read and written with :mod:`struct` formats written from the
brief's offset tables. Modelled:

* VFIO container/group: API version, CHECK_EXTENSION before and after
  SET_IOMMU, one opener per group (EBUSY), GET_STATUS, SET/UNSET_CONTAINER,
  VFIO_IOMMU_GET_INFO with minsz 16, argsz growth, ``cap_offset`` only from
  v5.4, and the capability chain in the kernel's order (type1: MIGRATION ->
  DMA_AVAIL -> IOVA_RANGE; iommufd's compat container: IOVA_RANGE -> DMA_AVAIL),
  each cap 8-byte aligned, ``next`` relative to the buffer start;
* the VFIO cdev: BIND (minsz 16, EBUSY when the group is open through the
  legacy path), ATTACH/DETACH (auto-created HWPT), nothing else before bind;
* iommufd: per-ioctl ``min_size`` (EINVAL), ``copy_struct_from_user`` (E2BIG
  for a non-zero tail the kernel does not know), reserved fields and unknown
  flags (EOPNOTSUPP), the write-back of ``min(user size, kernel size)``
  bytes, EMSGSIZE with ``num_iovas`` written back, GET_HW_INFO's data_len
  protocol (copy ``min``, zero-fill, report the kernel's length), object ids
  and EBUSY/ENOENT on DESTROY.

Tests inject failures at the boundary (:meth:`FakeKernel.fail`), mutate the
host between calls (:attr:`FakeKernel.before`), corrupt replies
(:attr:`FakeKernel.after`), and check that every probe left nothing behind
(:meth:`FakeKernel.assert_clean`): no open fd, no group left in a container,
no device left attached, no iommufd object left for the fd's close to reap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viommu.host.uapi.syscalls import IoctlArg, NodeStat, SysOps

U64_MAX = (1 << 64) - 1
Version = tuple[int, int]


def _io(nr: int) -> int:
    return (0x3B << 8) | nr  # _IO(';', nr), §1.1


# Request numbers from the brief's tables (§3.2, §2.2), not from the mirrors.
REQUESTS = {
    _io(100): "VFIO_GET_API_VERSION",
    _io(101): "VFIO_CHECK_EXTENSION",
    _io(102): "VFIO_SET_IOMMU",
    _io(103): "VFIO_GROUP_GET_STATUS",
    _io(104): "VFIO_GROUP_SET_CONTAINER",
    _io(105): "VFIO_GROUP_UNSET_CONTAINER",
    _io(112): "VFIO_IOMMU_GET_INFO",
    _io(113): "VFIO_IOMMU_MAP_DMA",
    _io(114): "VFIO_IOMMU_UNMAP_DMA",
    _io(118): "VFIO_DEVICE_BIND_IOMMUFD",
    _io(119): "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    _io(120): "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    0x3B80: "IOMMU_DESTROY",
    0x3B81: "IOMMU_IOAS_ALLOC",
    0x3B84: "IOMMU_IOAS_IOVA_RANGES",
    0x3B85: "IOMMU_IOAS_MAP",
    0x3B89: "IOMMU_HWPT_ALLOC",
    0x3B8A: "IOMMU_GET_HW_INFO",
}

# Feature dates (linux-uapi.md §2.2, §2.3, §3.3, §3.4).
TYPE1_CAP_OFFSET = (5, 4)  # 24-byte info, IOVA_RANGE cap
TYPE1_MIGRATION = (5, 8)
TYPE1_DMA_AVAIL = (5, 10)
TYPE1_UNMAP_ALL = (5, 12)
VFIO_DEV_SYSFS = (6, 1)
IOMMUFD = (6, 2)
CDEV = (6, 6)  # also GET_HW_INFO (32 bytes) and HWPT_ALLOC (24 bytes, flags 0)
HW_INFO_40 = (6, 7)  # out_capabilities; HWPT_ALLOC 40 with NEST_PARENT/DIRTY_TRACKING; VT-d errata flag
HWPT_48 = (6, 11)
SMMUV3_HW_INFO = (6, 13)
PASID = (6, 15)  # out_max_pasid_log2; attach/detach PASID flag; HWPT_ALLOC_PASID
INPUT_TYPE = (6, 17)  # GET_HW_INFO flag; BIND token flag
AMD_HW_INFO = (6, 19)

HW_INFO_TYPE_VTD, HW_INFO_TYPE_SMMUV3, HW_INFO_TYPE_AMD = 1, 2, 4
HWPT_NEST_PARENT, HWPT_DIRTY, HWPT_FAULT_ID, HWPT_PASID = 1, 2, 4, 8
VTD_ERRATA = 1


def vtd_payload(cap: int, ecap: int, flags: int = VTD_ERRATA) -> bytes:
    """``struct iommu_hw_info_vtd``: flags @0, reserved @4, cap_reg @8, ecap_reg @16."""
    return struct.pack("<IIQQ", flags, 0, cap, ecap)


def smmuv3_payload(idr: tuple[int, ...], iidr: int, aidr: int, flags: int = 0) -> bytes:
    """``struct iommu_hw_info_arm_smmuv3``: flags, reserved, idr[6] @8, iidr @32, aidr @36."""
    return struct.pack("<II6III", flags, 0, *idr, iidr, aidr)


def amd_payload(efr: int, efr2: int) -> bytes:
    """``struct iommu_hw_info_amd``: efr @0, efr2 @8."""
    return struct.pack("<QQ", efr, efr2)


@dataclass
class FakeIommu:
    """The host IOMMU behind a device, as the kernel reports it."""

    hw_info_type: int = HW_INFO_TYPE_VTD
    payload: bytes = field(default_factory=lambda: vtd_payload(0xD2008C40660462, 0xF050DA))
    capabilities: int = 0
    max_pasid_log2: int = 0
    #: Usable IOVA windows (inclusive) of a paging domain, with reserved regions cut out.
    usable: list[tuple[int, int]] = field(
        default_factory=lambda: [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)]
    )
    pgsizes: int = 0x40201000
    iova_alignment: int = 0x1000
    nesting: bool = False
    dirty_tracking: bool = False
    #: errno of VFIO_DEVICE_ATTACH_IOMMUFD_PT (EINVAL on a first-stage-only scalable-mode unit).
    attach_errno: int | None = None
    dma_cc: bool = True


@dataclass
class FakeDevice:
    bdf: str
    group: int
    iommu: FakeIommu = field(default_factory=FakeIommu)
    cdev: int = 0
    major: int = 511
    #: Bound through its cdev by another process: BIND answers EINVAL.
    cdev_in_use: bool = False


@dataclass
class FakeGroup:
    number: int
    viable: bool = True
    noiommu: bool = False
    #: Open in another process: opening /dev/vfio/N answers EBUSY.
    busy: bool = False
    #: GET_STATUS reports CONTAINER_SET (a group fd shared with another container user).
    container_set_elsewhere: bool = False


@dataclass
class _Container:
    iommu_type: int | None = None
    groups: list[int] = field(default_factory=list)


@dataclass
class _Group:
    number: int
    container: _Container | None = None


@dataclass
class _Object:
    kind: str  # "ioas", "hwpt", "auto-hwpt", "device"
    ioas: int | None = None


@dataclass
class _Ctx:
    objects: dict[int, _Object] = field(default_factory=dict)
    next_id: int = 1
    fd_open: bool = True
    bound: int = 0

    def add(self, obj: _Object) -> int:
        oid = self.next_id
        self.next_id += 1
        self.objects[oid] = obj
        return oid


@dataclass
class _Cdev:
    device: FakeDevice
    ctx: _Ctx | None = None
    dev_id: int = 0
    ioas: int | None = None
    hwpt: int | None = None


@dataclass
class _Fault:
    name: str
    errno: int
    skip: int
    times: int


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _view(arg: IoctlArg) -> memoryview:
    if isinstance(arg, int):
        raise _err(errno.EFAULT)  # a pointer argument passed by value
    return memoryview(arg).cast("B")


def _read(view: memoryview, fmt: str, size: int) -> tuple[Any, ...]:
    """copy_from_user of ``size`` bytes, decoded as ``fmt`` (zero beyond ``size``)."""
    if size > len(view):
        raise _err(errno.EFAULT)
    data = bytes(view[:size])[: struct.calcsize(fmt)]
    return struct.unpack(fmt, data.ljust(struct.calcsize(fmt), b"\0"))


def _write(view: memoryview, fmt: str, values: tuple[Any, ...], size: int) -> None:
    """copy_to_user of the first ``size`` bytes of ``values`` packed as ``fmt``."""
    data = struct.pack(fmt, *values)[:size]
    view[: len(data)] = data


class FakeKernel(SysOps):
    """A host with VFIO groups/devices and their IOMMUs, at one kernel version."""

    def __init__(
        self,
        *,
        version: Version = (6, 12),
        devices: list[FakeDevice] | None = None,
        groups: list[FakeGroup] | None = None,
        container: str = "type1",
        dev_root: str = "/dev",
    ) -> None:
        self.version = version
        self.devices = devices if devices is not None else [FakeDevice("0000:00:03.0", group=7)]
        by_number = {g.number: g for g in groups or []}
        for dev in self.devices:
            by_number.setdefault(dev.group, FakeGroup(dev.group))
        self.groups = by_number
        #: "type1" (vfio_iommu_type1) or "iommufd" (CONFIG_IOMMUFD_VFIO_CONTAINER's compat container).
        self.container = container
        self.dev_root = dev_root
        #: Called (with no argument) before the named ioctl is handled.
        self.before: dict[str, Callable[[], None]] = {}
        #: Called with the user's buffer after the named ioctl succeeded.
        self.after: dict[str, Callable[[memoryview], None]] = {}
        self.calls: list[str] = []
        self.leaks: list[str] = []
        self._faults: list[_Fault] = []
        self._fds: dict[int, tuple[str, object]] = {}
        self._next_fd = 100

    # ----- test controls -------------------------------------------------

    def fail(self, name: str, code: int, *, skip: int = 0, times: int = 1) -> None:
        """Make the named call fail with ``code``: an ioctl name, ``open:PATH`` or ``close:PATH``."""
        self._faults.append(_Fault(name, code, skip, times))

    @property
    def open_paths(self) -> list[str]:
        return sorted(path for path, _ in self._fds.values())

    def assert_clean(self) -> None:
        assert self.open_paths == [], f"fds left open: {self.open_paths}"
        assert self.leaks == [], f"left behind: {self.leaks}"
        assert not any(name in self.calls for name in ("VFIO_IOMMU_MAP_DMA", "IOMMU_IOAS_MAP")), "mapped"

    def write_sysfs(self, root: Path) -> None:
        """The sysfs view of the devices: ``bus/pci/devices/BDF/vfio-dev/vfioN/dev`` (v6.1+)."""
        for dev in self.devices:
            dev_dir = root / "bus/pci/devices" / dev.bdf
            dev_dir.mkdir(parents=True, exist_ok=True)
            if self.version >= VFIO_DEV_SYSFS:
                node = dev_dir / "vfio-dev" / f"vfio{dev.cdev}"
                node.mkdir(parents=True, exist_ok=True)
                (node / "dev").write_text(f"{dev.major}:{dev.cdev}\n")

    def _fault(self, name: str) -> None:
        for fault in self._faults:
            if fault.name != name:
                continue
            if fault.skip:
                fault.skip -= 1
                return
            if fault.times:
                fault.times -= 1
                raise _err(fault.errno)

    # ----- SysOps --------------------------------------------------------

    def _nodes(self) -> dict[str, Callable[[], object]]:
        vfio = f"{self.dev_root}/vfio"
        nodes: dict[str, Callable[[], object]] = {f"{vfio}/vfio": _Container}
        for number, grp in self.groups.items():
            name = f"noiommu-{number}" if grp.noiommu else str(number)
            nodes[f"{vfio}/{name}"] = lambda number=number: self._open_group(number)
        if self.version >= IOMMUFD:
            nodes[f"{self.dev_root}/iommu"] = _Ctx
        if self.version >= CDEV:
            for dev in self.devices:
                nodes[f"{vfio}/devices/vfio{dev.cdev}"] = lambda dev=dev: _Cdev(dev)
        return nodes

    def _open_group(self, number: int) -> _Group:
        if self.groups[number].busy or any(
            isinstance(st, _Group) and st.number == number for _, st in self._fds.values()
        ):
            raise _err(errno.EBUSY)
        return _Group(number)

    def exists(self, path: str) -> bool:
        return path in self._nodes()

    def open(self, path: str) -> int:
        self._fault(f"open:{path}")
        factory = self._nodes().get(path)
        if factory is None:
            raise _err(errno.ENOENT)
        state = factory()
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = (path, state)
        return fd

    def close(self, fd: int) -> None:
        if fd not in self._fds:
            raise _err(errno.EBADF)
        path, state = self._fds.pop(fd)
        if isinstance(state, _Group) and state.container is not None:
            self.leaks.append(f"group {state.number} closed while in a container")
            self._unset_container(state)
        elif isinstance(state, _Cdev):
            self._release_cdev(state)
        elif isinstance(state, _Ctx):
            state.fd_open = False
            self._maybe_free_ctx(state)
        # The descriptor is gone even when close reports an error (as with close(2)).
        self._fault(f"close:{path}")

    def fstat(self, fd: int) -> NodeStat:
        self._fault("fstat")
        if fd not in self._fds:
            raise _err(errno.EBADF)
        _, state = self._fds[fd]
        rdev = (
            os.makedev(state.device.major, state.device.cdev)
            if isinstance(state, _Cdev)
            else os.makedev(10, 196)
        )
        return NodeStat(mode=stat.S_IFCHR | 0o600, rdev=rdev)

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        if fd not in self._fds:
            raise _err(errno.EBADF)
        name = REQUESTS.get(request, hex(request))
        self.calls.append(name)
        self._fault(name)
        if name in self.before:
            self.before[name]()
        _, state = self._fds[fd]
        handler = {
            _Container: self._container_ioctl,
            _Group: self._group_ioctl,
            _Cdev: self._cdev_ioctl,
            _Ctx: self._iommufd_ioctl,
        }[type(state)]
        result = handler(state, name, arg)
        if name in self.after:
            self.after[name](_view(arg))
        return int(result)

    # ----- VFIO container and group -------------------------------------

    def _extension(self, container: _Container, ext: int) -> int:
        if self.container == "iommufd":
            if ext in (1, 3, 9):
                return 1
            return int(ext == 4 and container.iommu_type is not None and self._cc(container))
        if ext in (1, 3):
            return 1
        if ext in (9, 10):
            return int(self.version >= TYPE1_UNMAP_ALL)
        if ext == 4:  # DMA_CC: type1 answers only once SET_IOMMU made it the container's driver
            return int(container.iommu_type is not None and self._cc(container))
        return 0

    def _cc(self, container: _Container) -> bool:
        return all(d.iommu.dma_cc for d in self.devices if d.group in container.groups)

    def _container_ioctl(self, container: _Container, name: str, arg: IoctlArg) -> int:
        if name == "VFIO_GET_API_VERSION":
            return 0
        if name == "VFIO_CHECK_EXTENSION":
            assert isinstance(arg, int), "CHECK_EXTENSION takes its id by value"
            return self._extension(container, arg)
        if name == "VFIO_SET_IOMMU":
            assert isinstance(arg, int), "SET_IOMMU takes its type by value"
            if not container.groups or container.iommu_type is not None:
                raise _err(errno.EINVAL)
            if arg not in (1, 3):
                raise _err(errno.EINVAL if self.container == "iommufd" else errno.ENODEV)
            container.iommu_type = arg
            return 0
        if name == "VFIO_IOMMU_GET_INFO":
            if container.iommu_type is None:
                raise _err(errno.EINVAL)
            return self._get_info(container, _view(arg))
        raise _err(errno.ENOTTY)

    def _caps(self, container: _Container) -> list[tuple[int, bytes]]:
        """(id, body after the 8-byte header) in the order the kernel chains them."""
        devs = [d for d in self.devices if d.group in container.groups]
        usable = devs[0].iommu.usable if devs else [(0, U64_MAX)]
        iova = struct.pack("<II", len(usable), 0) + b"".join(struct.pack("<QQ", s, e) for s, e in usable)
        pgsizes = devs[0].iommu.pgsizes if devs else 0x1000
        if self.container == "iommufd":
            return [(1, iova), (3, struct.pack("<I", 0xFFFFFFFF))]
        caps: list[tuple[int, bytes]] = []
        if self.version >= TYPE1_MIGRATION:
            # flags, pad, pgsize_bitmap (the smallest page), max_dirty_bitmap_size (256 MiB)
            caps.append((2, struct.pack("<IIQQ", 0, 0, pgsizes & -pgsizes, 256 << 20)))
        if self.version >= TYPE1_DMA_AVAIL:
            caps.append((3, struct.pack("<I", 65535)))
        caps.append((1, iova))
        return caps

    def _get_info(self, container: _Container, view: memoryview) -> int:
        argsz, _flags, _pgsizes = _read(view, "<IIQ", 16)  # minsz = offsetofend(iova_pgsizes)
        if argsz < 16:
            raise _err(errno.EINVAL)
        if argsz > len(view):
            raise _err(errno.EFAULT)
        devs = [d for d in self.devices if d.group in container.groups]
        pgsizes = devs[0].iommu.pgsizes if devs else 0x1000
        if self.version < TYPE1_CAP_OFFSET:
            _write(view, "<IIQ", (argsz, 1, pgsizes), 16)
            return 0
        chain = bytearray()
        caps = self._caps(container)
        offsets = []
        for _, body in caps:
            offsets.append(len(chain))
            chain += bytes(8) + body
            chain += bytes(-len(chain) % 8)  # each capability starts 8-byte aligned
        flags, cap_offset, reply_argsz = 1 | 2, 0, argsz
        if argsz < 24 + len(chain):
            reply_argsz = 24 + len(chain)  # only ask for more room; no caps this time
        else:
            for i, (cap_id, _) in enumerate(caps):
                nxt = 24 + offsets[i + 1] if i + 1 < len(caps) else 0
                struct.pack_into("<HHI", chain, offsets[i], cap_id, 1, nxt)
            view[24 : 24 + len(chain)] = chain
            cap_offset = 24
        _write(view, "<IIQII", (reply_argsz, flags, pgsizes, cap_offset, 0), min(argsz, 24))
        return 0

    def _group_ioctl(self, grp: _Group, name: str, arg: IoctlArg) -> int:
        info = self.groups[grp.number]
        if name == "VFIO_GROUP_GET_STATUS":
            view = _view(arg)
            (argsz, _) = _read(view, "<II", 8)
            if argsz < 8:
                raise _err(errno.EINVAL)
            flags = int(info.viable) | (2 if grp.container or info.container_set_elsewhere else 0)
            _write(view, "<II", (argsz, flags), 8)
            return 0
        if name == "VFIO_GROUP_SET_CONTAINER":
            (container_fd,) = _read(_view(arg), "<i", 4)
            if container_fd not in self._fds:
                raise _err(errno.EBADF)
            container = self._fds[container_fd][1]
            if not isinstance(container, _Container):
                raise _err(errno.EINVAL)
            if grp.container is not None or info.container_set_elsewhere:
                raise _err(errno.EINVAL)
            grp.container = container
            container.groups.append(grp.number)
            return 0
        if name == "VFIO_GROUP_UNSET_CONTAINER":
            if grp.container is None:
                raise _err(errno.EINVAL)
            self._unset_container(grp)
            return 0
        raise _err(errno.ENOTTY)

    @staticmethod
    def _unset_container(grp: _Group) -> None:
        assert grp.container is not None
        grp.container.groups.remove(grp.number)
        if not grp.container.groups:
            grp.container.iommu_type = None  # the last group out releases the IOMMU driver
        grp.container = None

    # ----- VFIO cdev -----------------------------------------------------

    def _group_open_legacy(self, number: int) -> bool:
        return self.groups[number].busy or any(
            isinstance(st, _Group) and st.number == number for _, st in self._fds.values()
        )

    def _cdev_ioctl(self, cdev: _Cdev, name: str, arg: IoctlArg) -> int:
        view = _view(arg) if not isinstance(arg, int) else None
        if name == "VFIO_DEVICE_BIND_IOMMUFD":
            assert view is not None
            argsz, flags, iommufd_fd, _ = _read(view, "<IIiI", 16)  # minsz = offsetofend(out_devid)
            allowed = 1 if self.version >= INPUT_TYPE else 0
            if argsz < 16 or flags & ~allowed or cdev.ctx is not None:
                raise _err(errno.EINVAL)
            if self._group_open_legacy(cdev.device.group):
                raise _err(errno.EBUSY)
            if iommufd_fd not in self._fds:
                raise _err(errno.EBADF)
            ctx = self._fds[iommufd_fd][1]
            if not isinstance(ctx, _Ctx):
                raise _err(errno.EBADFD)
            if cdev.device.cdev_in_use:
                raise _err(errno.EINVAL)  # vfio_df_open: the cdev path opens a device only once
            cdev.ctx = ctx
            ctx.bound += 1
            cdev.dev_id = ctx.add(_Object("device"))
            struct.pack_into("<I", view, 12, cdev.dev_id)
            return 0
        if cdev.ctx is None or view is None:
            raise _err(errno.EINVAL)  # nothing but BIND before access is granted
        pasid_flag = 1 if self.version >= PASID else 0
        if name == "VFIO_DEVICE_ATTACH_IOMMUFD_PT":
            argsz, flags, pt_id = _read(view, "<III", 12)
            if argsz < 12 or flags & ~pasid_flag:
                raise _err(errno.EINVAL)
            obj = cdev.ctx.objects.get(pt_id)
            if obj is None or obj.kind not in ("ioas", "hwpt"):
                raise _err(errno.ENOENT)
            if cdev.device.iommu.attach_errno is not None:
                raise _err(cdev.device.iommu.attach_errno)
            self._detach(cdev)
            ioas = pt_id if obj.kind == "ioas" else obj.ioas
            cdev.ioas = ioas
            cdev.hwpt = cdev.ctx.add(_Object("auto-hwpt", ioas=ioas)) if obj.kind == "ioas" else pt_id
            struct.pack_into("<I", view, 8, cdev.hwpt)
            return 0
        if name == "VFIO_DEVICE_DETACH_IOMMUFD_PT":
            argsz, flags = _read(view, "<II", 8)
            if argsz < 8 or flags & ~pasid_flag:
                raise _err(errno.EINVAL)
            self._detach(cdev)
            return 0
        raise _err(errno.ENOTTY)

    @staticmethod
    def _detach(cdev: _Cdev) -> None:
        # An auto-created domain dies with its last attachment.
        if cdev.ctx is not None and cdev.hwpt is not None and cdev.ctx.objects[cdev.hwpt].kind == "auto-hwpt":
            del cdev.ctx.objects[cdev.hwpt]
        cdev.ioas = cdev.hwpt = None

    def _release_cdev(self, cdev: _Cdev) -> None:
        if cdev.ioas is not None:
            self.leaks.append(f"{cdev.device.bdf} closed while attached")
            self._detach(cdev)
        if cdev.ctx is not None:
            del cdev.ctx.objects[cdev.dev_id]
            cdev.ctx.bound -= 1
            self._maybe_free_ctx(cdev.ctx)
            cdev.ctx = None

    def _maybe_free_ctx(self, ctx: _Ctx) -> None:
        if ctx.fd_open or ctx.bound:
            return
        for oid, obj in sorted(ctx.objects.items()):
            self.leaks.append(f"iommufd object {oid} ({obj.kind}) reaped at close")
        ctx.objects.clear()

    # ----- iommufd --------------------------------------------------------

    def _attached(self, ctx: _Ctx, ioas: int) -> list[FakeDevice]:
        return [
            st.device
            for _, st in self._fds.values()
            if isinstance(st, _Cdev) and st.ctx is ctx and st.ioas == ioas
        ]

    def _cmd(
        self, view: memoryview, fmt: str, min_size: int, kernel_size: int
    ) -> tuple[tuple[Any, ...], int]:
        """The iommufd ioctl preamble: min_size, then copy_struct_from_user."""
        (size,) = _read(view, "<I", 4)
        if size < min_size:
            raise _err(errno.EINVAL)
        if size > len(view):
            raise _err(errno.EFAULT)
        if size > kernel_size and any(bytes(view[kernel_size:size])):
            raise _err(errno.E2BIG)
        return _read(view, fmt, min(size, kernel_size)), min(size, kernel_size)

    def _iommufd_ioctl(self, ctx: _Ctx, name: str, arg: IoctlArg) -> int:
        handlers = {
            "IOMMU_DESTROY": self._destroy,
            "IOMMU_IOAS_ALLOC": self._ioas_alloc,
            "IOMMU_IOAS_IOVA_RANGES": self._iova_ranges,
        }
        if self.version >= CDEV:
            handlers.update(IOMMU_HWPT_ALLOC=self._hwpt_alloc, IOMMU_GET_HW_INFO=self._hw_info)
        handler = handlers.get(name)
        if handler is None:
            raise _err(errno.ENOTTY)
        return handler(ctx, _view(arg))

    def _destroy(self, ctx: _Ctx, view: memoryview) -> int:
        (_, oid), _ = self._cmd(view, "<II", 8, 8)
        obj = ctx.objects.get(oid)
        if obj is None:
            raise _err(errno.ENOENT)
        users = [o for o in ctx.objects.values() if o.ioas == oid] if obj.kind == "ioas" else []
        attached = any(
            isinstance(st, _Cdev) and st.ctx is ctx and oid in (st.ioas, st.hwpt)
            for _, st in self._fds.values()
        )
        if obj.kind == "device" or users or attached:
            raise _err(errno.EBUSY)
        del ctx.objects[oid]
        return 0

    def _ioas_alloc(self, ctx: _Ctx, view: memoryview) -> int:
        (size, flags, _), n = self._cmd(view, "<III", 12, 12)
        if flags:
            raise _err(errno.EOPNOTSUPP)
        _write(view, "<III", (size, flags, ctx.add(_Object("ioas"))), n)
        return 0

    def _iova_ranges(self, ctx: _Ctx, view: memoryview) -> int:
        (size, ioas, capacity, reserved, uptr, _), n = self._cmd(view, "<IIIIQQ", 32, 32)
        if reserved:
            raise _err(errno.EOPNOTSUPP)
        if ctx.objects.get(ioas, _Object("none")).kind != "ioas":
            raise _err(errno.ENOENT)
        devs = self._attached(ctx, ioas)
        ranges = devs[0].iommu.usable if devs else [(0, U64_MAX)]
        alignment = max([d.iommu.iova_alignment for d in devs], default=1)
        for i, (start, last) in enumerate(ranges[:capacity]):
            ctypes.memmove(uptr + 16 * i, struct.pack("<QQ", start, last), 16)
        _write(view, "<IIIIQQ", (size, ioas, len(ranges), reserved, uptr, alignment), n)
        if len(ranges) > capacity:
            raise _err(errno.EMSGSIZE)
        return 0

    def _hwpt_alloc(self, ctx: _Ctx, view: memoryview) -> int:
        kernel_size = 48 if self.version >= HWPT_48 else 40 if self.version >= HW_INFO_40 else 24
        allowed = 0
        if self.version >= HW_INFO_40:
            allowed |= HWPT_NEST_PARENT | HWPT_DIRTY
        if self.version >= HWPT_48:
            allowed |= HWPT_FAULT_ID
        if self.version >= PASID:
            allowed |= HWPT_PASID
        fields, n = self._cmd(view, "<IIIIIIIIQII", 24, kernel_size)
        size, flags, dev_id, pt_id, _, reserved, data_type, data_len, uptr, fault_id, reserved2 = fields
        if flags & ~allowed or reserved or reserved2:
            raise _err(errno.EOPNOTSUPP)
        if ctx.objects.get(dev_id, _Object("none")).kind != "device":
            raise _err(errno.ENOENT)
        if ctx.objects.get(pt_id, _Object("none")).kind != "ioas":
            raise _err(errno.ENOENT)
        if data_type or data_len:
            raise _err(errno.EINVAL)  # a kernel-managed HWPT takes no driver data
        iommu = self._device_of(ctx, dev_id).iommu
        if (flags & HWPT_NEST_PARENT and not iommu.nesting) or (
            flags & HWPT_DIRTY and not iommu.dirty_tracking
        ):
            raise _err(errno.EOPNOTSUPP)
        hwpt = ctx.add(_Object("hwpt", ioas=pt_id))
        fields = (size, flags, dev_id, pt_id, hwpt, reserved, data_type, data_len, uptr, fault_id, reserved2)
        _write(view, "<IIIIIIIIQII", fields, n)
        return 0

    def _device_of(self, ctx: _Ctx, dev_id: int) -> FakeDevice:
        for _, st in self._fds.values():
            if isinstance(st, _Cdev) and st.ctx is ctx and st.dev_id == dev_id:
                return st.device
        raise _err(errno.ENOENT)

    def _hw_info(self, ctx: _Ctx, view: memoryview) -> int:
        kernel_size = 40 if self.version >= HW_INFO_40 else 32
        fields, n = self._cmd(view, "<IIIIQIB3sQ", 32, kernel_size)
        size, flags, dev_id, data_len, uptr, _, _, reserved, _ = fields
        allowed = 1 if self.version >= INPUT_TYPE else 0
        # Before v6.15, byte 28 was part of a u32 __reserved too.
        pasid_byte = view[28] if self.version < PASID else 0
        if flags & ~allowed or any(reserved) or pasid_byte:
            raise _err(errno.EOPNOTSUPP)
        if ctx.objects.get(dev_id, _Object("none")).kind != "device":
            raise _err(errno.ENOENT)
        iommu = self._device_of(ctx, dev_id).iommu
        kind, payload = self._hw_payload(iommu)
        copy = min(data_len, len(payload))
        if data_len and not uptr:
            raise _err(errno.EFAULT)
        if data_len:
            ctypes.memmove(uptr, payload[:copy].ljust(data_len, b"\0"), data_len)
        caps = iommu.capabilities
        pasid = iommu.max_pasid_log2 if self.version >= PASID else 0
        _write(view, "<IIIIQIB3sQ", (size, flags, dev_id, len(payload), uptr, kind, pasid, reserved, caps), n)
        return 0

    def _hw_payload(self, iommu: FakeIommu) -> tuple[int, bytes]:
        since = {HW_INFO_TYPE_VTD: CDEV, HW_INFO_TYPE_SMMUV3: SMMUV3_HW_INFO, HW_INFO_TYPE_AMD: AMD_HW_INFO}
        if self.version < since.get(iommu.hw_info_type, (99, 0)):
            return 0, b""  # the driver has no hw_info op yet: type NONE, no data, success
        payload = iommu.payload
        if iommu.hw_info_type == HW_INFO_TYPE_VTD and self.version < HW_INFO_40:
            payload = bytes(4) + payload[4:]  # the errata flag arrived in v6.7
        return iommu.hw_info_type, payload
