"""Every command line ``viommu plan`` emits is started by the real QEMU 10.0 binary.

Each VM of tests/data/check that has a vIOMMU and passthrough devices is planned for the
hosts its devices exist on; the emitted command line, with each vfio-pci device replaced by an
emulated ``edu`` device (no VFIO device exists here), must be accepted by QEMU: started paused
under TCG, then quit from the monitor.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qemu_oracle import QemuBinary
from viommu.frontends import load_vm
from viommu.frontends.emit import rewrite_argv
from viommu.frontends.qemu_argv import opt_parts
from viommu.host.profiles import load_profile
from viommu.models.base import QemuVersion
from viommu.preflight import plan_vm

DATA = Path(__file__).parent / "data" / "check"

#: VM file -> the hosts it is planned for (profiles holding its devices).
CASES = {
    "client-aw48.cmd": ["intel-cometlake-u-xps13-7390", "intel-arrowlake-s-265k"],
    "phys-bits-42.cmd": ["intel-cometlake-u-xps13-7390"],
    "eight-devices.cmd": ["intel-cometlake-u-xps13-7390", "intel-icelake-u-xps13-9300"],
}


def _with_edu(argv: list[str]) -> list[str]:
    """vfio-pci devices become edu devices at the same place (bus=, addr=, id= kept)."""
    out = []
    for i, word in enumerate(argv):
        if i > 0 and argv[i - 1] == "-device" and opt_parts(word)[0] == "vfio-pci":
            kept = [p for p in opt_parts(word)[1:] if p.split("=", 1)[0] in ("bus", "addr", "id")]
            word = ",".join(["edu", *kept])
        out.append(word)
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(CASES))
def test_planned_command_line_starts(name: str, qemu_binary: QemuBinary) -> None:
    vm = load_vm(str(DATA / name))
    report = plan_vm(vm, [load_profile(p) for p in CASES[name]], version=QemuVersion(10, 0))
    assert report.fits and report.plan is not None, report.message
    argv = _with_edu(rewrite_argv(vm, report.plan.spec))
    assert argv[0] == "qemu-system-x86_64"
    full = [qemu_binary.path, *argv[1:], "-S", "-accel", "tcg", "-display", "none", "-nodefaults",
            "-monitor", "stdio"]
    done = subprocess.run(full, input="quit\n", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(full)}\n{done.stderr}"
    assert "(qemu)" in done.stdout  # the monitor came up: the machine was built
