#!/usr/bin/env python3
"""Generate the bundled host profiles (src/viommu/data/profiles/*.json).

    python tools/make_profiles.py            # rewrite the profiles
    python tools/make_profiles.py --check    # exit 1 if any profile is out of date

Each profile's unit registers are real values from the hardware corpus the
package ships (src/viommu/data/hw-iommu-corpus.csv): every unit names the
corpus row (its dmesg line and source) it was copied from, and this script
refuses a value that row does not hold. Where the corpus lacks a unit a real
machine of that kind has (e.g. the second DRHD of a client part), a sibling
row of the same generation is borrowed and the unit's provenance says so.
The device topology, IOMMU groups and reserved regions are illustrative:
what a machine of that kind typically has (the MSI window, RMRRs for the
iGPU/USB as direct-relaxable, the ISA-bridge floppy region, the AMD
HyperTransport hole, a PCIe-to-PCI bridge so that one device has a
requester-ID alias). Derived values (apertures, usable windows, page sizes)
are computed by the same code the sysfs backend uses.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viommu.host import units as unitmod
from viommu.host.caps import ReservedRegion, ResvType
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.host.inventory import HostInventory, IommuGroup, IommuUnit, Machine, PciInfo, ScalableMode
from viommu.host.pci import Hop, dma_alias, is_bridge
from viommu.host.snapshot import dumps
from viommu.host.sysfs import device_caps
from viommu.regs import smmuv3

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "src/viommu/data/hw-iommu-corpus.csv"
OUT = REPO / "src/viommu/data/profiles"

MSI_X86 = ReservedRegion(0xFEE00000, 0xFEEFFFFF, ResvType.MSI)
MSI_ARM = ReservedRegion(0x08000000, 0x080FFFFF, ResvType.MSI)  # MSI_IOVA_BASE, MSI_IOVA_LENGTH
#: intel-iommu gives ISA bridges (LPC) an identity map of the low 16 MiB (floppy DMA workaround).
FLOPPY = ReservedRegion(0, 0xFFFFFF, ResvType.DIRECT_RELAXABLE)

SM_DEFAULT = ScalableMode(
    False, "kernel default assumed off (CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON is off upstream)"
)
SM_ON = ScalableMode(True, "intel_iommu=on,sm_on on the kernel command line (illustrative)")


def _corpus() -> list[dict[str, str]]:
    with CORPUS.open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


ROWS = _corpus()


@dataclass
class Unit:
    name: str
    raw_line: str  # the corpus row's dmesg line, which identifies it
    registers: dict[str, int]
    address: int | None = None
    borrowed: str | None = None  # why a sibling row stands in for this unit


@dataclass
class Dev:
    bdf: str
    ident: str  # vendor:device
    class_code: int
    driver: str | None
    pcie: bool
    unit: str
    group: int
    parent: str | None = None
    rmrr: tuple[ReservedRegion, ...] = ()


@dataclass
class Profile:
    name: str
    vendor: str
    platform: str
    source: str
    kernel: str | None
    units: list[Unit]
    devices: list[Dev]
    scalable_mode: ScalableMode = field(default_factory=lambda: SM_DEFAULT)
    virtual: bool = False
    notes: list[str] = field(default_factory=list)


def _row(raw_line: str) -> dict[str, str]:
    hits = [r for r in ROWS if r["raw_line"] == raw_line]
    if len(hits) != 1:
        raise SystemExit(f"corpus row not found exactly once: {raw_line!r}")
    return hits[0]


def _check(unit: Unit) -> dict[str, str]:
    row = _row(unit.raw_line)
    if "cap" in unit.registers:
        assert int(row["cap"], 16) == unit.registers["cap"], unit.name
        assert int(row["ecap_or_efr"], 16) == unit.registers["ecap"], unit.name
    elif "efr" in unit.registers:
        values = [int(v, 16) for v in row["ecap_or_efr"].split(",")]
        assert values[0] == unit.registers["efr"], unit.name
        assert values[1:] == [unit.registers["efr2"]], unit.name
    return row


def vtd(name: str, raw_line: str, *, borrowed: str | None = None) -> Unit:
    row = _row(raw_line)
    major, minor = (int(x) for x in row["version"].split(":"))
    regs = {"cap": int(row["cap"], 16), "ecap": int(row["ecap_or_efr"], 16), "ver": major << 4 | minor}
    return Unit(name, raw_line, regs, int(row["reg_base"], 16), borrowed)


def amdvi(name: str, raw_line: str) -> Unit:
    efr, efr2 = (int(v, 16) for v in _row(raw_line)["ecap_or_efr"].split(","))
    return Unit(name, raw_line, {"efr": efr, "efr2": efr2})


def _version(kernel: str | None) -> tuple[int, int] | None:
    if kernel is None:
        return None
    major, minor = kernel.split(".")[:2]
    return int(major), int(minor)


def _unit(p: Profile, u: Unit) -> IommuUnit:
    if "cap" in u.registers:
        return unitmod.vtd_unit(u.name, u.registers, address=u.address, scalable_mode=p.scalable_mode.enabled)
    if "efr" in u.registers:
        return unitmod.amd_unit(u.name, u.registers, kernel=_version(p.kernel))
    return unitmod.smmuv3_unit(u.name, u.registers)


def _regions(p: Profile, members: list[Dev], unit: IommuUnit) -> tuple[ReservedRegion, ...]:
    regions: set[ReservedRegion] = set()
    if p.vendor == "ARM":
        regions.add(MSI_ARM)
    else:
        regions.add(MSI_X86)
    if p.vendor == "AMD" and unitmod.amd_ht_hole_applies(unit.registers):
        regions.add(unitmod.AMD_HT_HOLE)
    for d in members:
        regions.update(d.rmrr)
        if p.vendor == "Intel" and d.class_code >> 8 == 0x0601:
            regions.add(FLOPPY)
    return tuple(sorted(regions))


def _hops(by_bdf: dict[str, Dev], dev: Dev) -> list[Hop]:
    chain = [dev]
    while chain[0].parent is not None:
        chain.insert(0, by_bdf[chain[0].parent])
    return [Hop(d.bdf, d.pcie) for d in chain]


def build(p: Profile) -> HostInventory:
    units = {u.name: _unit(p, u) for u in p.units}
    by_bdf = {d.bdf: d for d in p.devices}
    groups: dict[int, IommuGroup] = {}
    for number in sorted({d.group for d in p.devices}):
        members = sorted((d for d in p.devices if d.group == number), key=lambda d: d.bdf)
        unit_names = {d.unit for d in members}
        assert len(unit_names) == 1, f"{p.name}: group {number} spans units {unit_names}"
        groups[number] = IommuGroup(
            number, "DMA-FQ", tuple(d.bdf for d in members), _regions(p, members, units[members[0].unit])
        )
    devices, pci = [], {}
    for d in sorted(p.devices, key=lambda d: d.bdf):
        vendor, device = (int(x, 16) for x in d.ident.split(":"))
        pci_info = PciInfo(vendor, device, d.class_code, d.driver, d.pcie)
        if is_bridge(d.class_code):
            continue
        caps = device_caps(
            units[d.unit], groups[d.group], alias=dma_alias(_hops(by_bdf, d)), backend="profile"
        )
        devices.append(HostIOMMUDevice(d.bdf, caps, HiodKind.LEGACY_VFIO))
        pci[d.bdf] = pci_info
    notes = [
        f"{d.bdf}: group {d.group} has a 'direct' (non-relaxable RMRR) region: "
        "the kernel refuses to give it to VFIO"
        for d in sorted(p.devices, key=lambda d: d.bdf)
        if not is_bridge(d.class_code)
        and any(r.type is ResvType.DIRECT for r in groups[d.group].reserved_regions)
    ]
    provenance: dict[str, Any] = {
        "name": p.name,
        "vendor": p.vendor,
        "platform": p.platform,
        "virtual": p.virtual,
        "source": p.source,
        "units": [
            {
                "unit": u.name,
                "corpus_line": u.raw_line,
                "corpus_source": _check(u)["source"],
                "corpus_platform": _check(u)["platform_hint"],
            }
            | ({"borrowed": u.borrowed} if u.borrowed else {})
            for u in p.units
        ],
        "topology": "illustrative: devices, IOMMU groups and reserved regions typical of this kind of "
        "machine, not read from it",
        "notes": p.notes,
        "generated_by": "tools/make_profiles.py from src/viommu/data/hw-iommu-corpus.csv",
    }
    return HostInventory(
        backend="profile",
        reason="generated by tools/make_profiles.py",
        skipped=(),
        machine=Machine(product=p.platform, kernel=p.kernel),
        scalable_mode=p.scalable_mode,
        units=tuple(units.values()),
        groups=tuple(groups.values()),
        devices=tuple(devices),
        pci=pci,
        notes=tuple(notes),
        provenance=provenance,
    )


# ----- topology building blocks ------------------------------------------------------

PCI = False  # conventional PCI function (no max_link_speed in sysfs)
PCIE = True
BRIDGE = 0x060400


def intel_client(gfx: str | None, main: str, *, usb_rmrr: bool, gpu: str = "8086:9b41") -> list[Dev]:
    """A laptop/desktop PCH: iGPU on its own DRHD, the rest on the INCLUDE_ALL unit."""
    igpu_rmrr = (ReservedRegion(0x7B800000, 0x7FFFFFFF, ResvType.DIRECT_RELAXABLE),)
    usb = (ReservedRegion(0x7A5F1000, 0x7A60FFFF, ResvType.DIRECT_RELAXABLE),) if usb_rmrr else ()
    devs = [
        Dev("0000:00:00.0", "8086:9b61", 0x060000, "skl_uncore", PCI, main, 0),
        Dev("0000:00:14.0", "8086:02ed", 0x0C0330, "xhci_hcd", PCI, main, 4, rmrr=usb),
        Dev("0000:00:14.2", "8086:02ef", 0x050000, None, PCI, main, 4),
        Dev("0000:00:1c.0", "8086:02b8", BRIDGE, "pcieport", PCIE, main, 7),
        Dev("0000:01:00.0", "144d:a808", 0x010802, "nvme", PCIE, main, 8, parent="0000:00:1c.0"),
        Dev("0000:00:1d.0", "8086:02b0", BRIDGE, "pcieport", PCIE, main, 9),
        Dev("0000:02:00.0", "8086:2723", 0x028000, "vfio-pci", PCIE, main, 10, parent="0000:00:1d.0"),
        Dev("0000:00:1d.4", "8086:02b4", BRIDGE, "pcieport", PCIE, main, 11),
        # An ASMedia ASM1083 PCIe-to-PCI bridge (e.g. in a dock) with a conventional PCI card behind it.
        Dev("0000:03:00.0", "1b21:1080", BRIDGE, None, PCIE, main, 12, parent="0000:00:1d.4"),
        Dev("0000:04:00.0", "9710:9865", 0x070002, "serial", PCI, main, 12, parent="0000:03:00.0"),
        Dev("0000:00:1f.0", "8086:0284", 0x060100, None, PCI, main, 13),
        Dev("0000:00:1f.3", "8086:02c8", 0x040380, "snd_hda_intel", PCI, main, 13),
        Dev("0000:00:1f.4", "8086:02a3", 0x0C0500, "i801_smbus", PCI, main, 13),
    ]
    if gfx is not None:
        devs.append(Dev("0000:00:02.0", gpu, 0x030000, "i915", PCI, gfx, 1, rmrr=igpu_rmrr))
    return devs


def intel_server(pch: str, nic: str, nvme: str, *, nic_direct: bool = False) -> list[Dev]:
    """A Xeon server: PCH + BMC (ASPEED behind its AST1150 PCIe-to-PCI bridge) and CPU-stack devices."""
    direct = (ReservedRegion(0x7A7E1000, 0x7A7E3FFF, ResvType.DIRECT),) if nic_direct else ()
    return [
        Dev("0000:00:00.0", "8086:2020", 0x060000, None, PCIE, pch, 0),
        Dev("0000:00:14.0", "8086:a1af", 0x0C0330, "xhci_hcd", PCI, pch, 5),
        Dev("0000:00:1c.0", "8086:a190", BRIDGE, "pcieport", PCIE, pch, 8),
        Dev("0000:02:00.0", "1a03:1150", BRIDGE, None, PCIE, pch, 9, parent="0000:00:1c.0"),
        Dev("0000:03:00.0", "1a03:2000", 0x030000, "ast", PCI, pch, 9, parent="0000:02:00.0"),
        Dev("0000:00:1f.0", "8086:a1c3", 0x060100, None, PCI, pch, 10),
        Dev("0000:00:1f.2", "8086:a1a1", 0x058000, None, PCI, pch, 10),
        Dev("0000:00:1f.4", "8086:a1a3", 0x0C0500, "i801_smbus", PCI, pch, 10),
        Dev("0000:16:00.0", "8086:2030", BRIDGE, "pcieport", PCIE, nic, 20),
        Dev("0000:18:00.0", "8086:1572", 0x020000, "i40e", PCIE, nic, 21, parent="0000:16:00.0", rmrr=direct),
        Dev("0000:18:00.1", "8086:1572", 0x020000, "vfio-pci", PCIE, nic, 22, parent="0000:16:00.0"),
        Dev("0000:5d:00.0", "8086:2030", BRIDGE, "pcieport", PCIE, nvme, 30),
        Dev("0000:5e:00.0", "8086:0a54", 0x010802, "nvme", PCIE, nvme, 31, parent="0000:5d:00.0"),
    ]


def amd_server(a: str, b: str, c: str | None = None) -> list[Dev]:
    """An EPYC: one IOMMU per root complex (``a`` on bus 00, ``b`` on 40, ``c`` on 60); the BMC's
    ASPEED VGA behind its AST1150 PCIe-to-PCI bridge."""
    devs = [
        Dev("0000:00:01.1", "1022:1483", BRIDGE, "pcieport", PCIE, a, 2),
        Dev("0000:01:00.0", "144d:a824", 0x010802, "nvme", PCIE, a, 3, parent="0000:00:01.1"),
        Dev("0000:00:03.1", "1022:1483", BRIDGE, "pcieport", PCIE, a, 4),
        Dev("0000:02:00.0", "1a03:1150", BRIDGE, None, PCIE, a, 5, parent="0000:00:03.1"),
        Dev("0000:03:00.0", "1a03:2000", 0x030000, "ast", PCI, a, 5, parent="0000:02:00.0"),
        Dev("0000:40:01.1", "1022:1483", BRIDGE, "pcieport", PCIE, b, 20),
        Dev("0000:41:00.0", "15b3:101b", 0x020700, "mlx5_core", PCIE, b, 21, parent="0000:40:01.1"),
        Dev("0000:41:00.1", "15b3:101c", 0x020700, "vfio-pci", PCIE, b, 22, parent="0000:40:01.1"),
    ]
    if c is not None:
        devs += [
            Dev("0000:60:03.1", "1022:1483", BRIDGE, "pcieport", PCIE, c, 30),
            Dev("0000:61:00.0", "10de:20b5", 0x030200, "vfio-pci", PCIE, c, 31, parent="0000:60:03.1"),
        ]
    return devs


def smmu_idrs() -> dict[str, int]:
    """IDRs consistent with the Grace summary line "ias 48-bit, oas 48-bit" (see the profile's notes)."""
    return {
        "idr0": smmuv3.IDR0.encode(
            S2P=1,
            S1P=1,
            TTF=2,
            COHACC=1,
            BTM=0,
            HTTU=2,
            ATS=1,
            ASID16=1,
            MSI=1,
            PRI=0,
            VMID16=1,
            CD2L=1,
            ST_LEVEL=1,
            TTENDIAN=2,
        ),
        "idr1": smmuv3.IDR1.encode(SIDSIZE=20, SSIDSIZE=20, PRIQS=19, EVENTQS=19, CMDQS=19),
        "idr3": smmuv3.IDR3.encode(RIL=1, FWB=1, BBML=2),
        "idr5": smmuv3.IDR5.encode(OAS=5, GRAN4K=1, GRAN64K=1),
        "iidr": 0,
        "aidr": smmuv3.AIDR.encode(ARCHMINORREV=2),
    }


CML_DMAR0 = "DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap 1c0000c40660462 ecap 19e2ff0505e"
CLIENT_DMAR1 = "DMAR: dmar2: reg_base_addr fed91000 ver 5:0 cap d2008c40660462 ecap f050da"
BORROW_CLIENT = (
    "the source log shows only the graphics unit; this is the corpus's most-seen client non-graphics unit "
    "(fed91000, cap d2008c40660462), the same value Skylake through Raptor Lake client parts report"
)

PROFILES = [
    Profile(
        "intel-cometlake-u-xps13-7390",
        "Intel",
        "Dell XPS 13 7390, Core i7-10510U (Comet Lake-U)",
        "linuxhw/Dmesg hw-probe of a Dell XPS 13 7390 (kernel 5.15.0-48-generic)",
        "5.15.0-48-generic",
        [vtd("dmar0", CML_DMAR0), vtd("dmar1", CLIENT_DMAR1, borrowed=BORROW_CLIENT)],
        intel_client("dmar0", "dmar1", usb_rmrr=False),
        notes=["MGAW 39 with a 48-bit SAGAW: VFIO domains end at 2^39-1 (aw-bits 39)"],
    ),
    Profile(
        "intel-icelake-u-xps13-9300",
        "Intel",
        "Dell XPS 13 9300, Core i7-1065G7 (Ice Lake-U)",
        "linuxhw/Dmesg hw-probe of a Dell XPS 13 9300 (kernel 5.15.0-40-generic)",
        "5.15.0-40-generic",
        [
            vtd("dmar0", "DMAR: dmar0: reg_base_addr fed90000 ver 4:0 cap 1c0000c40660462 ecap 49e2ff0505e"),
            vtd("dmar1", CLIENT_DMAR1, borrowed=BORROW_CLIENT),
        ],
        intel_client("dmar0", "dmar1", usb_rmrr=False, gpu="8086:8a52"),
    ),
    Profile(
        "intel-skylake-desktop",
        "Intel",
        "Skylake client desktop (ACPI DMAR OEM 'INTEL SKL'), single DRHD, no iGPU unit",
        "public guide log (host 'fuji'), one DRHD INCLUDE_ALL",
        None,
        [vtd("dmar0", "DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c40660462 ecap f050da")],
        intel_client(None, "dmar0", usb_rmrr=True),
    ),
    Profile(
        "intel-broadwell-client",
        "Intel",
        "Broadwell client (ACPI DMAR OEM 'INTEL BDW')",
        "ArchWiki PCI passthrough example log and its copies (10 sightings)",
        None,
        [vtd("dmar1", "dmar: IOMMU 1: reg_base_addr fed91000 ver 1:0 cap d2008c20660462 ecap f010da")],
        intel_client(None, "dmar1", usb_rmrr=True),
        notes=["the graphics unit (dmar0) is not in the corpus for this platform: the profile has no iGPU"],
    ),
    Profile(
        "intel-haswell-ep-e5-1603v3",
        "Intel",
        "Intel Xeon E5-1603 v3 (Haswell-EP), 1 socket",
        "public journal (host cerberus.csd.uwm.edu, Fedora, 2017)",
        None,
        [vtd("dmar0", "DMAR: dmar1: reg_base_addr fbffc000 ver 1:0 cap d2078c106f0466 ecap f020df")],
        intel_server("dmar0", "dmar0", "dmar0"),
    ),
    Profile(
        "intel-skylake-sp-2s",
        "Intel",
        "2-socket Intel Xeon Scalable server, 80 CPUs, 8 DRHDs (4 in the corpus)",
        "https://github.com/utcs-scea/LAKE/issues/10",
        None,
        [
            vtd("dmar0", "DMAR: dmar0: reg_base_addr d37fc000 ver 1:0 cap 8d2078c106f0466 ecap f020df"),
            vtd("dmar2", "DMAR: dmar2: reg_base_addr ee7fc000 ver 1:0 cap 8d2078c106f0466 ecap f020df"),
            vtd("dmar4", "DMAR: dmar4: reg_base_addr aaffc000 ver 1:0 cap 8d2078c106f0466 ecap f020df"),
            vtd("dmar6", "DMAR: dmar6: reg_base_addr c5ffc000 ver 1:0 cap 8d2078c106f0466 ecap f020df"),
        ],
        intel_server("dmar0", "dmar2", "dmar4", nic_direct=True),
        notes=[
            "the onboard NIC's RMRR is 'direct' (as some server firmware reports): VFIO refuses 0000:18:00.0"
        ],
    ),
    Profile(
        "intel-icelake-sp",
        "Intel",
        "Intel Xeon Scalable 3rd gen (Ice Lake-SP class, HAW 46)",
        "public log (DRHDs d7ffc000, fb7fc000)",
        None,
        [
            vtd("dmar0", "DMAR: dmar0: reg_base_addr d7ffc000 ver 4:0 cap 8ed008c40780466 ecap 60000f050df"),
            vtd("dmar1", "DMAR: dmar1: reg_base_addr fb7fc000 ver 4:0 cap 8ed008c40780466 ecap 60000f050df"),
        ],
        intel_server("dmar1", "dmar0", "dmar0"),
        notes=["MGAW 57 but SAGAW 48-bit only: domains are 48-bit"],
    ),
    Profile(
        "intel-sapphirerapids-m50fcp",
        "Intel",
        "Intel Server M50FCP, 4th gen Xeon Scalable (Sapphire Rapids), scalable mode",
        "https://github.com/intel/intel-device-plugins-for-kubernetes/issues/1836",
        None,
        [
            vtd(
                "dmar1", "DMAR: dmar1: reg_base_addr e17fc000 ver 6:0 cap 19ed008c40780c66 ecap 3ee9e86f050df"
            ),
            vtd(
                "dmar3", "DMAR: dmar3: reg_base_addr f17fc000 ver 6:0 cap 19ed008c40780c66 ecap 3ee9e86f050df"
            ),
            vtd(
                "dmar5", "DMAR: dmar5: reg_base_addr d13fc000 ver 6:0 cap 19ed008c40780c66 ecap 3ee9e86f050df"
            ),
        ],
        intel_server("dmar1", "dmar3", "dmar5"),
        scalable_mode=SM_ON,
        notes=[
            "scalable mode on: VFIO domains are first-stage 5-level, 56-bit after the canonical sign bit",
            "Sapphire Rapids erratum 772415 (SPR17) applies to nesting parents (iommufd reports it)",
        ],
    ),
    Profile(
        "intel-graniterapids-r770",
        "Intel",
        "Dell PowerEdge R770, 2x Intel Xeon 6515P (Granite Rapids-SP)",
        "public 'R770 Precheck Report' (Ubuntu 24.04, kernel 6.8)",
        "6.8.0",
        [
            vtd(
                "dmar1",
                "DMAR: dmar1: reg_base_addr cc7e0000 ver 7:0 cap f9ed008cee780c66 ecap 3fef9ea6f0efdf",
            )
        ],
        intel_server("dmar1", "dmar1", "dmar1"),
        notes=["one of the machine's DRHDs is in the corpus; every device is placed behind it"],
    ),
    Profile(
        "intel-arrowlake-s-265k",
        "Intel",
        "Intel Core Ultra 7 265K (Arrow Lake-S) desktop",
        "public mailing-list dmesg (2026, kernel ~6.19)",
        None,
        [
            vtd(
                "dmar0",
                "DMAR: dmar0: reg_base_addr fc800000 ver 7:0 cap c9de008cee690462 ecap 12ca9a00f0ef5e",
                borrowed="the source log shows only dmar1; this corpus row is the graphics DRHD at fc800000 "
                "of the same SoC generation (HAW 42, SATC), platform not confirmed",
            ),
            vtd(
                "dmar1",
                "DMAR: dmar1: reg_base_addr fc810000 ver 7:0 cap e9de008cee690462 ecap 1aca9a00f0efde",
            ),
        ],
        intel_client("dmar0", "dmar1", usb_rmrr=False, gpu="8086:7d67"),
        notes=["MGAW 42: VFIO domains end at 2^42-1"],
    ),
    Profile(
        "amd-epyc-rome-romed8-2t",
        "AMD",
        "ASRock Rack ROMED8-2T, AMD EPYC 7262 (Rome)",
        "linuxhw/Dmesg hw-probe (Alma 9.1, kernel 6.3.0-2.el9.elrepo)",
        "6.3.0-2.el9.elrepo.x86_64",
        [
            amdvi(name, "AMD-Vi: Using global IVHD EFR:0x58f77ef22294ade, EFR2:0x0")
            for name in ("ivhd0", "ivhd1", "ivhd2", "ivhd3")
        ],
        amd_server("ivhd0", "ivhd2", "ivhd3"),
        notes=[
            "the IVHD global EFR is the value Linux applies to every IOMMU (4 root complexes on Rome)",
            "kernel 6.3 gives v1 domains a 64-bit aperture: aw-bits 64",
        ],
    ),
    Profile(
        "amd-epyc-genoa",
        "AMD",
        "AMD EPYC Genoa-class server (IOMMUs at 00:00.2 and 40:00.2)",
        "public journal (IOMMUs at 00:00.2 and 40:00.2)",
        None,
        [
            amdvi(
                name,
                "AMD-Vi: Extended features (0x25bf732fa2295afe, 0x1d): "
                "PPR X2APIC NX GT [5] IA GA PC GA_vAPIC",
            )
            for name in ("ivhd0", "ivhd1")
        ],
        amd_server("ivhd0", "ivhd1"),
        notes=[
            "EFR.HDSUP: IOMMU dirty tracking; EFR2 0x1d has no HT_RANGE_IGNORE, so the HT hole stays reserved"
        ],
    ),
    Profile(
        "amd-ryzen-renoir-4300g",
        "AMD",
        "HP desktop, AMD Ryzen 3 4300G (Renoir APU)",
        "public journal (host hp-4300G) and 9 more sightings",
        None,
        [amdvi("ivhd0", "AMD-Vi: Using global IVHD EFR:0x206d73ef22254ade, EFR2:0x0")],
        [
            Dev("0000:00:01.2", "1022:1634", BRIDGE, "pcieport", PCIE, "ivhd0", 2),
            Dev("0000:01:00.0", "1b21:1080", BRIDGE, None, PCIE, "ivhd0", 3, parent="0000:00:01.2"),
            Dev("0000:02:00.0", "1102:0004", 0x040100, "snd_emu10k1", PCI, "ivhd0", 3, parent="0000:01:00.0"),
            Dev("0000:00:02.1", "1022:1634", BRIDGE, "pcieport", PCIE, "ivhd0", 4),
            Dev("0000:04:00.0", "2646:2263", 0x010802, "nvme", PCIE, "ivhd0", 5, parent="0000:00:02.1"),
            Dev("0000:00:08.1", "1022:1635", BRIDGE, "pcieport", PCIE, "ivhd0", 6),
            Dev("0000:05:00.0", "1002:1636", 0x030000, "amdgpu", PCIE, "ivhd0", 6, parent="0000:00:08.1"),
            Dev("0000:05:00.1", "1002:1637", 0x040300, "vfio-pci", PCIE, "ivhd0", 6, parent="0000:00:08.1"),
            Dev("0000:05:00.3", "1022:1639", 0x0C0330, "xhci_hcd", PCIE, "ivhd0", 6, parent="0000:00:08.1"),
        ],
    ),
    Profile(
        "arm-nvidia-grace",
        "ARM",
        "NVIDIA Grace server (SMMUv3 with Tegra241 CMDQV)",
        "public mailing-list log: 'arm-smmu-v3: ias 48-bit, oas 48-bit (features 0x001e1fbf)'",
        None,
        [
            Unit(
                name,
                "arm-smmu-v3 arm-smmu-v3.9.auto: ias 48-bit, oas 48-bit (features 0x001e1fbf)",
                smmu_idrs(),
            )
            for name in ("smmu3.0x0000000016000000", "smmu3.0x0000000016200000")
        ],
        [
            Dev("0008:00:00.0", "10de:22b2", BRIDGE, "pcieport", PCIE, "smmu3.0x0000000016000000", 10),
            Dev(
                "0008:01:00.0",
                "15b3:1021",
                0x020000,
                "mlx5_core",
                PCIE,
                "smmu3.0x0000000016000000",
                11,
                parent="0008:00:00.0",
            ),
            Dev(
                "0008:01:00.1",
                "15b3:1021",
                0x020000,
                "vfio-pci",
                PCIE,
                "smmu3.0x0000000016000000",
                12,
                parent="0008:00:00.0",
            ),
            Dev("0009:00:00.0", "10de:22b2", BRIDGE, "pcieport", PCIE, "smmu3.0x0000000016200000", 20),
            Dev(
                "0009:01:00.0",
                "1a03:1150",
                BRIDGE,
                None,
                PCIE,
                "smmu3.0x0000000016200000",
                21,
                parent="0009:00:00.0",
            ),
            Dev(
                "0009:02:00.0",
                "1a03:2000",
                0x030000,
                "ast",
                PCI,
                "smmu3.0x0000000016200000",
                21,
                parent="0009:01:00.0",
            ),
        ],
        notes=[
            "The corpus holds no raw SMMUv3 ID registers, only the driver's summary line (ias 48, oas 48, "
            "and an internal feature bitmap that is not decoded across kernels). The IDRs here are DERIVED "
            "to be consistent with that line (IDR5.OAS=48-bit, AArch64 tables, both stages, 16-bit "
            "ASID/VMID, HTTU access+dirty, ATS, range invalidation, 4K and 64K granules): plausible, not "
            "read from hardware.",
            "sysfs shows no SMMUv3 ID registers; on the real machine only the iommufd backend reports them.",
        ],
    ),
    Profile(
        "qemu-q35-intel-iommu",
        "Intel",
        "QEMU q35 guest with an emulated intel-iommu (aw-bits 39), edu device bound to vfio-pci",
        "qemu-devel mailing-list post (guest dmesg, ACPI DMAR BOCHS BXPCDMAR)",
        None,
        [vtd("dmar0", "DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap 12008c22260286 ecap f00f5a")],
        [
            Dev("0000:00:00.0", "8086:29c0", 0x060000, None, PCI, "dmar0", 0),
            Dev("0000:00:01.0", "1234:1111", 0x030000, "bochs-drm", PCI, "dmar0", 1),
            Dev("0000:00:03.0", "1234:11e8", 0x00FF00, "vfio-pci", PCI, "dmar0", 2),
            Dev("0000:00:04.0", "1b36:000c", BRIDGE, "pcieport", PCIE, "dmar0", 3),
            Dev("0000:01:00.0", "1b36:000e", BRIDGE, None, PCIE, "dmar0", 4, parent="0000:00:04.0"),
            Dev("0000:02:01.0", "8086:100e", 0x020000, "e1000", PCI, "dmar0", 4, parent="0000:01:00.0"),
            Dev("0000:00:1f.0", "8086:2918", 0x060100, "lpc_ich", PCI, "dmar0", 5),
            Dev("0000:00:1f.2", "8086:2922", 0x010601, "ahci", PCI, "dmar0", 5),
            Dev("0000:00:1f.3", "8086:2930", 0x0C0500, "i801_smbus", PCI, "dmar0", 5),
        ],
        virtual=True,
        notes=[
            "a virtual machine (QEMU intel-iommu), like the lab's L1 guest: "
            "a pcie-pci-bridge gives e1000 an alias"
        ],
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a profile on disk differs")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for profile in PROFILES:
        text = dumps(build(profile))
        path = OUT / f"{profile.name}.json"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
