"""One entry point for host IOMMU discovery, whatever the backend.

``discover(backend="auto"|"sysfs"|"vfio"|"iommufd"|"snapshot", root=..., profile=...)``
returns a :class:`~viommu.host.inventory.HostInventory`. ``auto`` picks the
richest backend that works with the current privileges (iommufd, then legacy
VFIO, then sysfs) and records which one it used and why it skipped the others.
The ioctl backends open only devices already bound to vfio-pci; discovery
never changes host state.

``root`` is the filesystem root to read (``/`` for this host), a directory
holding a sysfs capture, a ``.tar`` written by ``viommu snapshot
--capture-sysfs``, or a snapshot JSON file. ``profile`` names a bundled
profile of a real machine.

This module imports the backends lazily so that importing it stays cheap.
"""

from __future__ import annotations

import os

from viommu.errors import HostAccessError, InputError
from viommu.record import replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path

    from viommu.host.inventory import HostInventory
    from viommu.host.uapi.syscalls import SysOps

BACKENDS = ("auto", "sysfs", "vfio", "iommufd", "snapshot")


def discover(
    backend: str = "auto",
    *,
    root: str | os.PathLike[str] = "/",
    profile: str | None = None,
    ops: SysOps | None = None,
    dev_root: str = "/dev",
    probe_nesting: bool = True,
) -> HostInventory:
    """Discover the host IOMMUs and the assignable devices behind them.

    ``ops`` is the syscall boundary of the ioctl backends (the real kernel by
    default; tests pass a fake one). Bad input raises
    :class:`~viommu.errors.InputError`, an unreadable host
    :class:`~viommu.errors.HostAccessError`: one line each.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})", where="--backend")
    if profile is not None:
        if backend != "auto":
            raise InputError(
                f"--profile reads a bundled profile; it cannot be combined with --backend {backend}"
            )
        from viommu.host.profiles import load_profile

        return load_profile(profile)
    if os.path.isfile(root):
        return _from_file(os.fspath(root), backend)
    from pathlib import Path  # imported here: a snapshot file (viommu check) does not need it

    path = Path(root)
    if backend == "snapshot":
        raise InputError("--backend snapshot needs --root FILE.json", where=str(path))
    if not path.is_dir():
        raise InputError("no such directory or file", where=str(path))
    live = ops is not None or os.path.realpath(path) == "/"
    return _from_tree(path, backend, live=live, ops=ops, dev_root=dev_root, probe_nesting=probe_nesting)


def _from_file(path: str, backend: str) -> HostInventory:
    from viommu.host import snapshot

    with open(path, "rb") as stream:
        head = stream.read(512)
    if head.lstrip()[:1] == b"{":
        if backend not in ("auto", "snapshot"):
            raise InputError(
                f"a snapshot file is read by the snapshot backend, not {backend}", where=str(path)
            )
        return snapshot.load(path)
    if backend not in ("auto", "sysfs"):
        raise InputError(
            f"a sysfs capture has no /dev: only the sysfs backend reads it, not {backend}", where=str(path)
        )

    from viommu.host import capture

    with capture.unpacked(path) as tree:
        inventory = _from_tree(tree, backend, live=False, label=str(path))
    if inventory.backend != "sysfs":
        return inventory  # the capture showed no IOMMU: the default profile says so itself
    return replace(inventory, reason=f"{inventory.reason} ({path})")


def _from_tree(
    root: Path,
    backend: str,
    *,
    live: bool,
    ops: SysOps | None = None,
    dev_root: str = "/dev",
    probe_nesting: bool = True,
    label: str | None = None,
) -> HostInventory:
    from viommu.host import sysfs

    base = sysfs.read(root, label=label)
    where = label if label is not None else str(root).rstrip("/")
    if backend == "sysfs":
        if not base.units:
            raise HostAccessError(_no_iommu(where))
        return replace(base, reason="--backend sysfs")
    if backend in ("vfio", "iommufd"):
        if not base.units:
            raise HostAccessError(_no_iommu(where))
        why_not = _ioctl_unavailable(base, live)
        if why_not:
            raise HostAccessError(f"{backend} backend: {why_not}")
        probed = _probe(base, backend, root, ops, dev_root, probe_nesting)
        return replace(probed, reason=f"--backend {backend}")
    return _auto(base, root, where, live=live, ops=ops, dev_root=dev_root, probe_nesting=probe_nesting)


def _no_iommu(where: str) -> str:
    return (
        f"no IOMMU under {where}/sys/class/iommu (IOMMU absent or disabled in firmware or on the kernel "
        "command line); see 'viommu profiles' and --profile"
    )


def _auto(
    base: HostInventory,
    root: Path,
    where: str,
    *,
    live: bool,
    ops: SysOps | None,
    dev_root: str,
    probe_nesting: bool,
) -> HostInventory:
    skipped: list[tuple[str, str]] = []
    if not base.units:
        from viommu.host.profiles import default_profile_name, load_profile

        reason = f"no IOMMU units under {where}/sys/class/iommu"
        skipped += [("iommufd", reason), ("vfio", reason), ("sysfs", reason)]
        name = default_profile_name()
        inventory = load_profile(name)
        return replace(
            inventory,
            reason=f"this host shows no IOMMU: using the bundled default profile {name!r}",
            skipped=tuple(skipped),
        )
    why_not = _ioctl_unavailable(base, live)
    for backend in ("iommufd", "vfio"):
        if why_not:
            skipped.append((backend, why_not))
            continue
        try:
            probed = _probe(base, backend, root, ops, dev_root, probe_nesting)
        except HostAccessError as exc:
            skipped.append((backend, str(exc)))
            continue
        return replace(probed, reason="richest backend that worked", skipped=tuple(skipped))
    return replace(base, reason="the only backend left: read-only sysfs view", skipped=tuple(skipped))


def _ioctl_unavailable(base: HostInventory, live: bool) -> str | None:
    from viommu.host.sysfs import iter_vfio_devices

    if not live:
        return "reading a captured tree, not the running host: the ioctl probes need its /dev"
    if next(iter_vfio_devices(base), None) is None:
        return "no device is bound to vfio-pci (discovery never binds drivers)"
    return None


def _probe(
    base: HostInventory, backend: str, root: Path, ops: SysOps | None, dev_root: str, probe_nesting: bool
) -> HostInventory:
    from viommu.host import merge
    from viommu.host.uapi.syscalls import SysOps

    kernel = ops if ops is not None else SysOps()
    if backend == "iommufd":
        return merge.with_iommufd(
            base, sysfs_root=str(root / "sys"), ops=kernel, dev_root=dev_root, probe_nesting=probe_nesting
        )
    return merge.with_legacy(base, ops=kernel, dev_root=dev_root)
