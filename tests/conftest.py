"""Shared pytest wiring.

Tests that need the real QEMU 10.0 binary carry ``@pytest.mark.qemu``. When
the binary is absent (or another version) they skip, unless the environment
says ``VIOMMU_REQUIRE_QEMU=1`` (CI does), in which case they fail: CI must
never pass by skipping the oracle.
"""

from __future__ import annotations

import os

import pytest

from qemu_oracle import QemuBinary, find_qemu

REQUIRE_ENV = "VIOMMU_REQUIRE_QEMU"


def _qemu_or_stop() -> QemuBinary:
    found = find_qemu()
    if isinstance(found, QemuBinary):
        return found
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{found} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(found)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("qemu") is not None:
        _qemu_or_stop()


@pytest.fixture(scope="session")
def qemu_binary() -> QemuBinary:
    """The QEMU 10.0 binary the oracle runs (skip or fail as above when absent)."""
    return _qemu_or_stop()
