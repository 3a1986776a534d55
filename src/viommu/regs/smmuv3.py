"""ARM SMMUv3 ID registers IDR0, IDR1, IDR3, IDR5, IIDR and AIDR (32 bits each).

Field names follow the SMMUv3 architecture specification (IHI 0070); Linux
defines a subset (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h), the rest
(TERM_MODEL, BTM, DORMHINT, ATOS, VATOS, ...) come from the specification.
Derived values follow ``arm_smmu_device_hw_probe``. Only IDR0 is required;
facts that need a register that was not given are None.
"""

from __future__ import annotations

from typing import Any

from viommu.regs.table import Decoded, Field, Register
from viommu.regs.unit import UnitDecode, bits_list, sizes_text, yes_no

IDR0 = Register(
    "IDR0",
    32,
    (
        Field("S2P", 0, 0, "stage 2 translation"),
        Field("S1P", 1, 1, "stage 1 translation"),
        Field(
            "TTF",
            2,
            3,
            "translation table formats",
            {0: "reserved", 1: "AArch32 only (unsupported by Linux)", 2: "AArch64", 3: "AArch32 and AArch64"},
        ),
        Field("COHACC", 4, 4, "coherent access (table walks, queues)"),
        Field("BTM", 5, 5, "broadcast TLB maintenance"),
        Field(
            "HTTU",
            6,
            7,
            "hardware translation table update",
            {0: "none", 1: "access flag", 2: "access flag and dirty state", 3: "reserved"},
        ),
        Field("DORMHINT", 8, 8, "dormant hint"),
        Field("HYP", 9, 9, "hypervisor stage 1 contexts (E2H)"),
        Field("ATS", 10, 10, "PCIe ATS"),
        Field("NS1ATS", 11, 11, "no stage 1 for ATS"),
        Field("ASID16", 12, 12, "16-bit ASIDs"),
        Field("MSI", 13, 13, "MSI interrupts"),
        Field("SEV", 14, 14, "generates WFE wake-up events"),
        Field("ATOS", 15, 15, "address translation operations"),
        Field("PRI", 16, 16, "PCIe page request interface"),
        Field("VMW", 17, 17, "VMID wildcard matching"),
        Field("VMID16", 18, 18, "16-bit VMIDs"),
        Field("CD2L", 19, 19, "2-level context descriptor tables"),
        Field("VATOS", 20, 20, "virtual address translation operations"),
        Field(
            "TTENDIAN",
            21,
            22,
            "translation table endianness",
            {0: "mixed", 1: "reserved", 2: "little-endian", 3: "big-endian"},
        ),
        Field("ATSRECERR", 23, 23, "ATS recoverable error reporting"),
        Field(
            "STALL_MODEL",
            24,
            25,
            "stall model",
            {0: "stall and terminate", 1: "terminate only", 2: "stall forced", 3: "reserved"},
        ),
        Field("TERM_MODEL", 26, 26, "terminate model: 1 = faults always abort"),
        Field(
            "ST_LEVEL",
            27,
            28,
            "stream table levels",
            {0: "linear only", 1: "2-level", 2: "reserved", 3: "reserved"},
        ),
        Field("RME_IMPL", 30, 30, "realm management extension"),
    ),
    "ID register 0 (offset 0x0)",
)

IDR1 = Register(
    "IDR1",
    32,
    (
        Field("SIDSIZE", 0, 5, "stream id bits"),
        Field("SSIDSIZE", 6, 10, "substream id (PASID) bits"),
        Field("PRIQS", 11, 15, "log2 PRI queue entries"),
        Field("EVENTQS", 16, 20, "log2 event queue entries"),
        Field("CMDQS", 21, 25, "log2 command queue entries"),
        Field("ATTR_PERMS_OVR", 26, 26, "incoming permission attributes can be overridden"),
        Field("ATTR_TYPES_OVR", 27, 27, "incoming memory attributes can be overridden"),
        Field("REL", 28, 28, "relative base addresses (embedded)"),
        Field("QUEUES_PRESET", 29, 29, "queue bases fixed (embedded)"),
        Field("TABLES_PRESET", 30, 30, "table bases fixed (embedded)"),
        Field("ECMDQ", 31, 31, "enhanced command queues"),
    ),
    "ID register 1 (offset 0x4)",
)

IDR3 = Register(
    "IDR3",
    32,
    (
        Field("HAD", 2, 2, "hierarchical attribute disables"),
        Field("PBHA", 3, 3, "page-based hardware attributes"),
        Field("XNX", 4, 4, "EL0/EL1 execute-never distinction at stage 2"),
        Field("PPS", 5, 5, "PRI response PASID forced"),
        Field("MPAM", 7, 7, "memory partitioning and monitoring"),
        Field("FWB", 8, 8, "stage 2 forced write-back"),
        Field("STT", 9, 9, "small translation tables"),
        Field("RIL", 10, 10, "range invalidation"),
        Field("BBML", 11, 12, "break-before-make level", {0: "none", 1: "BBML1", 2: "BBML2", 3: "reserved"}),
        Field("E0PD", 13, 13, "E0PD mechanism"),
        Field("PTWNNC", 14, 14, "page table walks non-cacheable"),
        Field("DPT", 15, 15, "device permission table"),
    ),
    "ID register 3 (offset 0xc)",
)

#: IDR5.OAS -> output address bits (the architecture's table, not 32+4n).
OAS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}

IDR5 = Register(
    "IDR5",
    32,
    (
        Field(
            "OAS",
            0,
            2,
            "output address size",
            {k: f"{v}-bit output addresses" for k, v in OAS_BITS.items()} | {7: "reserved"},
        ),
        Field("GRAN4K", 4, 4, "4K translation granule"),
        Field("GRAN16K", 5, 5, "16K translation granule"),
        Field("GRAN64K", 6, 6, "64K translation granule"),
        Field("VAX", 10, 11, "virtual address extension", {0: "48-bit VA", 1: "52-bit VA"}),
        Field("STALL_MAX", 16, 31, "maximum outstanding stalled transactions"),
    ),
    "ID register 5 (offset 0x14)",
)

IIDR = Register(
    "IIDR",
    32,
    (
        Field("IMPLEMENTER", 0, 11, "JEP106 implementer code"),
        Field("REVISION", 12, 15, "revision"),
        Field("VARIANT", 16, 19, "variant"),
        Field("PRODUCTID", 20, 31, "product id"),
    ),
    "Implementation identification (offset 0x18)",
)

AIDR = Register(
    "AIDR",
    32,
    (
        Field("ARCHMINORREV", 0, 3, "architecture minor revision (SMMUv3.x)"),
        Field("ARCHMAJORREV", 4, 7, "architecture major revision (0 = SMMUv3)"),
    ),
    "Architecture version (offset 0x1c)",
)

#: JSON key -> register, in contract order.
REGISTERS: dict[str, Register] = {
    "idr0": IDR0,
    "idr1": IDR1,
    "idr3": IDR3,
    "idr5": IDR5,
    "iidr": IIDR,
    "aidr": AIDR,
}

SZ_4K, SZ_16K, SZ_64K = 1 << 12, 1 << 14, 1 << 16
SZ_2M, SZ_32M, SZ_512M, SZ_1G, SZ_4T = 1 << 21, 1 << 25, 1 << 29, 1 << 30, 1 << 42


def oas_bits(oas: int) -> tuple[int, bool]:
    """(bits, known): Linux truncates an unknown OAS to 48 bits."""
    if oas in OAS_BITS:
        return OAS_BITS[oas], True
    return 48, False


def pgsize_bitmap(idr5: int) -> int:
    """Page sizes Linux allows from the granules (and 4T blocks with a 52-bit OAS)."""
    f = IDR5.decode(idr5)
    bitmap = 0
    if f["GRAN64K"]:
        bitmap |= SZ_64K | SZ_512M
    if f["GRAN16K"]:
        bitmap |= SZ_16K | SZ_32M
    if f["GRAN4K"]:
        bitmap |= SZ_4K | SZ_2M | SZ_1G
    if f["OAS"] == 6:
        bitmap |= SZ_4T
    return bitmap


def derive(regs: dict[str, Decoded]) -> dict[str, Any]:
    i0 = regs["idr0"]
    i1, i3, i5, aidr = regs.get("idr1"), regs.get("idr3"), regs.get("idr5"), regs.get("aidr")
    notes: list[str] = []
    ttf_ok = i0["TTF"] in (2, 3)
    if not ttf_ok:
        notes.append("TTF: AArch64 table format not supported! Linux refuses this SMMU.")
    if not (i0["S1P"] or i0["S2P"]):
        notes.append("Neither stage supported: Linux says 'no translation support!' and refuses it.")
    oas: int | None = None
    ias: int | None = None
    if i5 is not None:
        oas, known = oas_bits(i5["OAS"])
        if not known:
            notes.append("Unknown OAS value: Linux truncates to 48-bit output addresses.")
        # ias starts at 40 only for AArch32+64 table support, then max(ias, oas).
        ias = max(40 if i0["TTF"] == 3 else 0, oas)
    else:
        notes.append("IDR5 not given: OAS, IAS and page sizes are unknown.")
    embedded = None
    if i1 is not None:
        embedded = bool(i1["TABLES_PRESET"] or i1["QUEUES_PRESET"] or i1["REL"])
        if embedded:
            notes.append("Embedded implementation (preset tables/queues or REL): Linux refuses it.")
    sid_bits = i1["SIDSIZE"] if i1 is not None else None
    ssid_bits = i1["SSIDSIZE"] if i1 is not None else None
    bitmap = pgsize_bitmap(i5.value) if i5 is not None else None
    two_level = None if sid_bits is None else i0["ST_LEVEL"] == 1 and sid_bits > 8
    arch = None
    if aidr is not None:
        arch = f"SMMUv3.{aidr['ARCHMINORREV']}" if aidr["ARCHMAJORREV"] == 0 else None
    httu = i0["HTTU"]
    return {
        "oas_bits": oas,
        "ias_bits": ias,
        "stage1": bool(i0["S1P"]),
        "stage2": bool(i0["S2P"]),
        "nesting": bool(i0["S1P"] and i0["S2P"]),
        "aarch64_tables": ttf_ok,
        "stage1_input_bits": None if i5 is None else (52 if i5["VAX"] == 1 else 48),
        "stage2_input_bits": ias,
        "page_sizes": None if bitmap is None else [1 << b for b in bits_list(bitmap)],
        "pgsize_bitmap": bitmap,
        "sid_bits": sid_bits,
        "ssid_bits": ssid_bits,
        "max_pasids": None if ssid_bits is None else 1 << ssid_bits,
        "stream_table": None if two_level is None else ("2-level" if two_level else "linear"),
        "asid_bits": 16 if i0["ASID16"] else 8,
        "vmid_bits": 16 if i0["VMID16"] else 8,
        "ats": bool(i0["ATS"]),
        "pri": bool(i0["PRI"]),
        "coherent": bool(i0["COHACC"]),
        "httu": {0: "none", 1: "access", 2: "access+dirty"}.get(httu, "reserved"),
        # arm_smmu_dbm_capable: hardware dirty state and coherent table walks.
        "dirty_tracking": httu == 2 and bool(i0["COHACC"]),
        "range_invalidation": None if i3 is None else bool(i3["RIL"]),
        "stage2_fwb": None if i3 is None else bool(i3["FWB"]),
        "embedded": embedded,
        "architecture": arch,
        "reserved_bits": {k: bits_list(d.undefined) for k, d in regs.items() if d.undefined},
        "notes": notes,
    }


def _facts(d: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    def bits(v: int | None) -> str:
        return "unknown" if v is None else f"{v} bits"

    facts = [
        ("IAS (stage 2 input)", bits(d["ias_bits"])),
        ("OAS", bits(d["oas_bits"])),
        ("stage 1 input", bits(d["stage1_input_bits"])),
        ("stages", ", ".join(s for s, on in (("1", d["stage1"]), ("2", d["stage2"])) if on) or "none"),
        ("nesting (S1P and S2P)", yes_no(d["nesting"])),
        ("page sizes", "unknown" if d["pgsize_bitmap"] is None else sizes_text(d["pgsize_bitmap"])),
        ("stream id bits", "unknown" if d["sid_bits"] is None else str(d["sid_bits"])),
        (
            "substream id bits",
            "unknown" if d["ssid_bits"] is None else f"{d['ssid_bits']} ({d['max_pasids']} PASIDs)",
        ),
        ("ASID / VMID bits", f"{d['asid_bits']} / {d['vmid_bits']}"),
        ("ATS / PRI", f"{yes_no(d['ats'])} / {yes_no(d['pri'])}"),
        ("HTTU", d["httu"]),
        ("dirty tracking", yes_no(d["dirty_tracking"])),
        ("range invalidation", yes_no(d["range_invalidation"])),
    ]
    if d["architecture"]:
        facts.append(("architecture", d["architecture"]))
    for key, bits_set in d["reserved_bits"].items():
        facts.append((f"reserved {key.upper()} bits set", ", ".join(map(str, bits_set))))
    facts += [("note", n) for n in d["notes"]]
    return tuple(facts)


def decode(values: dict[str, int]) -> UnitDecode:
    """Decode the given registers (keys from :data:`REGISTERS`; ``idr0`` required)."""
    if "idr0" not in values:
        raise KeyError("idr0")
    regs = {k: REGISTERS[k].decode(values[k]) for k in REGISTERS if k in values}
    derived = derive(regs)
    return UnitDecode("arm-smmuv3", tuple(regs.items()), derived, _facts(derived))
