"""Capture the sysfs files discovery reads into a tar, and read such a capture back.

``viommu snapshot --capture-sysfs FILE.tar`` writes, under the same relative
paths, the IOMMU units (``sys/class/iommu``), the groups
(``sys/kernel/iommu_groups``), every PCI function's identity, links and PCIe
marker, the kernel release, and ``/proc/cmdline`` and the DMI product name
when readable. Symlinks stay symlinks, so ``--root FILE.tar`` reads the
capture with the sysfs backend exactly as it read the live host. The tar is
deterministic (sorted members, fixed owner and times) and holds a manifest
``viommu-capture.json`` listing what could not be read.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from viommu import __version__
from viommu.errors import HostAccessError, InputError
from viommu.host.pci import BDF

MANIFEST = "viommu-capture.json"

#: Single files, relative to root, captured when readable.
_FILES = (
    "proc/cmdline",
    "proc/sys/kernel/osrelease",
    "proc/sys/kernel/hostname",
    "proc/cpuinfo",
    "sys/class/dmi/id/product_name",
)
_UNIT_FILES = (
    "intel-iommu/cap",
    "intel-iommu/ecap",
    "intel-iommu/version",
    "intel-iommu/address",
    "amd-iommu/cap",
    "amd-iommu/features",
)
_GROUP_FILES = ("reserved_regions", "type", "name")
_PCI_FILES = ("vendor", "device", "class", "max_link_speed", "current_link_speed")
_PCI_LINKS = ("iommu_group", "iommu", "driver")


class _Collector:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = set()
        self.skipped: dict[str, str] = {}

    def file(self, rel: str) -> None:
        path = self.root / rel
        if not path.exists():
            return
        try:
            self.files[rel] = path.read_bytes()
        except OSError as exc:
            self.skipped[rel] = exc.strerror or str(exc)

    def link(self, rel: str) -> None:
        path = self.root / rel
        if path.is_symlink():
            self.links[rel] = os.readlink(path)

    def real(self, rel: str) -> str:
        """``rel`` with its symlinks resolved, relative to root (the directory the link names)."""
        return os.path.relpath(os.path.realpath(self.root / rel), os.path.realpath(self.root))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / rel))
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.skipped[rel] = exc.strerror or str(exc)
            return []


def capture_sysfs(out: str | os.PathLike[str], *, root: str | os.PathLike[str] = "/") -> dict[str, str]:
    """Write the capture of ``root`` to ``out``; returns the unreadable paths and why."""
    c = _Collector(Path(root))
    for rel in _FILES:
        c.file(rel)
    for unit in c.listdir("sys/class/iommu"):
        rel = f"sys/class/iommu/{unit}"
        c.link(rel)
        real = c.real(rel)
        c.dirs.add(real)
        for name in _UNIT_FILES:
            c.file(f"{real}/{name}")
        for dev in c.listdir(f"{real}/devices"):
            c.link(f"{real}/devices/{dev}")
    for group in c.listdir("sys/kernel/iommu_groups"):
        rel = f"sys/kernel/iommu_groups/{group}"
        c.dirs.add(rel)
        for name in _GROUP_FILES:
            c.file(f"{rel}/{name}")
        c.dirs.add(f"{rel}/devices")
        for dev in c.listdir(f"{rel}/devices"):
            c.link(f"{rel}/devices/{dev}")
    for bdf in c.listdir("sys/bus/pci/devices"):
        rel = f"sys/bus/pci/devices/{bdf}"
        c.link(rel)
        real = c.real(rel)
        # The bridges above the device are PCI functions too; capture their chain of directories.
        c.dirs.add(real)
        for name in _PCI_FILES:
            c.file(f"{real}/{name}")
        for name in _PCI_LINKS:
            c.link(f"{real}/{name}")
        for cdev in c.listdir(f"{real}/vfio-dev"):
            c.file(f"{real}/vfio-dev/{cdev}/dev")
    _write(Path(out), c)
    return dict(c.skipped)


def _write(out: Path, c: _Collector) -> None:
    from viommu.host.snapshot import capture_time

    manifest = {
        "format": "viommu-sysfs-capture/1",
        "viommu": __version__,
        "captured_at": capture_time(),
        "unreadable": dict(sorted(c.skipped.items())),
    }
    entries: dict[str, tarfile.TarInfo] = {}
    payload: dict[str, bytes] = {}

    def add_dirs(rel: str) -> None:
        parts = rel.split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name not in entries:
                entries[name] = _info(name, tarfile.DIRTYPE, mode=0o755)

    for rel in sorted(c.dirs):
        add_dirs(rel)
    for rel, data in c.files.items():
        add_dirs(rel.rsplit("/", 1)[0])
        entries[rel] = _info(rel, tarfile.REGTYPE, size=len(data))
        payload[rel] = data
    for rel, target in c.links.items():
        add_dirs(rel.rsplit("/", 1)[0])
        info = _info(rel, tarfile.SYMTYPE, mode=0o777)
        info.linkname = target
        entries[rel] = info
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    entries[MANIFEST] = _info(MANIFEST, tarfile.REGTYPE, size=len(data))
    payload[MANIFEST] = data
    try:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            # Parents sort before children, so extraction creates directories first.
            for name in sorted(entries):
                info = entries[name]
                tar.addfile(info, io.BytesIO(payload[name]) if name in payload else None)
    except OSError as exc:
        raise HostAccessError(
            f"cannot write: {exc.strerror or exc}", where=str(out), errno=exc.errno
        ) from None


def _info(name: str, kind: bytes, *, size: int = 0, mode: int = 0o444) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@contextmanager
def unpacked(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Extract a capture into a private temporary directory (removed afterwards)."""
    where = str(path)
    with tempfile.TemporaryDirectory(prefix="viommu-capture-") as tmp:
        try:
            with tarfile.open(path, "r") as tar:
                for member in tar.getmembers():
                    _check_member(member, where)
                # The "data" filter refuses absolute names, links leaving the tree and devices.
                tar.extractall(tmp, filter="data")
        except tarfile.ReadError:
            # tarfile lists every compression it tried, over several lines: say it in one.
            raise InputError(
                "neither a snapshot JSON nor a sysfs capture tar (plain, gz, bz2 or xz)", where=where
            ) from None
        except tarfile.TarError as exc:
            text = " ".join(str(exc).split())
            raise InputError(f"not a readable tar capture ({text})", where=where) from None
        except OSError as exc:
            raise HostAccessError(
                f"cannot read: {exc.strerror or exc}", where=where, errno=exc.errno
            ) from None
        yield Path(tmp)


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    top = member.name.split("/", 1)[0]
    if top not in ("sys", "proc", "boot", MANIFEST):
        raise InputError(f"member {member.name!r} is not part of a sysfs capture", where=where)
    name = member.name.rsplit("/", 1)[-1]
    if member.issym() and member.name.startswith("sys/bus/pci/devices/") and not BDF.fullmatch(name):
        raise InputError(f"member {member.name!r} is not a PCI device link", where=where)
