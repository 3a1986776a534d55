"""``viommu regs``: the DESIGN.md contract, exit codes, and QEMU's own words on refusal."""

from __future__ import annotations

import json

import pytest

from qemu_oracle import run_machine
from viommu.cli import main


def regs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["regs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = regs(capsys, "intel-iommu,caching-mode=on", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    # DESIGN.md: {"model": "intel-iommu", "cap": "0x…", "ecap": "0x…", …}, in that order.
    assert list(data)[:3] == ["model", "cap", "ecap"]
    # Brief §3.4: 10.0 "aw 48 + caching-mode" CAP; TCG ECAP defaults.
    assert data["model"] == "intel-iommu"
    assert int(data["cap"], 16) == 0x00D2008C222F0686
    assert int(data["ecap"], 16) == 0xF00F4A
    assert data["decoded"]["cap"]["fields"]["CM"] == 1
    assert data["decoded"]["cap"]["fields"]["MGAW"] == 47


@pytest.mark.parametrize(
    ("argv", "cap"),
    [
        # Brief §3.4 "defaults, aw 39": 9.1/9.2 defaults and 10.0 with a <=9.1 machine type.
        (("--qemu-version", "9.1"), 0x00D2008C22260206),
        (("--machine", "pc-q35-9.1"), 0x00D2008C22260206),
        (("--qemu-version", "10.2"), 0x80D2008C222F0606),
        (("--qemu-version", "11.0.0"), 0x80D2008C222F0646),
    ],
)
def test_versions_and_machines(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], cap: int) -> None:
    code, out, _ = regs(capsys, "intel-iommu", "--json", *argv)
    assert code == 0
    assert int(json.loads(out)["cap"], 16) == cap


def test_kernel_irqchip_split(capsys: pytest.CaptureFixture[str]) -> None:
    # Brief §3.6: a 10.2-ish KVM guest with caching-mode shows "cap 80d2008c222f0686 ecap f00f5a".
    code, out, _ = regs(capsys, "intel-iommu,caching-mode=on", "--qemu-version", "10.2",
                        "--kernel-irqchip", "split", "--json")
    assert code == 0
    data = json.loads(out)
    assert (int(data["cap"], 16), int(data["ecap"], 16)) == (0x80D2008C222F0686, 0xF00F5A)


def test_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    first = regs(capsys, "intel-iommu,x-scalable-mode=on,x-pasid-mode=on", "--json")
    assert regs(capsys, "intel-iommu,x-scalable-mode=on,x-pasid-mode=on", "--json") == first
    human = regs(capsys, "intel-iommu,x-scalable-mode=on,x-pasid-mode=on")
    assert regs(capsys, "intel-iommu,x-scalable-mode=on,x-pasid-mode=on") == human


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = regs(capsys, "intel-iommu,aw-bits=39")
    assert code == 0
    assert "CAP   0x00d2008c22260206" in out  # brief §3.4 "defaults, aw 39"
    assert "ECAP  0x0000000000f00f4a" in out
    assert "SAGAW" in out and "MGAW" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("intel-iommu,x-flts=on",),
         "viommu regs: -device intel-iommu,x-flts=on: x-flts is only available in scalable mode\n"),
        (("intel-iommu,aw-bits=40", "--qemu-version", "9.1"),
         "viommu regs: -device intel-iommu,aw-bits=40: Supported values for aw-bits are: 39, 48\n"),
        (("intel-iommu", "--qemu-version", "8.2"),
         "viommu regs: --qemu-version: no intel-iommu profile for QEMU 8.2; "
         "profiles: 9.1, 9.2, 10.0, 10.1, 10.2, 11.0\n"),
        (("intel-iommu", "--qemu-version", "ten"),
         "viommu regs: --qemu-version: 'ten' is not a QEMU version like 10.0\n"),
        (("e1000e",),
         "viommu regs: -device e1000e: 'e1000e' is not a vIOMMU that viommu models; known: "
         "intel-iommu, virtio-iommu-pci, arm-smmuv3\n"),
        (("virtio-iommu-pci,aw-bits=20",),
         "viommu regs: -device virtio-iommu-pci,aw-bits=20: aw-bits must be within [32,64]\n"),
    ],
)
def test_refusals_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = regs(capsys, *argv)
    assert (code, out, err) == (2, "", message)


@pytest.mark.qemu
@pytest.mark.parametrize(
    ("device", "machine"),
    [
        ("intel-iommu,x-scalable-mode=on,x-flts=on,aw-bits=39", "q35"),
        ("intel-iommu,caching-mode=maybe,aw-bits=abc", "q35"),
        ("intel-iommu,bus=pcie.0", "q35"),
        ("intel-iommu,foo=1", "pc"),
        ("intel-iommu", "pc-q35-10.1"),
    ],
)
def test_refusal_line_is_qemus(capsys: pytest.CaptureFixture[str], device: str, machine: str) -> None:
    qemu = run_machine([device], machine=machine)
    assert qemu.refused
    last = [ln for ln in qemu.stderr.splitlines() if ln.startswith("qemu-system-x86_64: ")][-1]
    code, _, err = regs(capsys, device, "--machine", machine)
    assert code == 2
    assert err == last.replace("qemu-system-x86_64: ", "viommu regs: ", 1) + "\n"


@pytest.mark.qemu
@pytest.mark.parametrize("machine", ["q35", "pc-q35-9.1", "pc-q35-3.1", "pc-q35-2.7"])
def test_json_matches_qemu(capsys: pytest.CaptureFixture[str], machine: str) -> None:
    device = "intel-iommu,device-iotlb=on,snoop-control=on"
    qemu = run_machine([device], machine=machine)
    code, out, _ = regs(capsys, device, "--machine", machine, "--json")
    assert code == 0
    data = json.loads(out)
    assert (int(data["cap"], 16), int(data["ecap"], 16)) == (qemu.cap, qemu.ecap)


def test_virtio_config_space(capsys: pytest.CaptureFixture[str]) -> None:
    """Brief §4.2: page_size_mask = -granule, input_range = [0, 2^aw - 1], domain_range
    [0, UINT32_MAX], probe_size 512, bypass = boot-bypass (on); q35 machine types from 9.0
    set aw-bits 39 (read from the 10.0 binary by tests/test_virtio_differential.py)."""
    code, out, _ = regs(capsys, "virtio-iommu-pci,granule=64k,boot-bypass=off", "--json")
    data = json.loads(out)
    assert code == 0 and data["model"] == "virtio-iommu-pci"
    assert data["page_size_mask"] == f"0x{(1 << 64) - (1 << 16):016x}"
    assert data["input_range"] == {"start": "0x0", "end": f"0x{(1 << 39) - 1:x}"}
    assert data["domain_range"] == {"start": 0, "end": 2**32 - 1}
    assert (data["probe_size"], data["bypass"]) == (512, 0)
