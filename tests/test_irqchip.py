"""The accelerator and kernel-irqchip mode of a VM reach the intel-iommu model.

Expected ECAPs are the brief's table (qemu-framework.md §3.4: TCG defaults 0xF00F4A,
KVM split irqchip 0xF00F5A with EIM, KVM full in-kernel irqchip 0xF42 with IR off);
q35's default under KVM is the full in-kernel irqchip (``default_kernel_irqchip_split``
is false in hw/i386/pc_q35.c).
"""

from __future__ import annotations

from pathlib import Path

from viommu.frontends import load_vm
from viommu.host.profiles import load_profile
from viommu.machine import plan_properties, run_cold
from viommu.models.base import DeviceSpec, QemuVersion

ROOT = Path(__file__).resolve().parents[1]


def test_proxmox_kvm_binary_and_split_irqchip() -> None:
    vm = load_vm(str(ROOT / "examples" / "proxmox-win11.cmd"))
    assert (vm.accel, vm.kernel_irqchip, vm.irqchip) == ("kvm", "split", "split")
    host = load_profile("intel-cometlake-u-xps13-7390")
    assert vm.viommu is not None
    plan = plan_properties(vm.viommu, QemuVersion(10, 0), [(d, host) for d in vm.vfio], irqchip=vm.irqchip)
    assert plan.spec.props["eim"] == "on" and plan.spec.props["intremap"] == "on"


def test_irqchip_modes_give_qemus_ecaps() -> None:
    spec = DeviceSpec.parse("intel-iommu,caching-mode=on")
    ecaps = {mode: run_cold(spec, [], irqchip=mode).guest_state()["ecap"] for mode in ("off", "split", "on")}
    assert ecaps == {
        "off": "0x0000000000f00f4a",
        "split": "0x0000000000f00f5a",
        "on": "0x0000000000000f42",
    }
