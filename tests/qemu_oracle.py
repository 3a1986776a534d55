"""Ask the real QEMU binary: the oracle for registers and refusals.

Each question starts ``qemu-system-x86_64 -M <machine> -accel tcg -S`` with
the HMP monitor on stdio, so devices are realized but no vCPU runs, reads
guest-physical memory with ``xp`` and quits (about 0.1 s a run). A device
QEMU refuses makes it exit non-zero before the monitor starts; the refusal
is its last ``qemu-system-x86_64: ...`` line on stderr.

Expected values in the differential tests come from here, never from the
code under test.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

BINARY = "qemu-system-x86_64"
#: The release the differential tests are written against (Debian bookworm-backports).
WANTED_VERSION = (10, 0)

#: intel-iommu's register file sits at 0xfed90000 on q35; CAP at +0x08, ECAP at +0x10.
VTD_BASE = 0xFED90000
VTD_CAP = VTD_BASE + 0x08
VTD_ECAP = VTD_BASE + 0x10

#: The monitor redraws its line editor with ANSI sequences while echoing input.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: ``00000000fed90008: 0x00d2008c222f0606`` as printed by ``xp /1gx``.
_XP_LINE = re.compile(r"^([0-9a-f]{16}): 0x([0-9a-f]{16})\s*$", re.MULTILINE)
_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)")
_PREFIX = f"{BINARY}: "
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class QemuBinary:
    path: str
    version: tuple[int, int, int]
    banner: str


@functools.cache
def find_qemu() -> QemuBinary | str:
    """The usable binary, or a sentence saying why there is none."""
    path = shutil.which(BINARY)
    if path is None:
        return f"{BINARY} not found on PATH"
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} --version failed: {exc}"
    m = _VERSION.search(out)
    if m is None:
        return f"{path} --version printed no version: {out.strip()[:80]!r}"
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if version[:2] != WANTED_VERSION:
        wanted = ".".join(map(str, WANTED_VERSION))
        return f"{path} is QEMU {'.'.join(map(str, version))}, the oracle needs {wanted}.x"
    return QemuBinary(path, version, out.splitlines()[0])


def _binary() -> str:
    found = find_qemu()
    if isinstance(found, str):
        raise RuntimeError(found)
    return found.path


@dataclass(frozen=True)
class Outcome:
    """What one QEMU run said."""

    devices: tuple[str, ...]
    machine: str
    #: Address -> 64-bit value for every ``xp`` read that printed a value.
    reads: dict[int, int]
    #: QEMU's refusal with the ``qemu-system-x86_64: `` and ``-device STRING: `` prefixes
    #: removed; None when the machine started.
    error: str | None
    #: The option QEMU blamed (``-device intel-iommu,x-flts=on``), if any.
    location: str | None
    returncode: int
    stderr: str

    @property
    def refused(self) -> bool:
        return self.error is not None

    @property
    def cap(self) -> int:
        return self.reads[VTD_CAP]

    @property
    def ecap(self) -> int:
        return self.reads[VTD_ECAP]


def _split_error(stderr: str, options: Sequence[str]) -> tuple[str | None, str | None]:
    """The last non-warning error line, split into (location, message)."""
    lines = [ln[len(_PREFIX) :] for ln in stderr.splitlines() if ln.startswith(_PREFIX)]
    errors = [ln for ln in lines if not ln.startswith("warning: ") and ": warning: " not in ln]
    if not errors:
        return None, stderr.strip() or "QEMU exited without an error message"
    text = errors[-1]
    for opt in options:
        head = f"{opt}: "
        if text.startswith(head):
            return opt, text[len(head) :]
    return None, text


def run_machine(
    devices: Iterable[str],
    *,
    machine: str = "q35",
    reads: Iterable[int] = (VTD_CAP, VTD_ECAP),
) -> Outcome:
    """Start a paused TCG machine with ``-device`` for each of ``devices`` and read ``reads``."""
    devs = tuple(devices)
    addrs = tuple(reads)
    argv = [_binary(), "-M", machine, "-accel", "tcg", "-S", "-display", "none", "-nodefaults"]
    argv += ["-monitor", "stdio"]
    options = [f"-M {machine}"]
    for dev in devs:
        argv += ["-device", dev]
        options.append(f"-device {dev}")
    script = "".join(f"xp /1gx 0x{a:x}\n" for a in addrs) + "quit\n"
    proc = subprocess.run(
        argv, input=script, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    text = _ANSI.sub("", proc.stdout).replace("\r", "")
    values = {int(a, 16): int(v, 16) for a, v in _XP_LINE.findall(text)}
    if proc.returncode == 0 and all(a in values for a in addrs):
        return Outcome(devs, machine, values, None, None, 0, proc.stderr)
    location, error = _split_error(proc.stderr, options)
    return Outcome(devs, machine, values, error, location, proc.returncode, proc.stderr)


def read_vtd_regs(device: str, *, machine: str = "q35") -> tuple[int, int] | str:
    """(CAP, ECAP) of an intel-iommu ``-device`` string, or QEMU's refusal text."""
    out = run_machine([device], machine=machine)
    if out.error is not None:
        return out.error
    return out.cap, out.ecap


def run_many(
    cases: Iterable[tuple[str, Sequence[str]]],
    *,
    workers: int = 2,
    reads: Iterable[int] = (VTD_CAP, VTD_ECAP),
) -> list[Outcome]:
    """:func:`run_machine` for each ``(machine, devices)``, ``workers`` QEMU processes at a time.

    Results come back in the order of ``cases``; ``reads=()`` only asks whether QEMU starts.
    """
    addrs = tuple(reads)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda case: run_machine(case[1], machine=case[0], reads=addrs), cases))


def qom_get(device: str, props: Sequence[str], *, machine: str = "q35") -> dict[str, object]:
    """Realize ``device`` (which must carry ``id=``) on a paused machine and read ``props``
    with QMP ``qom-get`` on ``/machine/peripheral/<id>``: the values after machine compat."""
    import asyncio
    import os
    import tempfile

    from qemu.qmp import QMPClient, QMPError

    ident = dict(p.partition("=")[::2] for p in device.split(",")[1:]).get("id")
    if not ident:
        raise ValueError(f"{device!r} needs an id= to be found over QMP")

    async def ask(sock: str) -> dict[str, object]:
        # The socket file appears at bind(), before QEMU listens and greets: retry
        # the whole handshake until it answers.
        for _ in range(250):
            client = QMPClient("viommu-oracle")
            try:
                await client.connect(sock)
                break
            except (OSError, EOFError, QMPError):
                await asyncio.sleep(0.02)
        else:
            raise RuntimeError(f"QEMU never answered on its QMP socket for {device!r}")
        out: dict[str, object] = {}
        for prop in props:
            out[prop] = await client.execute(
                "qom-get", {"path": f"/machine/peripheral/{ident}", "property": prop}
            )
        try:
            await client.execute("quit")
            await client.disconnect()
        except (EOFError, QMPError):
            pass  # QEMU may close the socket before it answers "quit"
        return out

    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        argv = [_binary(), "-M", machine, "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
                "-qmp", f"unix:{sock},server=on,wait=off", "-device", device]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            return asyncio.run(ask(sock))
        finally:
            try:
                proc.wait(timeout=_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
