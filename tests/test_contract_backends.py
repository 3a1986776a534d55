"""Every discovery backend held to the same promises (psutil's test_contracts, for host IOMMUs).

Backends: sysfs on fixture trees (VT-d legacy and scalable, AMD, SMMUv3), a
snapshot round trip, a sysfs capture tar, every bundled profile, and legacy
VFIO and iommufd against the fake kernel (tests/fakekernel.py) over a
fixture tree. The lab run points the same assertions at a real kernel.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fakekernel import FakeDevice, FakeIommu, FakeKernel, smmuv3_payload, vtd_payload
from sysfs_fixture import HT_LINE, MSI_LINE, Tree, q35_lab, region
from viommu.host import capture, snapshot
from viommu.host.caps import IommuType, ResvType
from viommu.host.device import CAP_AW_BITS, HiodKind
from viommu.host.discover import discover
from viommu.host.inventory import HostInventory
from viommu.host.profiles import profile_names

MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)
BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
CAP, ECAP = 0xD2008C40660462, 0xF050DA


def _fake(tmp_path: Path) -> FakeKernel:
    q35_lab(tmp_path)
    kernel = FakeKernel(
        devices=[
            FakeDevice(
                "0000:00:03.0",
                group=1,
                iommu=FakeIommu(
                    payload=vtd_payload(CAP, ECAP),
                    usable=[(0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)],
                    pgsizes=0x40201000,
                ),
            )
        ]
    )
    kernel.write_sysfs(tmp_path / "sys")
    return kernel


def _sysfs_vtd(tmp_path: Path) -> HostInventory:
    q35_lab(tmp_path)
    return discover("sysfs", root=tmp_path)


def _sysfs_scalable(tmp_path: Path) -> HostInventory:
    ecap = f"{(1 << 43) | (1 << 47) | ECAP:x}\n"
    q35_lab(tmp_path, cmdline="intel_iommu=on,sm_on", cap="d2008c222f0686\n", ecap=ecap)
    return discover("sysfs", root=tmp_path)


def _sysfs_amd(tmp_path: Path) -> HostInventory:
    t = Tree(tmp_path, release="6.8.0")
    t.amd("ivhd0", "206d73ef22254ade:0\n")
    t.group(5, MSI_LINE + HT_LINE)
    t.group(6, MSI_LINE + HT_LINE)
    t.device("0000:00:01.2", unit="ivhd0", group=5, cls="0x060400")
    t.device("0000:01:00.0", unit="ivhd0", group=5, cls="0x060400", parent="0000:00:01.2")
    t.device("0000:02:00.0", unit="ivhd0", group=5, pcie=False, parent="0000:01:00.0")
    t.device("0000:05:00.1", unit="ivhd0", group=6, driver="vfio-pci")
    return discover("sysfs", root=tmp_path)


def _sysfs_smmu(tmp_path: Path) -> HostInventory:
    t = Tree(tmp_path)
    t.smmu("smmu3.0x0000000009050000")
    t.group(1, region(0x8000000, 0x80FFFFF, "msi"))
    t.device("0000:00:01.0", unit="smmu3.0x0000000009050000", group=1)
    return discover("sysfs", root=tmp_path)


def _snapshot(tmp_path: Path) -> HostInventory:
    path = tmp_path / "snap.json"
    path.write_text(snapshot.dumps(snapshot.stamped(_sysfs_vtd(tmp_path / "tree"))))
    return discover(root=path)


def _capture(tmp_path: Path) -> HostInventory:
    q35_lab(tmp_path / "tree")
    capture.capture_sysfs(tmp_path / "c.tar", root=tmp_path / "tree")
    return discover(root=tmp_path / "c.tar")


def _with_fake(backend: str) -> Callable[[Path], HostInventory]:
    def run(tmp_path: Path) -> HostInventory:
        kernel = _fake(tmp_path)
        inventory = discover(backend, root=tmp_path, ops=kernel)
        kernel.assert_clean()
        return inventory

    return run


def _profile(name: str) -> Callable[[Path], HostInventory]:
    return lambda _tmp: discover(profile=name)


BACKENDS: dict[str, Callable[[Path], HostInventory]] = {
    "sysfs-vtd": _sysfs_vtd,
    "sysfs-vtd-scalable": _sysfs_scalable,
    "sysfs-amd": _sysfs_amd,
    "sysfs-smmuv3": _sysfs_smmu,
    "snapshot": _snapshot,
    "capture-tar": _capture,
    "vfio-fake-kernel": _with_fake("vfio"),
    "iommufd-fake-kernel": _with_fake("iommufd"),
    "auto-fake-kernel": _with_fake("auto"),
} | {f"profile-{name}": _profile(name) for name in profile_names()}


@pytest.fixture(params=sorted(BACKENDS), ids=sorted(BACKENDS))
def inventory(request: pytest.FixtureRequest, tmp_path: Path) -> HostInventory:
    return BACKENDS[request.param](tmp_path)


def test_identity_and_reasons(inventory: HostInventory) -> None:
    assert inventory.backend in ("sysfs", "vfio", "iommufd", "snapshot", "profile")
    assert isinstance(inventory.reason, str) and inventory.reason
    for backend, why in inventory.skipped:
        assert backend in ("iommufd", "vfio", "sysfs") and why and "\n" not in why
    assert inventory.scalable_mode.source


def test_units_groups_devices_consistent(inventory: HostInventory) -> None:
    names = [u.name for u in inventory.units]
    assert len(set(names)) == len(names) and names
    numbers = [g.number for g in inventory.groups]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    bdfs = [d.name for d in inventory.devices]
    assert bdfs == sorted(bdfs) and len(set(bdfs)) == len(bdfs) and bdfs
    groups = {g.number: g for g in inventory.groups}
    for dev in inventory.devices:
        assert BDF.fullmatch(dev.name)
        assert dev.name in inventory.pci
        assert dev.caps.group in groups and dev.name in groups[dev.caps.group].devices
        unit = inventory.unit(dev.caps.unit or "")
        assert dev.caps.iommu_type is unit.iommu_type
        assert isinstance(dev.kind, HiodKind)
        if dev.caps.alias.aliased:
            assert BDF.fullmatch(dev.caps.alias.alias_bdf or "")
            assert dev.caps.alias.bridge in groups[dev.caps.group].devices


def test_reserved_regions_well_formed(inventory: HostInventory) -> None:
    for group in inventory.groups:
        assert list(group.reserved_regions) == sorted(group.reserved_regions)
        for r in group.reserved_regions:
            assert isinstance(r.type, ResvType) and 0 <= r.start <= r.last < 1 << 64


def test_iova_ranges_sorted_inclusive_disjoint(inventory: HostInventory) -> None:
    for dev in inventory.devices:
        ranges = dev.caps.iova_ranges
        assert list(ranges) == sorted(ranges)
        for r in ranges:
            # Inclusive, page-granular ends: a window starts on a page and ends on its last byte.
            assert r.start <= r.last and r.start % 4096 == 0 and (r.last + 1) % 4096 == 0
        for a, b in itertools.pairwise(ranges):
            assert a.last < b.start


def test_aw_bits_is_qemus_rule(inventory: HostInventory) -> None:
    for dev in inventory.devices:
        ranges = dev.get_iova_ranges()
        # vfio_device_get_aw_bits: 64 with no ranges, else index of the top bit of the last range + 1.
        expected = 64 if not ranges else len(bin(max(r.last for r in ranges))) - 2
        assert dev.get_cap(CAP_AW_BITS) == expected


def test_reserved_regions_excluded(inventory: HostInventory) -> None:
    for dev in inventory.devices:
        for r in dev.caps.reserved_regions:
            if r.type is ResvType.DIRECT_RELAXABLE:
                continue
            assert not any(w.overlaps(r.start, r.last) for w in dev.caps.iova_ranges), (dev.name, r)


def test_msi_window_on_x86(inventory: HostInventory) -> None:
    for dev in inventory.devices:
        if dev.caps.iommu_type not in (IommuType.INTEL_VTD, IommuType.AMD):
            continue
        assert any(
            (r.start, r.last, r.type) == (*MSI_WINDOW, ResvType.MSI) for r in dev.caps.reserved_regions
        )
        if dev.caps.iova_ranges:
            assert not any(w.overlaps(*MSI_WINDOW) for w in dev.caps.iova_ranges)
            # The MSI window is a hole with usable memory right below and above it.
            assert any(w.last == 0xFEDFFFFF for w in dev.caps.iova_ranges)
            assert any(w.start == 0xFEF00000 for w in dev.caps.iova_ranges)


def test_page_sizes(inventory: HostInventory) -> None:
    for dev in inventory.devices:
        mask = dev.get_page_size_mask()
        assert mask > 0 and mask & -mask >= 4096  # the smallest page is at least 4K


def test_json_round_trip(inventory: HostInventory) -> None:
    data = inventory.to_json()
    assert data["schema"] == "viommu-snapshot/1"
    again = HostInventory.from_json(data, where="contract")
    assert again.to_json() == data
    assert again.devices == inventory.devices and again.units == inventory.units


def test_fake_kernel_backends_report_the_kernel(tmp_path: Path) -> None:
    inventory = _with_fake("auto")(tmp_path)
    assert inventory.backend == "iommufd" and inventory.skipped == ()
    edu = inventory.device("0000:00:03.0")
    assert edu.kind is HiodKind.IOMMUFD and edu.caps.backend == "iommufd"
    assert edu.caps.registers == {"cap": CAP, "ecap": ECAP}
    assert edu.caps.iova_alignment == 0x1000
    # Devices not on vfio-pci keep the sysfs view.
    assert inventory.device("0000:02:01.0").caps.backend == "sysfs"
    # The kernel agrees with the sysfs derivation here, so no difference is noted.
    assert not any("differ" in note for note in inventory.notes)


def test_fake_kernel_failure_falls_back_with_reason(tmp_path: Path) -> None:
    kernel = _fake(tmp_path)
    kernel.fail("open:/dev/iommu", 13)  # EACCES
    inventory = discover(root=tmp_path, ops=kernel)
    kernel.assert_clean()
    assert inventory.backend == "vfio"
    ((backend, why),) = inventory.skipped
    assert backend == "iommufd" and "/dev/iommu" in why and "EACCES" in why
    assert inventory.device("0000:00:03.0").caps.backend == "vfio"


def test_fake_kernel_disagreement_is_noted(tmp_path: Path) -> None:
    kernel = _fake(tmp_path)
    kernel.devices[0].iommu.usable = [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    inventory = discover("vfio", root=tmp_path, ops=kernel)
    assert any("0000:00:03.0" in n and "aw-bits 48 vs 39" in n for n in inventory.notes)


def test_iommufd_attach_einval_is_reported(tmp_path: Path) -> None:
    kernel = _fake(tmp_path)
    kernel.devices[0].iommu.attach_errno = 22  # EINVAL: e.g. a first-stage-only scalable-mode unit
    inventory = discover("iommufd", root=tmp_path, ops=kernel)
    kernel.assert_clean()
    assert inventory.device("0000:00:03.0").caps.iova_ranges == ()
    assert any("0000:00:03.0: attaching to an IOAS failed (errno 22)" in n for n in inventory.notes)


def test_iommufd_fills_in_smmuv3_registers(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.smmu("smmu3.0x0000000009050000")
    t.group(1, region(0x8000000, 0x80FFFFF, "msi"))
    t.device("0000:00:01.0", unit="smmu3.0x0000000009050000", group=1, driver="vfio-pci")
    # IDR0: S2P|S1P (bits 0,1), TTF=2 (AArch64, bits 3:2 = 0b10): 0b1011 = 0xb.
    # IDR5: OAS=5 (48 bits, bits 2:0), GRAN4K (bit 4): 0x15.
    idr = (0xB, 0, 0, 0, 0, 0x15)
    kernel = FakeKernel(
        version=(6, 13),  # SMMUv3 answers IOMMU_GET_HW_INFO from 6.13 (fakekernel.SMMUV3_HW_INFO)
        devices=[
            FakeDevice(
                "0000:00:01.0",
                group=1,
                iommu=FakeIommu(
                    hw_info_type=2,
                    payload=smmuv3_payload(idr, 0, 0),
                    usable=[(0, 0x7FFFFFF), (0x8100000, (1 << 48) - 1)],
                ),
            )
        ],
    )
    kernel.write_sysfs(tmp_path / "sys")
    inventory = discover("iommufd", root=tmp_path, ops=kernel)
    kernel.assert_clean()
    unit = inventory.units[0]
    assert unit.registers["idr0"] == 0xB and unit.registers["idr5"] == 0x15
    assert unit.aperture_bits == 48  # stage-1 input size without VAX
    dev = inventory.device("0000:00:01.0")
    assert dev.caps.iommu_type is IommuType.ARM_SMMUV3 and dev.caps.aw_bits == 48
