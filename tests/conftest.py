"""Shared pytest wiring.

Tests that need the real QEMU 10.0 binary carry ``@pytest.mark.qemu``. When
the binary is absent (or another version) they skip, unless the environment
says ``VIOMMU_REQUIRE_QEMU=1`` (CI does), in which case they fail: CI must
never pass by skipping the oracle.

Tests of the real-kernel lab carry ``@pytest.mark.lab``: they need QEMU and
the lab kernel (``$VIOMMU_LAB_KERNEL`` or ``lab/build-kernel.sh``'s cache)
and skip or fail the same way. A failing lab test shows the guest console
tail; the session ends with the lab's timings and L2 verdicts (also written
to ``lab/out/report.md``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from qemu_oracle import QemuBinary, find_qemu

REQUIRE_ENV = "VIOMMU_REQUIRE_QEMU"
LAB_DIR = Path(__file__).resolve().parent.parent / "lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))


def _stop(why: str) -> NoReturn:
    """A missing real component: fail under VIOMMU_REQUIRE_QEMU=1 (CI), else skip."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(why)


def _qemu_or_stop() -> QemuBinary:
    found = find_qemu()
    return found if isinstance(found, QemuBinary) else _stop(found)


def _lab_kernel_or_stop() -> Path:
    from harness import find_kernel

    found = find_kernel()
    return found if isinstance(found, Path) else _stop(found)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("qemu") is not None or item.get_closest_marker("lab") is not None:
        _qemu_or_stop()
    if item.get_closest_marker("lab") is not None:
        _lab_kernel_or_stop()


@pytest.fixture(scope="session")
def lab_kernel() -> Path:
    """The lab guest's bzImage (skip or fail as above when absent)."""
    return _lab_kernel_or_stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("lab") is not None:
        run = getattr(item, "funcargs", {}).get("l1")
        if run is not None and hasattr(run, "console_tail"):
            report.sections.append((f"guest console tail ({run.config.name})", run.console_tail(60)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    harness = sys.modules.get("harness")
    if harness is None or not harness.REPORT.runs:
        return
    text = harness.REPORT.render()
    path = harness.REPORT.write()
    terminalreporter.write_sep("=", "viommu lab")
    terminalreporter.write_line(text.rstrip())
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture(scope="session")
def qemu_binary() -> QemuBinary:
    """The QEMU 10.0 binary the oracle runs (skip or fail as above when absent)."""
    return _qemu_or_stop()
