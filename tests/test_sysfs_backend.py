"""The sysfs backend on fixture trees in the kernel's real formats.

Expected values are worked by hand from the register layouts
(linux-uapi.md §5-6) and the formats (§4), never by running the code:

* cap d2008c40660462: MGAW = bits 21:16 = 0x26 -> 39 bits; SAGAW = bits 12:8
  = 0x04 -> 48-bit only; the domain is clamped to MGAW: aperture 2^39 - 1
  (the brief's worked example). SLLPS = bits 37:34 = 3 -> 2M and 1G, so the
  page sizes are 0x1000 | 0x200000 | 0x40000000 = 0x40201000.
* cap d2078c106f0466: MGAW 0x2f -> 48, SAGAW 0x04 -> 48: aperture 2^48 - 1.
* cap d2008c222f0686 (QEMU aw-bits=48): MGAW 0x2f -> 48, SAGAW 0x06 -> 39
  and 48. With ECAP SMTS (bit 43) and FLTS (bit 47) but not SLTS (bit 46), a
  scalable-mode kernel uses first-stage 4-level tables: 48 bits minus the
  canonical sign bit = 47 (DESIGN.md "Fidelity"); a legacy-mode kernel uses
  the second stage: 48.
* EFR 0x58f77ef22294ade: HATS = bits 11:10 of 0xade = 0b10 = 2 -> 6 levels,
  64 bits.
* The usable windows are the aperture minus the MSI window
  0xfee00000-0xfeefffff (and on AMD the HT hole 0xfd00000000-0xffffffffff).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sysfs_fixture import HT_LINE, MSI_LINE, Tree, q35_lab, region
from viommu.errors import HostAccessError, InputError
from viommu.host import sysfs
from viommu.host.caps import IommuType, IovaRange, ResvType
from viommu.host.discover import discover

U64 = (1 << 64) - 1


def windows(top: int) -> tuple[IovaRange, ...]:
    return (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, top))


def test_q35_lab_tree(tmp_path: Path) -> None:
    q35_lab(tmp_path)
    inv = discover("sysfs", root=tmp_path)
    assert inv.backend == "sysfs"
    assert [u.name for u in inv.units] == ["dmar0"]
    unit = inv.units[0]
    assert unit.iommu_type is IommuType.INTEL_VTD
    assert unit.registers == {"cap": 0xD2008C40660462, "ecap": 0xF050DA, "ver": 0x10}
    assert unit.address == 0xFED90000
    assert unit.aperture_bits == 39
    # Bridges (class 0x0604) are not assignable; the LPC bridge (0x0601) and host bridge are listed.
    assert [d.name for d in inv.devices] == [
        "0000:00:00.0",
        "0000:00:03.0",
        "0000:00:1f.0",
        "0000:00:1f.2",
        "0000:02:01.0",
    ]
    edu = inv.device("0000:00:03.0")
    assert edu.caps.iova_ranges == windows(0x7F_FFFF_FFFF)
    assert edu.caps.aw_bits == 39
    assert edu.caps.page_size_mask == 0x40201000
    assert edu.caps.group == 1 and edu.caps.unit == "dmar0"
    assert not edu.caps.alias.aliased
    assert inv.pci["0000:00:03.0"].driver == "vfio-pci"
    assert inv.pci["0000:00:03.0"].vendor == 0x1234 and inv.pci["0000:00:03.0"].device == 0x11E8
    nic = inv.device("0000:02:01.0")
    assert nic.caps.alias.bridge == "0000:01:00.0"
    assert nic.caps.alias.alias_bdf == "0000:02:00.0"
    # direct-relaxable (the LPC floppy region) is listed but does not cut the usable windows.
    lpc = inv.device("0000:00:1f.0")
    assert [r.type for r in lpc.caps.reserved_regions] == [ResvType.DIRECT_RELAXABLE, ResvType.MSI]
    assert lpc.caps.iova_ranges == windows(0x7F_FFFF_FFFF)
    assert [g.number for g in inv.groups] == [0, 1, 2, 3, 4]
    assert inv.groups[3].devices == ("0000:01:00.0", "0000:02:01.0")
    assert inv.machine.kernel == "6.12.0" and inv.machine.hostname == "fixture-host"
    assert inv.machine.cpu == "Fixture CPU @ 1.00GHz"


@pytest.mark.parametrize(("cpuinfo", "bits"), [
    # arch/x86/kernel/cpu/proc.c: "address sizes\t: %u bits physical, %u bits virtual"
    ("processor\t: 0\nmodel name\t: X\naddress sizes\t: 39 bits physical, 48 bits virtual\n"
     "processor\t: 1\naddress sizes\t: 39 bits physical, 48 bits virtual\n", 39),
    ("processor\t: 0\naddress sizes\t: 52 bits physical, 57 bits virtual\n", 52),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n", None),  # arm64 has none
])
def test_cpu_physical_address_width_from_cpuinfo(tmp_path: Path, cpuinfo: str, bits: int | None) -> None:
    q35_lab(tmp_path)
    (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    assert discover("sysfs", root=tmp_path).machine.cpu_phys_bits == bits


def test_server_48_bit(tmp_path: Path) -> None:
    q35_lab(tmp_path, cap="d2078c106f0466\n", ecap="f020df\n")
    dev = discover("sysfs", root=tmp_path).device("0000:00:03.0")
    assert dev.caps.iova_ranges == windows(0xFFFF_FFFF_FFFF)
    assert dev.caps.aw_bits == 48


SM_ECAP = f"{(1 << 43) | (1 << 47) | 0xF050DA:x}\n"


@pytest.mark.parametrize(
    ("cmdline", "bits", "enabled"),
    [
        ("intel_iommu=on,sm_on", 47, True),
        ("intel_iommu=sm_on intel_iommu=sm_off", 48, False),  # the last option wins
        ("intel_iommu=on", 48, False),  # kernel default: off
    ],
)
def test_scalable_mode_first_stage_only(tmp_path: Path, cmdline: str, bits: int, enabled: bool) -> None:
    q35_lab(tmp_path, cmdline=cmdline, cap="d2008c222f0686\n", ecap=SM_ECAP)
    inv = discover("sysfs", root=tmp_path)
    assert inv.scalable_mode.enabled is enabled
    assert ("proc/cmdline" in inv.scalable_mode.source) is ("sm_" in cmdline)
    assert inv.units[0].aperture_bits == bits
    assert inv.device("0000:00:03.0").caps.iova_ranges[-1].last == (1 << bits) - 1


def test_scalable_default_from_boot_config(tmp_path: Path) -> None:
    q35_lab(tmp_path, cap="d2008c222f0686\n", ecap=SM_ECAP)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.12.0").write_text(
        "CONFIG_INTEL_IOMMU=y\nCONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON=y\n"
    )
    inv = discover("sysfs", root=tmp_path)
    assert inv.scalable_mode.enabled
    assert "boot/config-6.12.0" in inv.scalable_mode.source
    assert inv.units[0].aperture_bits == 47


def amd_tree(root: Path, features: str, release: str) -> Tree:
    t = Tree(root, release=release)
    t.amd("ivhd0", features)
    t.group(5, MSI_LINE + HT_LINE)
    t.device("0000:41:00.1", unit="ivhd0", group=5, driver="vfio-pci")
    return t


@pytest.mark.parametrize(
    ("features", "release", "efr2"),
    [
        ("58f77ef22294ade\n", "5.15.0-48-generic", None),  # EFR only
        ("0:58f77ef22294ade\n", "6.3.0-2.el9.elrepo.x86_64", 0),  # EFR2:EFR (6.0 to about 6.6)
        ("58f77ef22294ade:0\n", "6.8.0-45-generic", 0),  # EFR:EFR2 (about 6.7 on)
    ],
)
def test_amd_features_formats(tmp_path: Path, features: str, release: str, efr2: int | None) -> None:
    amd_tree(tmp_path, features, release)
    inv = discover("sysfs", root=tmp_path)
    unit = inv.units[0]
    assert unit.iommu_type is IommuType.AMD
    expected = {"efr": 0x58F77EF22294ADE} | ({} if efr2 is None else {"efr2": efr2})
    assert unit.registers == expected
    assert unit.aperture_bits == 64
    dev = inv.device("0000:41:00.1")
    assert dev.caps.iova_ranges == (
        IovaRange(0, 0xFEDFFFFF),
        IovaRange(0xFEF00000, 0xFC_FFFF_FFFF),
        IovaRange(0x100_0000_0000, U64),
    )
    assert dev.caps.aw_bits == 64
    # AMD v1 page sizes: every power of two 4K..2^51 except 512G.
    assert dev.caps.page_size_mask & 0x1000 and not dev.caps.page_size_mask & (1 << 39)
    assert dev.caps.page_size_mask & (1 << 51) and not dev.caps.page_size_mask >> 52


def test_smmuv3_has_no_registers_in_sysfs(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.smmu("smmu3.0x0000000009050000")
    t.group(3, region(0x8000000, 0x80FFFFF, "msi"))
    t.device("0000:00:02.0", unit="smmu3.0x0000000009050000", group=3)
    inv = discover("sysfs", root=tmp_path)
    unit = inv.units[0]
    assert unit.iommu_type is IommuType.ARM_SMMUV3
    assert unit.aperture_bits is None and unit.registers == {}
    assert any("unknown" in note for note in unit.notes)
    dev = inv.device("0000:00:02.0")
    assert dev.caps.iova_ranges == ()
    assert dev.caps.aw_bits == 64  # QEMU's answer when there is no range information
    assert dev.caps.reserved_regions[0].start == 0x8000000


def test_direct_region_cuts_ranges_and_is_noted(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.vtd("dmar0", "d2008c40660462\n", "f050da\n")
    t.group(9, region(0x7A7E1000, 0x7A7E3FFF, "direct") + MSI_LINE)
    t.device("0000:18:00.0", unit="dmar0", group=9)
    inv = discover("sysfs", root=tmp_path)
    assert inv.device("0000:18:00.0").caps.iova_ranges == (
        IovaRange(0, 0x7A7E0FFF),
        IovaRange(0x7A7E4000, 0xFEDFFFFF),
        IovaRange(0xFEF00000, 0x7F_FFFF_FFFF),
    )
    assert any(note.startswith("0000:18:00.0:") and "direct" in note for note in inv.notes)


def test_old_kernel_files_missing(tmp_path: Path) -> None:
    t = Tree(tmp_path, release="4.9.0", cmdline=None)
    t.vtd("dmar0", "d2008c40660462\n", "f050da\n")
    t.group(1, None, kind=None)
    t.device("0000:00:03.0", unit="dmar0", group=1)
    inv = discover("sysfs", root=tmp_path)
    assert inv.groups[0].type is None and inv.groups[0].reserved_regions == ()
    assert any("reserved_regions missing" in n for n in inv.notes)
    assert inv.device("0000:00:03.0").caps.iova_ranges == (IovaRange(0, 0x7F_FFFF_FFFF),)
    assert "unreadable" in inv.scalable_mode.source


def test_no_iommu_explicit_sysfs_is_one_line(tmp_path: Path) -> None:
    Tree(tmp_path)
    with pytest.raises(HostAccessError, match=r"no IOMMU under .*sys/class/iommu"):
        discover("sysfs", root=tmp_path)


def test_no_iommu_auto_uses_default_profile(tmp_path: Path) -> None:
    Tree(tmp_path)
    inv = discover("auto", root=tmp_path)
    assert inv.backend == "profile"
    assert [b for b, _ in inv.skipped] == ["iommufd", "vfio", "sysfs"]
    assert "default profile" in inv.reason


def test_auto_on_a_tree_says_why_ioctls_were_skipped(tmp_path: Path) -> None:
    q35_lab(tmp_path)
    inv = discover("auto", root=tmp_path)
    assert inv.backend == "sysfs"
    assert [b for b, _ in inv.skipped] == ["iommufd", "vfio"]
    assert all("captured tree" in why for _, why in inv.skipped)


# ----- broken trees: one error naming the path ------------------------------------------


def _broken(tmp_path: Path, damage: str) -> None:
    t = q35_lab(tmp_path)
    dev = t.sys / "devices/pci0000:00/0000:00:03.0"
    if damage == "garbage-cap":
        (t.sys / "devices/virtual/iommu/dmar0/intel-iommu/cap").write_text("zz-not-hex\n")
    elif damage == "unreadable-ecap":
        ecap = t.sys / "devices/virtual/iommu/dmar0/intel-iommu/ecap"
        ecap.unlink()
        ecap.mkdir()  # reading a directory fails like an unreadable file, even as root
    elif damage == "missing-iommu-link":
        (dev / "iommu").unlink()
    elif damage == "garbage-regions":
        (t.sys / "kernel/iommu_groups/1/reserved_regions").write_text("0xfee00000 msi\n")
    elif damage == "unknown-region-type":
        (t.sys / "kernel/iommu_groups/1/reserved_regions").write_text(region(0, 0xFFF, "weird"))
    elif damage == "dangling-group":
        (dev / "iommu_group").unlink()
        t.link(dev / "iommu_group", t.sys / "kernel/iommu_groups/77")
    elif damage == "binary-features":
        (t.sys / "devices/virtual/iommu/dmar0/intel-iommu/cap").write_bytes(b"\xff\xfe\x00")
    elif damage == "bad-bdf":
        t.link(t.sys / "bus/pci/devices/not-a-bdf", dev)


@pytest.mark.parametrize(
    ("damage", "path", "error"),
    [
        ("garbage-cap", "dmar0/intel-iommu/cap", InputError),
        ("unreadable-ecap", "dmar0/intel-iommu/ecap", HostAccessError),
        ("missing-iommu-link", "0000:00:03.0/iommu", InputError),
        ("garbage-regions", "iommu_groups/1/reserved_regions", InputError),
        ("unknown-region-type", "iommu_groups/1/reserved_regions", InputError),
        ("dangling-group", "0000:00:03.0/iommu_group", InputError),
        ("binary-features", "dmar0/intel-iommu/cap", InputError),
        ("bad-bdf", "devices/not-a-bdf", InputError),
    ],
)
def test_broken_trees(tmp_path: Path, damage: str, path: str, error: type[Exception]) -> None:
    _broken(tmp_path, damage)
    with pytest.raises(error) as info:
        discover("sysfs", root=tmp_path)
    text = str(info.value)
    assert path in text and "\n" not in text


def test_reserved_regions_parser_inclusive_ends() -> None:
    text = region(0xFEE00000, 0xFEEFFFFF, "msi") + region(0xFD00000000, 0xFFFFFFFFFF, "reserved")
    regions = sysfs.parse_reserved_regions(text, where="x")
    assert [(r.start, r.last, r.type) for r in regions] == [
        (0xFEE00000, 0xFEEFFFFF, ResvType.MSI),
        (0xFD00000000, 0xFFFFFFFFFF, ResvType.RESERVED),
    ]
    with pytest.raises(InputError, match="line 1: start 0x2000 is above end 0x1000"):
        sysfs.parse_reserved_regions(region(0x2000, 0x1000, "msi"), where="x")
