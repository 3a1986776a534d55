"""The real-kernel lab: boot a Linux 6.12 guest (L1) under QEMU TCG with a given vIOMMU.

L0 (this host) starts ``qemu-system-x86_64`` paused with the vIOMMU under
test, three emulated ``edu`` devices (on the root bus, on a PCIe root port,
and behind a PCIe-to-PCI bridge), the host's ``/`` shared read-only over 9p
as the guest's root filesystem and a writable 9p share for results. Before
letting the guest run it reads the vIOMMU's registers over HMP. The guest's
init (``lab/guest-init.sh``) binds the edu devices to vfio-pci and runs
``lab/guest_probe.py`` with this host's Python, which writes JSON into the
results share and powers the guest off.

``boot(config, kernel=...)`` does all that once and returns an
:class:`L1Run`: the guest's results, the L0 registers, the console log and
the timings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab"
OUT = LAB / "out"

#: q35 places intel-iommu's register file here; CAP at +0x08, ECAP at +0x10.
VTD_CAP = 0xFED90008
VTD_ECAP = 0xFED90010

#: Guest PCI addresses of the edu devices (fixed by the topology below).
EDU_ROOT = "0000:00:03.0"
EDU_PORT = "0000:01:00.0"
EDU_BRIDGE = "0000:03:01.0"

#: Kernel arguments every boot gets. allow_unsafe_interrupts: the emulated units have no
#: interrupt remapping unless intremap=on, and VFIO/iommufd refuse such groups otherwise.
BASE_CMDLINE = (
    "console=ttyS0 rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose ro "
    "panic=-1 vfio_iommu_type1.allow_unsafe_interrupts=1 iommufd.allow_unsafe_interrupts=1 "
    "quiet loglevel=4"
)

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class L2Case:
    """One L2 QEMU run inside the guest: a vIOMMU, a VFIO backend and a plug time."""

    name: str
    #: The L2 vIOMMU ``-device`` string, or None for none.
    viommu: str | None
    #: ``legacy`` (VFIO container) or ``iommufd`` (``-object iommufd``).
    backend: str
    #: ``cold`` (``-device`` on the command line) or ``hot`` (QMP ``device_add``).
    plug: str
    #: The L1 PCI address of the edu device passed through.
    host: str = EDU_ROOT


@dataclass(frozen=True)
class L1Config:
    """One L1 boot: L0's vIOMMU and the guest kernel's IOMMU options."""

    name: str
    #: L0's vIOMMU ``-device`` string (intel-iommu first on the command line, as QEMU wants).
    viommu: str
    #: Extra kernel arguments (``intel_iommu=on,sm_on`` ...).
    cmdline: str = "intel_iommu=on"
    l2_cases: tuple[L2Case, ...] = ()
    #: Seconds the whole boot may take before L0 kills the guest.
    timeout: float = 420.0

    @property
    def is_intel(self) -> bool:
        return self.viommu.split(",", 1)[0] == "intel-iommu"


@dataclass
class L1Run:
    """What one boot produced."""

    config: L1Config
    outdir: Path
    argv: list[str]
    #: (CAP, ECAP) read over HMP before the guest ran (intel-iommu only).
    registers: tuple[int, int] | None = None
    #: The guest's ``results.json`` (None when it never wrote one).
    results: dict[str, Any] | None = None
    #: Seconds from ``cont`` until the guest's init wrote its first file.
    boot_s: float | None = None
    #: Seconds from QEMU's start until it exited (or was killed).
    total_s: float = 0.0
    returncode: int | None = None
    #: Why the run failed (timeout, QEMU refused the configuration, no results), or None.
    error: str | None = None
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def console(self) -> Path:
        return self.outdir / "console.log"

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        tail = text.splitlines()[-lines:]
        stderr = self.stderr.strip()
        return "\n".join(tail) + (f"\n--- L0 QEMU stderr ---\n{stderr}" if stderr else "")

    def inventory_text(self, backend: str) -> str | None:
        path = self.outdir / f"inventory-{backend}.json"
        return path.read_text() if path.exists() else None


def kernel_cache_key(config_path: Path = LAB / "kernel.config") -> str | None:
    """The cache key ``build-kernel.sh`` uses (source package version + config), or None."""
    try:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "linux-source-6.12"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    digest = hashlib.sha256(version.encode() + b"\n" + config_path.read_bytes())
    return digest.hexdigest()[:16]


def find_kernel() -> Path | str:
    """The lab bzImage (``$VIOMMU_LAB_KERNEL``, else the build cache), or why there is none."""
    env = os.environ.get("VIOMMU_LAB_KERNEL")
    if env:
        return Path(env) if Path(env).is_file() else f"VIOMMU_LAB_KERNEL={env} is not a file"
    key = kernel_cache_key()
    if key is None:
        return "linux-source-6.12 is not installed (see .ci/run) and VIOMMU_LAB_KERNEL is unset"
    cache = Path(os.environ.get("VIOMMU_CACHE", Path.home() / ".cache/viommu"))
    image = cache / "kernel" / key / "bzImage"
    if image.is_file():
        return image
    return f"no lab kernel at {image}: run lab/build-kernel.sh (about 15-25 minutes) or set VIOMMU_LAB_KERNEL"


def l0_argv(config: L1Config, kernel: Path, outdir: Path, qemu: str = QEMU) -> list[str]:
    """The L0 command line for ``config``."""
    init = LAB / "guest-init.sh"
    append = f"root=hostroot {BASE_CMDLINE} init={init} {config.cmdline}".strip()
    return [
        qemu, "-M", "q35", "-accel", "tcg", "-smp", "1", "-m", "2G",
        "-nodefaults", "-display", "none", "-no-reboot", "-S",
        # The vIOMMU first: intel-iommu must exist before the PCI devices it translates.
        "-device", config.viommu,
        "-device", "edu,bus=pcie.0,addr=0x3",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x4,chassis=1",
        "-device", "edu,bus=rp1",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,addr=0x5,chassis=2",
        "-device", "pcie-pci-bridge,id=br1,bus=rp2",
        "-device", "edu,bus=br1,addr=0x1",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={outdir},mount_tag=results,security_model=none",
        "-kernel", str(kernel), "-append", append,
        "-serial", f"file:{outdir / 'console.log'}",
        "-qmp", f"unix:{outdir / 'qmp.sock'},server=on,wait=off",
    ]


def _write_guest_config(config: L1Config, outdir: Path, qemu: str) -> None:
    qemu_path = shutil.which(qemu) or qemu
    (outdir / "env.sh").write_text(
        f"PYTHON='{sys.executable}'\nREPO='{REPO}'\n"
    )
    (outdir / "config.json").write_text(json.dumps({
        "name": config.name,
        "qemu": qemu_path,
        "l2_cases": [asdict(c) for c in config.l2_cases],
    }, indent=2))


def _hmp(qmp: Any, command: str) -> str:
    """One HMP command through QMP's human-monitor-command; its printed output."""
    return str(qmp.cmd("human-monitor-command", **{"command-line": command}))


def _read_xp(text: str) -> int:
    # "00000000fed90008: 0x00d2008c222f0606"
    return int(text.strip().split(":", 1)[1].strip(), 16)


def _save_meta(run: L1Run) -> None:
    meta = {"registers": run.registers, "boot_s": run.boot_s, "total_s": run.total_s,
            "returncode": run.returncode, "error": run.error, "argv": run.argv}
    (run.outdir / "run.json").write_text(json.dumps(meta, indent=2))


def reuse(config: L1Config, outdir: Path) -> L1Run | None:
    """A finished earlier run of ``config`` in ``outdir`` (``VIOMMU_LAB_REUSE=1``: iterate on the
    assertions without booting again), or None."""
    try:
        meta = json.loads((outdir / "run.json").read_text())
        results = json.loads((outdir / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    regs = meta["registers"]
    run = L1Run(config, outdir, meta["argv"], registers=None if regs is None else (regs[0], regs[1]),
                results=results, boot_s=meta["boot_s"], total_s=meta["total_s"],
                returncode=meta["returncode"], error=meta["error"])
    run.stderr = (outdir / "qemu-stderr.txt").read_text(errors="replace")
    return run


def boot(config: L1Config, *, kernel: Path, outdir: Path | None = None, qemu: str = QEMU) -> L1Run:
    """Boot L1 once with ``config``; always returns (failures are in ``L1Run.error``)."""
    outdir = outdir if outdir is not None else OUT / config.name
    if os.environ.get("VIOMMU_LAB_REUSE") == "1":
        earlier = reuse(config, outdir)
        if earlier is not None:
            return earlier
    run = _boot(config, kernel=kernel, outdir=outdir, qemu=qemu)
    _save_meta(run)
    return run


def _boot(config: L1Config, *, kernel: Path, outdir: Path, qemu: str) -> L1Run:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    _write_guest_config(config, outdir, qemu)
    argv = l0_argv(config, kernel, outdir, qemu)
    run = L1Run(config, outdir, argv)
    start = time.monotonic()
    stderr_path = outdir / "qemu-stderr.txt"
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        sock = outdir / "qmp.sock"
        while not sock.exists() and proc.poll() is None and time.monotonic() - start < 30:
            time.sleep(0.05)
        if proc.poll() is not None:
            run.error = "L0 QEMU exited before its monitor came up (it refused the configuration?)"
            return run
        qmp = QEMUMonitorProtocol(str(sock))
        qmp.connect()
        try:
            if config.is_intel:
                cap = _read_xp(_hmp(qmp, f"xp /1gx 0x{VTD_CAP:x}"))
                ecap = _read_xp(_hmp(qmp, f"xp /1gx 0x{VTD_ECAP:x}"))
                run.registers = (cap, ecap)
            qmp.cmd("cont")
            resumed = time.monotonic()
            booted = outdir / "booted"
            timeout = float(os.environ.get("VIOMMU_LAB_TIMEOUT", config.timeout))
            deadline = start + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if run.boot_s is None and booted.exists():
                    run.boot_s = time.monotonic() - resumed
                time.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                qmp.close()
        if proc.poll() is None:
            run.error = f"the guest did not power off within {time.monotonic() - start:.0f} s"
            proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run.total_s = time.monotonic() - start
        run.returncode = proc.returncode
        run.stderr = stderr_path.read_text(errors="replace")
    results = outdir / "results.json"
    if results.exists():
        try:
            run.results = json.loads(results.read_text())
        except json.JSONDecodeError as exc:
            run.error = run.error or f"results.json is not JSON: {exc}"
    if run.results is None:
        run.error = run.error or "the guest wrote no results.json"
    elif run.results.get("phase") != "done":
        run.error = run.error or f"the guest stopped in phase {run.results.get('phase')!r}"
    return run


def main(argv: list[str]) -> int:
    """``python lab/harness.py CONFIG``: boot one configuration from ``lab/configs.py`` by name."""
    from configs import CONFIGS  # type: ignore[import-not-found]

    kernel = find_kernel()
    if isinstance(kernel, str):
        print(kernel, file=sys.stderr)
        return 2
    names = argv or [c.name for c in CONFIGS]
    for config in CONFIGS:
        if config.name not in names:
            continue
        run = boot(config, kernel=kernel)
        print(f"{config.name}: boot {run.boot_s} s, total {run.total_s:.1f} s, error {run.error}")
        if run.error:
            print(run.console_tail())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(LAB))
    raise SystemExit(main(sys.argv[1:]))


@dataclass
class Report:
    """What the lab tests measured: per-boot timings and every L2 case with both verdicts."""

    runs: list[L1Run] = field(default_factory=list)
    #: (config, case, seconds, QEMU verdict, viommu verdict, agree)
    l2_rows: list[tuple[str, str, float, str, str, bool | None]] = field(default_factory=list)
    mapping_rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)

    def render(self) -> str:
        lines = ["# viommu lab report", "", "## L1 boots", "",
                 "| config | boot s | discovery s | mapping s | L2 s | total s | error |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for run in self.runs:
            t = (run.results or {}).get("timings", {})
            boot = "-" if run.boot_s is None else f"{run.boot_s:.1f}"
            lines.append(
                f"| {run.config.name} | {boot} | {t.get('discovery', '-')} | {t.get('mapping', '-')} "
                f"| {t.get('l2', '-')} | {run.total_s:.1f} | {run.error or ''} |"
            )
        if self.mapping_rows:
            lines += ["", "## Mapping probes (kernel errno vs HostDomain model)", "",
                      "| config | backend | device | point | kernel | model |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {' | '.join(row)} |" for row in self.mapping_rows]
        if self.l2_rows:
            lines += ["", "## L2 cases (QEMU 10.0 vs viommu)", "",
                      "| config | case | s | QEMU | viommu | agree |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for cfg, case, seconds, qemu, ours, agree in self.l2_rows:
                mark = "-" if agree is None else ("yes" if agree else "NO")
                lines.append(f"| {cfg} | {case} | {seconds:.1f} | {qemu} | {ours} | {mark} |")
        return "\n".join(lines) + "\n"

    def write(self, path: Path = OUT / "report.md") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render())
        return path


#: Filled by tests/test_lab.py, printed and written at the end of the session.
REPORT = Report()
