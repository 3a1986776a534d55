"""AMD-Vi Extended Feature Registers EFR (MMIO 0x30) and EFR2 (MMIO 0x1A0).

Field names follow the AMD I/O Virtualization Technology (IOMMU)
specification (48882), upper case; bits 55-62 as that specification (rev 3.0x)
lays them out. EFR2 names only the bits Linux defines
(drivers/iommu/amd/amd_iommu_types.h); other set bits are reported as
undefined. Derived values follow drivers/iommu/amd/init.c.
"""

from __future__ import annotations

from typing import Any

from viommu.regs.table import Field, Register
from viommu.regs.unit import UnitDecode, ValueText, bits_list, yes_no

EFR = Register(
    "EFR",
    64,
    (
        Field("PREFSUP", 0, 0, "prefetch pages command (Linux: PreF)"),
        Field("PPRSUP", 1, 1, "peripheral page requests (PPR)"),
        Field("XTSUP", 2, 2, "x2APIC interrupt remapping (Linux: X2APIC)"),
        Field("NXSUP", 3, 3, "no-execute protection (NX)"),
        Field("GTSUP", 4, 4, "guest translation: v2 page table, PASID (GT)"),
        Field("GAPPISUP", 5, 5, "guest APIC physical processor interrupt (Linux prints [5])"),
        Field("IASUP", 6, 6, "INVALIDATE_IOMMU_ALL command (IA)"),
        Field("GASUP", 7, 7, "guest virtual APIC (GA)"),
        Field("HESUP", 8, 8, "hardware error registers (HE)"),
        Field("PCSUP", 9, 9, "performance counters (PC)"),
        Field(
            "HATS",
            10,
            11,
            "host address translation size",
            {
                0: "4-level host page table (48-bit)",
                1: "5-level host page table (57-bit)",
                2: "6-level host page table (64-bit)",
                3: "host translation disabled (HATDis)",
            },
        ),
        Field(
            "GATS",
            12,
            13,
            "guest address translation size",
            {
                0: "4-level guest page table (48-bit)",
                1: "5-level guest page table (57-bit)",
                2: "reserved",
                3: "reserved",
            },
        ),
        Field(
            "GLXSUP",
            14,
            15,
            "guest CR3 table levels",
            {0: "1-level GCR3 table", 1: "2-level GCR3 table", 2: "3-level GCR3 table", 3: "reserved"},
        ),
        Field("SMIFSUP", 16, 17, "SMI filter register support"),
        Field("SMIFRC", 18, 20, "SMI filter register count"),
        Field(
            "GAMSUP",
            21,
            23,
            "guest virtual APIC modes",
            {0: "guest virtual APIC not supported", 1: "guest virtual APIC supported (Linux: GA_vAPIC)"},
        ),
        Field("DUALPPRLOGSUP", 24, 25, "dual PPR log"),
        Field("DUALEVENTLOGSUP", 28, 29, "dual event log"),
        Field("SATSSUP", 31, 31, "secure ATS"),
        Field("PASMAX", 32, 36, "maximum PASID width - 1", ValueText(5, lambda n: f"{n + 1}-bit PASIDs")),
        Field("USSUP", 37, 37, "user/supervisor page protection"),
        Field("DEVTBLSEGSUP", 38, 39, "device table segmentation"),
        Field("PPROVRFLWEARLYSUP", 40, 40, "PPR log overflow early warning"),
        Field("PPRAUTORSPSUP", 41, 41, "PPR automatic response"),
        Field("MARCSUP", 42, 43, "memory access routing and control"),
        Field("BLKSTOPMRKSUP", 44, 44, "block StopMark message"),
        Field("PERFOPTSUP", 45, 45, "performance optimization"),
        Field("MSICAPMMIOSUP", 46, 46, "MSI capability MMIO access"),
        Field("GIOSUP", 48, 48, "guest I/O protection (v2 page table needs GT and GIOSUP)"),
        Field("HASUP", 49, 49, "host access bit"),
        Field("EPHSUP", 50, 50, "enhanced PPR handling"),
        Field("ATTRFWSUP", 51, 51, "attribute forward"),
        Field("HDSUP", 52, 52, "host dirty bit (IOMMU dirty tracking)"),
        Field("INVIOTLBTYPESUP", 54, 54, "invalidate IOTLB type"),
        Field("VIOMMUSUP", 55, 55, "hardware virtualized IOMMU"),
        Field("VMGUARDIOSUP", 56, 56, "VMGuard I/O"),
        Field("VMTABLESIZE", 57, 60, "VM table size"),
        Field("GAUPDATEDISSUP", 61, 61, "guest APIC update disable"),
        Field("FORCEPHYDESTSUP", 62, 62, "force physical destination mode"),
        Field("SNPSUP", 63, 63, "SEV-SNP support (Linux: SNP)"),
    ),
    "Extended Feature Register (MMIO 0x30)",
)

EFR2 = Register(
    "EFR2",
    64,
    (
        Field("SEVSNPIOSUP", 1, 1, "SEV-TIO (Linux: SEV-TIO)"),
        Field("GCR3TRPMODE", 3, 3, "GCR3 table root pointer as GPA (needed for nesting)"),
        Field("GAPPIDISSUP", 4, 4, "GAPPI disable"),
        Field("SNPAVICSUP", 5, 7, "SNP AVIC support", {1: "guest virtual APIC usable with SNP"}),
        Field(
            "NUMINTREMAPSUP",
            8,
            9,
            "interrupt remapping entries per device",
            {0: "512 IRTEs per device", 1: "2048 IRTEs per device"},
        ),
        Field("HTRANGEIGNORE", 11, 11, "HyperTransport reserved window not applied"),
    ),
    "Extended Feature 2 Register (MMIO 0x1A0)",
)

#: The names Linux's print_iommu_info appends to "Extended features (...):", bits 0-9.
_DMESG_NAMES = ("PreF", "PPR", "X2APIC", "NX", "GT", "[5]", "IA", "GA", "HE", "PC")


def dmesg_feature_names(efr: int, efr2: int | None = None) -> str:
    """The feature list Linux prints after "Extended features (...):" for these values."""
    names = [n for bit, n in enumerate(_DMESG_NAMES) if efr >> bit & 1]
    if EFR.decode(efr)["GAMSUP"] & 1:
        names.append("GA_vAPIC")
    if EFR.decode(efr)["SNPSUP"]:
        names.append("SNP")
    if efr2 is not None and EFR2.decode(efr2)["SEVSNPIOSUP"]:
        names.append("SEV-TIO")
    return " ".join(names)


def host_iova_bits(efr: int) -> int | None:
    """Input width of a v1 (host) page table: HATS+4 levels; None when HATS=3 (HATDis)."""
    hats = EFR.decode(efr)["HATS"]
    return None if hats == 3 else min(12 + 9 * (hats + 4), 64)


def derive(efr: int, efr2: int | None) -> dict[str, Any]:
    f = EFR.decode(efr)
    f2 = EFR2.decode(efr2) if efr2 is not None else None
    gt = bool(f["GTSUP"])
    hats = f["HATS"]
    notes: list[str] = []
    if hats == 3:
        notes.append("HATS=3: host (v1) translation is disabled; Linux can only use the v2 page table.")
    else:
        notes.append(
            "Kernels before HATS support (about v6.15) gave v1 domains a 64-bit aperture whatever HATS "
            "says; newer ones end it at 2^host_iova_bits - 1."
        )
    if gt:
        notes.append(
            "The v2 table sign-extends like the CPU: newer kernels end v2 domains one bit below "
            "guest_iova_bits."
        )
    if f["GATS"] > 1:
        notes.append("GATS values 2-3 are reserved; Linux then uses a 4-level guest table.")
    if f2 is None:
        notes.append("EFR2 not given: EFR2-derived facts are unknown.")

    def efr2_flag(name: str, value: int = 1) -> bool | None:
        return None if f2 is None else f2[name] == value

    return {
        "host_page_table_levels": None if hats == 3 else hats + 4,
        "host_iova_bits": host_iova_bits(efr),
        "host_translation": hats != 3,
        "guest_page_table_levels": 5 if f["GATS"] == 1 else 4,
        "guest_iova_bits": 57 if f["GATS"] == 1 else 48,
        "guest_translation": gt,
        "v2_page_table": gt and bool(f["GIOSUP"]),
        "pasid_bits": f["PASMAX"] + 1 if gt else None,
        "max_pasids": (1 << (f["PASMAX"] + 1)) - 1 if gt else None,
        # amd_iommu_hd_support: HDSUP, and never with host translation disabled.
        "dirty_tracking": bool(f["HDSUP"]) and hats != 3,
        "nest_parent": None if f2 is None else gt and bool(f["GIOSUP"]) and bool(f2["GCR3TRPMODE"]),
        "ppr": bool(f["PPRSUP"]),
        "x2apic": bool(f["XTSUP"]),
        "nx": bool(f["NXSUP"]),
        "guest_apic": bool(f["GASUP"]),
        "guest_vapic": bool(f["GAMSUP"] & 1),
        "hw_error_registers": bool(f["HESUP"]),
        "perf_counters": bool(f["PCSUP"]),
        "host_access_bit": bool(f["HASUP"]),
        "msi_cap_mmio": bool(f["MSICAPMMIOSUP"]),
        "snp": bool(f["SNPSUP"]),
        "sev_tio": efr2_flag("SEVSNPIOSUP"),
        "snp_avic": efr2_flag("SNPAVICSUP"),
        "irte_2k": efr2_flag("NUMINTREMAPSUP"),
        "ht_range_ignore": efr2_flag("HTRANGEIGNORE"),
        "linux_feature_names": dmesg_feature_names(efr, efr2),
        "reserved_efr_bits": bits_list(f.undefined),
        "undefined_efr2_bits": None if f2 is None else bits_list(f2.undefined),
        "notes": notes,
    }


def _facts(d: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    host = (
        f"{d['host_iova_bits']} bits ({d['host_page_table_levels']}-level)"
        if d["host_translation"]
        else "disabled (HATS=3)"
    )
    facts = [
        ("host IOVA bits (v1 page table)", host),
        (
            "guest IOVA bits (v2 page table)",
            f"{d['guest_iova_bits']} bits ({d['guest_page_table_levels']}-level)",
        ),
        ("guest translation (GT)", yes_no(d["guest_translation"])),
        ("PASID", f"{d['pasid_bits']} bits ({d['max_pasids']} PASIDs)" if d["guest_translation"] else "no"),
        ("dirty tracking (HDSUP)", yes_no(d["dirty_tracking"])),
        ("nest parent (GT+GIOSUP+GCR3TRPMODE)", yes_no(d["nest_parent"])),
        ("x2APIC", yes_no(d["x2apic"])),
        ("guest virtual APIC", yes_no(d["guest_vapic"])),
        ("SEV-SNP", yes_no(d["snp"])),
        ("Linux prints", d["linux_feature_names"] or "(nothing)"),
    ]
    if d["reserved_efr_bits"]:
        facts.append(("reserved EFR bits set", ", ".join(map(str, d["reserved_efr_bits"]))))
    if d["undefined_efr2_bits"]:
        facts.append(("EFR2 bits Linux does not name", ", ".join(map(str, d["undefined_efr2_bits"]))))
    facts += [("note", n) for n in d["notes"]]
    return tuple(facts)


def decode(efr: int, efr2: int | None = None) -> UnitDecode:
    registers = [("efr", EFR.decode(efr))]
    if efr2 is not None:
        registers.append(("efr2", EFR2.decode(efr2)))
    derived = derive(efr, efr2)
    return UnitDecode("amd-vi", tuple(registers), derived, _facts(derived))
