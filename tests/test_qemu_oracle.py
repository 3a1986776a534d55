"""The oracle itself reads what QEMU prints (values checked against the brief's §3.4/§3.7)."""

from __future__ import annotations

import pytest

from qemu_oracle import QemuBinary, read_vtd_regs, run_machine

pytestmark = pytest.mark.qemu


def test_binary_is_10_0(qemu_binary: QemuBinary) -> None:
    assert qemu_binary.version[:2] == (10, 0)


def test_default_intel_iommu_registers() -> None:
    # qemu-framework brief §3.4: 10.0 defaults (aw 48) CAP 0x00D2008C222F0606,
    # TCG ECAP (IR, no EIM, PT) 0xF00F4A.
    assert read_vtd_regs("intel-iommu") == (0x00D2008C222F0606, 0xF00F4A)


def test_refusal_text_without_prefix() -> None:
    assert read_vtd_regs("intel-iommu,x-flts=on") == "x-flts is only available in scalable mode"


def test_refusal_location_names_the_option() -> None:
    out = run_machine(["intel-iommu,aw-bits=40"])
    assert out.refused
    assert out.location == "-device intel-iommu,aw-bits=40"
    assert out.error == "Legacy mode: supported values for aw-bits are: 39, 48"
