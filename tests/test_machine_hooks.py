"""Where QEMU's caching-mode refusals come from, per version, and that `none` keeps them.

Texts and origins: qemu-framework.md §4.1 step 1. Before 10.2 a hotplug is refused by
pc_hotplug_allowed() and a cold-plugged device ends QEMU at machine-init-done, both without
the "vfio NAME: Failed to set vIOMMU: " prefix; from 10.2 set_iommu_device refuses it, with
the prefix. The checks predate 9.1, so policy `none` (no set_iommu_device checks) keeps them.
"""

from __future__ import annotations

import pytest

from viommu.host.profiles import load_profile
from viommu.machine import Machine, Policy
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.vm import VfioDev

HOST = load_profile("intel-icelake-sp")  # 48-bit: aw-bits never refuses here
DEV = VfioDev(host="0000:18:00.1", id="nic0")
SET = "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
DONE = "We need to set caching-mode=on for intel-iommu to enable device assignment with IOMMU protection."


def machine(version: str, policy: Policy) -> Machine:
    return Machine(DeviceSpec.parse("intel-iommu"), version=QemuVersion.parse(version), policy=policy)


@pytest.mark.parametrize("policy", [Policy.CHECK, Policy.NONE])
def test_before_10_2_the_machine_hooks_refuse(policy: Policy) -> None:
    cold = machine("10.0", policy)
    assert cold.cold_plug(DEV, HOST).accepted
    done = cold.machine_done()
    assert (done.accepted, done.code, done.message) == (False, "caching-mode-required", DONE)
    hot = machine("10.0", policy)
    assert hot.machine_done().accepted
    plug = hot.hotplug(DEV, HOST)
    assert (plug.accepted, plug.code, plug.message) == (False, "caching-mode-required", SET)


def test_from_10_2_set_iommu_device_refuses_with_the_vfio_prefix() -> None:
    m = machine("10.2", Policy.CHECK)
    plug = m.cold_plug(DEV, HOST)
    assert (plug.accepted, plug.message) == (False, f"vfio 0000:18:00.1: Failed to set vIOMMU: {SET}")
    assert m.machine_done().accepted


def test_none_skips_set_iommu_device_from_10_2() -> None:
    m = machine("10.2", Policy.NONE)
    assert m.cold_plug(DEV, HOST).accepted and m.machine_done().accepted
