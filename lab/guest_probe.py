"""The in-guest probe of the real-kernel lab (runs in L1 as root, with L0's Python).

``guest_probe.py RESULTS_DIR`` reads ``RESULTS_DIR/config.json`` and

1. records driver bindings, the ``/dev`` tree and its own open fds;
2. runs discovery with every backend (sysfs, legacy VFIO, iommufd) and writes
   each inventory as a snapshot (``inventory-<backend>.json``);
3. records the same state again (discovery must leave the host untouched);
4. maps an anonymous buffer through VFIO_IOMMU_MAP_DMA and IOMMU_IOAS_MAP just
   inside and just outside the usable IOVA range and inside the MSI window,
   unmaps what succeeded, and records each errno beside
   :meth:`viommu.dma.HostDomain.why_not`'s prediction;
5. runs the L2 QEMU cases (paused, TCG) and records QEMU's verdicts.

Everything lands in ``RESULTS_DIR/results.json``, rewritten after every phase
so that a crash still leaves what was done.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import mmap
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from viommu.dma import X86_INTERRUPT_WINDOW, HostDomain
from viommu.errors import ViommuError
from viommu.host import snapshot
from viommu.host.caps import U64_MAX
from viommu.host.device import HostIOMMUDevice
from viommu.host.discover import discover
from viommu.host.inventory import HostInventory
from viommu.host.uapi import iommufd as iu
from viommu.host.uapi import vfio
from viommu.host.uapi.syscalls import IoctlFailed, Node, SysOps, open_node

PAGE = 4096
BACKENDS = ("sysfs", "vfio", "iommufd")


class Results:
    """results.json, written after every phase."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / "results.json"
        self.data: dict[str, Any] = {"phase": "start", "timings": {}}

    def save(self, phase: str) -> None:
        self.data["phase"] = phase
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)


@contextlib.contextmanager
def timed(results: Results, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        results.data["timings"][name] = round(time.monotonic() - start, 3)


# --- host state ---------------------------------------------------------------------------

#: guest-init.sh's scratch tmpfs, which holds the results share.
SCRATCH = Path("/dev/viommu-lab")


def host_state() -> dict[str, Any]:
    """Driver bindings of every PCI device, every /dev path, and this process's open fds."""
    drivers: dict[str, str | None] = {}
    for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
        link = dev / "driver"
        drivers[dev.name] = os.path.basename(os.readlink(link)) if link.is_symlink() else None
    nodes: list[str] = []
    for root, dirs, files in os.walk("/dev"):
        if root == "/dev" and SCRATCH.name in dirs:
            dirs.remove(SCRATCH.name)  # the lab's own tmpfs (guest-init.sh), not a device node
        dirs.sort()
        for name in sorted(dirs + files):
            nodes.append(os.path.relpath(os.path.join(root, name), "/dev"))
    fds: dict[str, str] = {}
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        with contextlib.suppress(OSError):  # the listing's own fd is gone by now
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return {"drivers": drivers, "dev": sorted(nodes), "fds": fds}


# --- discovery ----------------------------------------------------------------------------


def run_discovery(results: Results, outdir: Path) -> dict[str, HostInventory]:
    found: dict[str, HostInventory] = {}
    summary: dict[str, Any] = {}
    for backend in BACKENDS:
        start = time.monotonic()
        try:
            inventory = discover(backend)
        except ViommuError as exc:
            summary[backend] = {"ok": False, "error": str(exc), "seconds": time.monotonic() - start}
            continue
        seconds = time.monotonic() - start
        (outdir / f"inventory-{backend}.json").write_text(snapshot.dumps(inventory))
        summary[backend] = {"ok": True, "seconds": round(seconds, 3), "notes": list(inventory.notes)}
        found[backend] = inventory
    results.data["discovery"] = summary
    return found


def sysfs_extras() -> dict[str, Any]:
    """What sysfs shows about the IOMMUs, raw (recorded for the report)."""
    extras: dict[str, Any] = {"class_iommu": {}, "groups": {}}
    base = Path("/sys/class/iommu")
    if base.is_dir():
        for unit in sorted(base.iterdir()):
            attrs: dict[str, str] = {}
            for sub in ("intel-iommu", "amd-iommu"):
                d = unit / sub
                if d.is_dir():
                    for f in sorted(d.iterdir()):
                        with contextlib.suppress(OSError):
                            attrs[f"{sub}/{f.name}"] = f.read_text().strip()
            attrs["devices"] = " ".join(sorted(p.name for p in (unit / "devices").iterdir())) \
                if (unit / "devices").is_dir() else ""
            extras["class_iommu"][unit.name] = attrs
    groups = Path("/sys/kernel/iommu_groups")
    if groups.is_dir():
        for g in sorted(groups.iterdir(), key=lambda p: int(p.name)):
            entry = {"devices": sorted(p.name for p in (g / "devices").iterdir())}
            for f in ("reserved_regions", "type"):
                with contextlib.suppress(OSError):
                    entry[f] = (g / f).read_text()
            extras["groups"][g.name] = entry
    return extras


# --- mapping probes -----------------------------------------------------------------------


def map_points(hiod: HostIOMMUDevice) -> list[tuple[str, int, int]]:
    """(label, iova, size): just inside and just outside the usable range, and the MSI window."""
    ranges = hiod.get_iova_ranges()
    points: list[tuple[str, int, int]] = [("low", 0, PAGE)]
    if ranges:
        top = max(r.last for r in ranges)
        points.append(("top-inside", top + 1 - PAGE, PAGE))
        points.append(("top-straddle", top + 1 - PAGE, 2 * PAGE))
        if top < U64_MAX:
            points.append(("top-outside", top + 1, PAGE))
    msi = X86_INTERRUPT_WINDOW
    points.append(("msi-window", msi.start, PAGE))
    points.append(("below-msi", msi.start - PAGE, PAGE))
    points.append(("into-msi", msi.start - PAGE, 2 * PAGE))
    points.append(("above-msi", msi.last + 1, PAGE))
    points.append(("unaligned", 0x1000 + 0x800, PAGE))
    return points


class Buffer:
    """An anonymous mapping whose address the kernel can pin."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.map[:] = b"\x5a" * size  # fault every page in
        anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(anchor)
        del anchor  # the address stays valid as long as the mmap is open

    def close(self) -> None:
        self.map.close()


def _errno_of(call: Any) -> int:
    try:
        call()
    except IoctlFailed as exc:
        return exc.errno
    return 0


def legacy_map_probe(hiod: HostIOMMUDevice, buf: Buffer) -> list[dict[str, Any]]:
    """VFIO_IOMMU_MAP_DMA at each point on a fresh type1 container holding the device's group."""
    ops = SysOps()
    group = hiod.caps.group
    out: list[dict[str, Any]] = []
    with open_node(ops, "/dev/vfio/vfio", hiod.name) as container, \
            open_node(ops, f"/dev/vfio/{group}", hiod.name) as group_node:
        group_node.ioctl(vfio.Request.VFIO_GROUP_SET_CONTAINER, ctypes.c_int32(container.fd))
        try:
            container.ioctl(vfio.Request.VFIO_SET_IOMMU, vfio.Extension.VFIO_TYPE1v2_IOMMU)
            for label, iova, size in map_points(hiod):
                dma_map = vfio.vfio_iommu_type1_dma_map(
                    argsz=ctypes.sizeof(vfio.vfio_iommu_type1_dma_map),
                    flags=vfio.VFIO_DMA_MAP_FLAG_READ | vfio.VFIO_DMA_MAP_FLAG_WRITE,
                    vaddr=buf.address, iova=iova, size=size,
                )
                got = _errno_of(lambda m=dma_map: container.ioctl(vfio.Request.VFIO_IOMMU_MAP_DMA, m))
                unmapped = None
                if got == 0:
                    unmap = vfio.vfio_iommu_type1_dma_unmap(
                        argsz=ctypes.sizeof(vfio.vfio_iommu_type1_dma_unmap), iova=iova, size=size
                    )
                    container.ioctl(vfio.Request.VFIO_IOMMU_UNMAP_DMA, unmap)
                    unmapped = int(unmap.size)
                out.append(_point(hiod, label, iova, size, got, unmapped))
        finally:
            group_node.ioctl(vfio.Request.VFIO_GROUP_UNSET_CONTAINER)
    return out


def iommufd_map_probe(hiod: HostIOMMUDevice, buf: Buffer) -> list[dict[str, Any]] | str:
    """IOMMU_IOAS_MAP (fixed IOVA) at each point on a fresh IOAS the device is attached to."""
    from viommu.host import iommufd as probe  # the discovery probe's cdev helpers

    ops = SysOps()
    cdev, _rdev = probe._find_cdev(hiod.name, Path("/sys"))
    out: list[dict[str, Any]] = []
    with open_node(ops, "/dev/iommu", hiod.name) as fd, \
            open_node(ops, f"/dev/vfio/devices/{cdev}", hiod.name) as device:
        probe._bind(device, fd)
        ioas = probe._alloc_ioas(fd)
        try:
            attach = vfio.vfio_device_attach_iommufd_pt(argsz=vfio.ATTACH_PT_MIN_SIZE, pt_id=ioas)
            try:
                device.ioctl(vfio.Request.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
            except IoctlFailed as exc:
                return f"attach failed: {errno.errorcode.get(exc.errno, exc.errno)}"
            try:
                for label, iova, size in map_points(hiod):
                    out.append(_ioas_point(hiod, fd, ioas, buf, label, iova, size))
            finally:
                detach = vfio.vfio_device_detach_iommufd_pt(argsz=vfio.DETACH_PT_MIN_SIZE)
                device.ioctl(vfio.Request.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach)
        finally:
            probe._destroy(fd, ioas)
    return out


def _ioas_point(
    hiod: HostIOMMUDevice, fd: Node, ioas: int, buf: Buffer, label: str, iova: int, size: int
) -> dict[str, Any]:
    cmd = iu.iommu_ioas_map(
        size=ctypes.sizeof(iu.iommu_ioas_map),
        flags=iu.IOMMU_IOAS_MAP_FIXED_IOVA | iu.IOMMU_IOAS_MAP_READABLE | iu.IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id=ioas, user_va=buf.address, length=size, iova=iova,
    )
    got = _errno_of(lambda: fd.ioctl(iu.Request.IOMMU_IOAS_MAP, cmd))
    unmapped = None
    if got == 0:
        unmap = iu.iommu_ioas_unmap(size=ctypes.sizeof(iu.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                    length=size)
        fd.ioctl(iu.Request.IOMMU_IOAS_UNMAP, unmap)
        unmapped = int(unmap.length)
    return _point(hiod, label, iova, size, got, unmapped)


def _point(
    hiod: HostIOMMUDevice, label: str, iova: int, size: int, got: int, unmapped: int | None
) -> dict[str, Any]:
    predicted = HostDomain.of(hiod).why_not(iova, size)
    return {
        "label": label,
        "iova": f"0x{iova:x}",
        "size": f"0x{size:x}",
        "errno": got,
        "errno_name": errno.errorcode.get(got, "OK") if got else "OK",
        "predicted": predicted.errno if predicted else 0,
        "predicted_why": str(predicted) if predicted else None,
        "unmapped": unmapped,
    }


def run_mapping(results: Results, inventories: dict[str, HostInventory]) -> None:
    mapping: dict[str, Any] = {}
    buf = Buffer(2 * PAGE)
    try:
        for backend, func in (("vfio", legacy_map_probe), ("iommufd", iommufd_map_probe)):
            inventory = inventories.get(backend)
            if inventory is None:
                mapping[backend] = {"skipped": "discovery failed"}
                continue
            per_dev: dict[str, Any] = {}
            for hiod in inventory.devices:
                if hiod.caps.backend != backend:
                    continue  # not bound to vfio-pci: discovery kept its sysfs view
                try:
                    per_dev[hiod.name] = func(hiod, buf)
                except ViommuError as exc:
                    per_dev[hiod.name] = f"error: {exc}"
            mapping[backend] = per_dev
    finally:
        buf.close()
    results.data["mapping"] = mapping


# --- L2 QEMU cases ------------------------------------------------------------------------


def _qemu_error(stderr: str, argv: list[str]) -> str | None:
    """QEMU's last error line without ``qemu-system-x86_64: `` and the blamed option (``-device X: ``)."""
    prefix = "qemu-system-x86_64: "
    lines = [ln[len(prefix):] for ln in stderr.splitlines() if ln.startswith(prefix)]
    errors = [ln for ln in lines if not ln.startswith("warning: ")]
    if not errors:
        return None
    text = errors[-1]
    options = [f"{flag} {value}: " for flag, value in itertools.pairwise(argv) if flag.startswith("-")]
    for head in options:
        if text.startswith(head):
            return text[len(head):]
    return text


def run_l2_case(case: dict[str, Any], qemu: str, workdir: Path) -> dict[str, Any]:
    """One paused L2 QEMU: cold plug on the command line, or QMP device_add once it is up."""
    from qemu.qmp import ExecuteError
    from qemu.qmp.legacy import QEMUMonitorProtocol

    sock = workdir / f"{case['name']}.sock"
    argv = [qemu, "-M", "q35", "-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-m", "128M"]
    if case["viommu"]:
        argv += ["-device", case["viommu"]]
    iommufd = case["backend"] == "iommufd"
    if iommufd:
        argv += ["-object", "iommufd,id=fd0"]
    argv += ["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"]
    device = {"driver": "vfio-pci", "host": case["host"], "id": "hostdev0", "bus": "rp0"}
    if iommufd:
        device["iommufd"] = "fd0"
    if case["plug"] == "cold":
        argv += ["-device", ",".join(f"{k}={v}" if k != "driver" else v for k, v in device.items())]
    argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    out: dict[str, Any] = {"case": case, "argv": argv}
    qmp_error: str | None = None
    started = False
    try:
        qmp = None
        while proc.poll() is None and time.monotonic() - start < 120:
            if not sock.exists():
                time.sleep(0.05)
                continue
            attempt = QEMUMonitorProtocol(str(sock))
            try:
                # The socket listens from option parsing on, but QEMU greets only once the
                # machine is created (devices realized, machine-done run): a refused cold
                # plug ends the connection instead, and QEMU exits.
                attempt.connect()
            except Exception as exc:
                out["connect"] = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    attempt.close()
                time.sleep(0.1)
                continue
            qmp, started = attempt, True
            break
        if qmp is not None and started and case["plug"] == "hot":
            # The QMP guard first, on its own connection (the socket serves one client at a
            # time): a dry run against the running L2 and the real vfio-pci device. Then
            # QEMU's own answer to the same device_add.
            with contextlib.suppress(Exception):
                qmp.close()
            out["guard"] = _guard(sock, case, device)
            qmp = QEMUMonitorProtocol(str(sock))
            qmp.connect()
        if qmp is not None:
            try:
                if started and case["plug"] == "hot":
                    try:
                        qmp.cmd("device_add", **device)
                    except ExecuteError as exc:
                        qmp_error = str(exc.error.error.desc)
                    out["pci_after"] = _pci_ids(qmp)
                if started:
                    with contextlib.suppress(Exception):
                        qmp.cmd("quit")
            finally:
                with contextlib.suppress(Exception):
                    qmp.close()
        _stdout, stderr = proc.communicate(timeout=60)
    except Exception as exc:  # the case must not take the whole run down
        proc.kill()
        _stdout, stderr = proc.communicate()
        out["exception"] = f"{type(exc).__name__}: {exc}"
    out["seconds"] = round(time.monotonic() - start, 3)
    out["returncode"] = proc.returncode
    out["stderr"] = stderr
    out["started"] = started
    if case["plug"] == "cold":
        out["error"] = None if started else _qemu_error(stderr, argv)
        out["accepted"] = started
    else:
        out["error"] = qmp_error
        out["accepted"] = started and qmp_error is None
    return out


#: The inventories discovery found before the L2 cases started (the devices are free then).
INVENTORIES: dict[str, HostInventory] = {}


def _guard(sock: Path, case: dict[str, Any], device: dict[str, str]) -> dict[str, Any]:
    """``viommu hotplug --dry-run`` through the library, against the discovered host."""
    from viommu.frontends.qmp_guard import HotplugRequest, guarded_hotplug

    backend = "iommufd" if case["backend"] == "iommufd" else "vfio"
    inventory = INVENTORIES.get(backend)
    if inventory is None:
        return {"exception": f"no {backend} inventory"}
    request = HotplugRequest(host=device["host"], id=device["id"], iommufd=device.get("iommufd"),
                             bus=device["bus"])
    start = time.monotonic()
    try:
        result = guarded_hotplug(sock, request, inventory, dry_run=True, timeout=30.0)
    except Exception as exc:  # a guard failure is a finding, recorded for the test
        return {"exception": f"{type(exc).__name__}: {exc}"}
    data = result.to_json()
    data["seconds"] = round(time.monotonic() - start, 3)
    return data


def _pci_ids(qmp: Any) -> list[str]:
    ids: list[str] = []

    def walk(devices: list[dict[str, Any]]) -> None:
        for d in devices:
            ids.append(str(d.get("qdev_id", "")))
            bridge = d.get("pci_bridge")
            if bridge:
                walk(bridge.get("devices", []))

    for bus in qmp.cmd("query-pci"):
        walk(bus["devices"])
    return ids


def run_l2(results: Results, config: dict[str, Any]) -> None:
    """Every case; cases on different host devices run two at a time (L1 has two vCPUs)."""
    cases = config.get("l2_cases", [])
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "l2"
    work.mkdir(exist_ok=True)
    by_host: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        by_host.setdefault(case["host"], []).append(case)
    done: dict[str, Any] = {}
    lock = threading.Lock()
    queues = list(by_host.values())

    def worker(queue_set: list[list[dict[str, Any]]]) -> None:
        for queue in queue_set:
            for case in queue:
                outcome = run_l2_case(case, config["qemu"], work)
                with lock:
                    done[case["name"]] = outcome
                    results.data["l2"] = done
                    results.save("l2")

    lanes: list[list[list[dict[str, Any]]]] = [[], []]
    for queue in sorted(queues, key=len, reverse=True):
        min(lanes, key=lambda lane: sum(len(q) for q in lane)).append(queue)
    threads = [threading.Thread(target=worker, args=(lane,)) for lane in lanes if lane]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.data["l2"] = done


def main(argv: list[str]) -> int:
    outdir = Path(argv[0])
    config = json.loads((outdir / "config.json").read_text())
    results = Results(outdir)
    results.data["kernel"] = os.uname().release
    results.data["cmdline"] = Path("/proc/cmdline").read_text().strip()
    try:
        results.data["sysfs"] = sysfs_extras()
        before = host_state()
        with timed(results, "discovery"):
            inventories = run_discovery(results, outdir)
        INVENTORIES.update(inventories)
        after = host_state()
        results.data["state_before"] = before
        results.data["state_after"] = after
        results.save("discovery")
        with timed(results, "mapping"):
            run_mapping(results, inventories)
        results.data["state_after_mapping"] = host_state()
        results.save("mapping")
        with timed(results, "l2"):
            run_l2(results, config)
        results.save("done")
    except Exception:
        results.data["traceback"] = traceback.format_exc()
        results.save("crashed")
        print(results.data["traceback"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
