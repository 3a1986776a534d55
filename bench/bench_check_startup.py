"""Whole-process time of ``viommu check`` for an 8-device VM against a snapshot.

Target (issue 5): at most 3 times ``python3 -c pass``, both measured alternately in the same
run so that machine load hits them alike. Run: ``python bench/bench_check_startup.py [ROUNDS]``.
The VM is ``tests/data/check/eight-devices.cmd``; the snapshot is the Comet Lake profile
written out once with ``viommu inspect --json`` (so the snapshot backend reads a file).
Bytecode is written during the warm-up runs, as it is for an installed package.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VM = ROOT / "tests" / "data" / "check" / "eight-devices.cmd"
PROFILE = "intel-cometlake-u-xps13-7390"


def _run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return elapsed


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    # An installed package has its bytecode compiled (pip does it); let the warm-up write it here too.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT / "src")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "host.json"
        snapshot.write_bytes(subprocess.run(
            [sys.executable, "-m", "viommu", "inspect", "--profile", PROFILE, "--json"],
            env=env, capture_output=True, check=True).stdout)
        viommu = str(Path(sys.executable).with_name("viommu"))  # the console script, as installed
        check = [viommu, "check", str(VM), "--host", str(snapshot), "--json"]
        baseline = [sys.executable, "-c", "pass"]
        _run(check, env), _run(baseline, env)  # warm the page cache and the .pyc files
        ours: list[float] = []
        base: list[float] = []
        for _ in range(rounds):
            ours.append(_run(check, env))
            base.append(_run(baseline, env))
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"rounds: {rounds}")
    print(f"python3 -c pass       median {m_base * 1000:7.1f} ms")
    print(f"viommu check (8 dev)  median {m_ours * 1000:7.1f} ms")
    print(f"ratio {m_ours / m_base:.2f} (target <= 3.00)")


if __name__ == "__main__":
    main()
