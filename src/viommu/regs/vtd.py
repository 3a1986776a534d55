"""Intel VT-d VER_REG, CAP_REG and ECAP_REG, and what Linux derives from them.

Field names are the VT-d specification abbreviations in upper case; the bit
positions are those of Linux's ``cap_*``/``ecap_*`` accessors
(drivers/iommu/intel/iommu.h). Derived values follow the driver:

* ``__iommu_calculate_sagaw``/``__iommu_calculate_agaw`` pick the page-table
  depth, ``paging_domain_alloc`` clamps it to MGAW and, for a first-stage
  domain, drops the sign bit of the canonical address (valid through v6.18;
  v6.19's generic page table keeps the same limits);
* ``sm_supported``, ``pasid_supported``, ``nested_supported`` and
  ``ssads_supported`` are gated on ECAP.SMTS. The kernel also needs scalable
  mode switched on (``intel_iommu=sm_on`` or the build default), which no
  register shows: derived flags here mean "the hardware supports it".
"""

from __future__ import annotations

from viommu.errors import InputError
from viommu.regs.table import Field, Register
from viommu.regs.unit import UnitDecode, ValueText, bits_list, page_sizes, sizes_text, yes_no

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

SZ_4K = 1 << 12
SZ_2M = 1 << 21
SZ_1G = 1 << 30

#: Linux's DEFAULT_DOMAIN_ADDRESS_WIDTH: a paging domain never uses more than 5 levels.
DEFAULT_DOMAIN_ADDRESS_WIDTH = 57


def _sagaw_meaning(raw: int) -> str:
    widths = [f"{30 + 9 * i}-bit/{i + 2}-level" for i in range(4) if raw >> i & 1]
    if raw >> 4:
        widths.append("bit 4 (reserved)")
    return ", ".join(widths) if widths else "none: no second-stage translation"


def _sllps_meaning(raw: int) -> str:
    sizes = [s for bit, s in ((0, "2M"), (1, "1G"), (2, "512G"), (3, "1T")) if raw >> bit & 1]
    return "second-stage large pages: " + (", ".join(sizes) if sizes else "none")


VER = Register(
    "VER_REG",
    32,
    (
        Field("MIN", 0, 3, "minor version"),
        Field("MAX", 4, 7, "major version"),
    ),
    "Version Register (offset 0x0)",
)

CAP = Register(
    "CAP_REG",
    64,
    (
        Field(
            "ND",
            0,
            2,
            "number of domain ids: 2^(4+2*ND)",
            {n: f"{1 << (4 + 2 * n)} domain ids" for n in range(7)} | {7: "reserved (Linux computes 262144)"},
        ),
        Field("AFL", 3, 3, "advanced fault logging"),
        Field("RWBF", 4, 4, "required write-buffer flushing"),
        Field("PLMR", 5, 5, "protected low-memory region"),
        Field("PHMR", 6, 6, "protected high-memory region"),
        Field("CM", 7, 7, "caching mode: non-present entries may be cached (virtual IOMMUs)"),
        Field(
            "SAGAW", 8, 12, "supported adjusted guest address widths (bitmap)", ValueText(5, _sagaw_meaning)
        ),
        Field(
            "MGAW",
            16,
            21,
            "maximum guest address width - 1",
            ValueText(6, lambda n: f"{n + 1}-bit maximum guest address width"),
        ),
        Field("ZLR", 22, 22, "zero-length read"),
        Field("ISOCH", 23, 23, "isochrony"),
        Field(
            "FRO",
            24,
            33,
            "fault-recording register offset / 16",
            ValueText(10, lambda n: f"fault-recording registers at offset 0x{16 * n:x}"),
        ),
        Field("SLLPS", 34, 37, "second-level large page support (bitmap)", ValueText(4, _sllps_meaning)),
        Field("PSI", 39, 39, "page-selective invalidation"),
        Field(
            "NFR",
            40,
            47,
            "number of fault-recording registers - 1",
            ValueText(8, lambda n: f"{n + 1} fault-recording register{'s' if n else ''}"),
        ),
        Field("MAMV", 48, 53, "maximum address mask value (page-selective invalidation)"),
        Field("DWD", 54, 54, "write draining"),
        Field("DRD", 55, 55, "read draining"),
        Field("FL1GP", 56, 56, "first-stage 1 GiB pages"),
        Field("PI", 59, 59, "posted interrupts"),
        Field("FL5LP", 60, 60, "first-stage 5-level paging (57-bit)"),
        Field("ECMDS", 61, 61, "enhanced command support (ECCAP_REG at 0x430)"),
        Field("ESIRTPS", 62, 62, "enhanced set interrupt remap table pointer"),
        Field("ESRTPS", 63, 63, "enhanced set root table pointer"),
    ),
    "Capability Register (offset 0x8)",
)

ECAP = Register(
    "ECAP_REG",
    64,
    (
        Field("C", 0, 0, "page-walk coherency (legacy mode)"),
        Field("QI", 1, 1, "queued invalidation"),
        Field("DT", 2, 2, "device-TLB (ATS)"),
        Field("IR", 3, 3, "interrupt remapping"),
        Field("EIM", 4, 4, "extended interrupt mode (x2APIC)"),
        Field("PT", 6, 6, "pass-through"),
        Field("SC", 7, 7, "snoop control (enforce cache coherency)"),
        Field(
            "IRO",
            8,
            17,
            "IOTLB register offset / 16",
            ValueText(10, lambda n: f"IOTLB registers at offset 0x{16 * n:x}"),
        ),
        Field("MHMV", 20, 23, "maximum handle mask value (interrupt entry cache invalidation)"),
        Field(
            "ECS", 24, 24, "extended context (VT-d 2.x; reserved since 3.0; Linux dropped ecap_ecs in 6.0)"
        ),
        Field("MTS", 25, 25, "memory type"),
        Field("NEST", 26, 26, "nested translation"),
        Field("DIS", 27, 27, "deferred invalidate"),
        Field(
            "BROKEN_PASID", 28, 28, "VT-d 2.x PASID (never used; Linux ecap_broken_pasid; reserved since 3.0)"
        ),
        Field("PRS", 29, 29, "page requests (PRI)"),
        Field("ERS", 30, 30, "execute requests"),
        Field("SRS", 31, 31, "supervisor requests"),
        Field("NWFS", 33, 33, "no-write flag"),
        Field("EAFS", 34, 34, "extended accessed flag"),
        Field("PSS", 35, 39, "PASID size - 1", ValueText(5, lambda n: f"{n + 1}-bit PASIDs")),
        Field("PASID", 40, 40, "PASID support (scalable mode)"),
        Field("DIT", 41, 41, "device-TLB invalidation throttle"),
        Field("PDS", 42, 42, "page-request drain"),
        Field("SMTS", 43, 43, "scalable-mode translation"),
        Field("VCS", 44, 44, "virtual command (older headers only)"),
        Field("SLADS", 45, 45, "second-stage accessed/dirty (dirty tracking)"),
        Field("SLTS", 46, 46, "second-stage translation (scalable mode)"),
        Field("FLTS", 47, 47, "first-stage translation (scalable mode)"),
        Field("SMPWCS", 48, 48, "scalable-mode page-walk coherency"),
        Field("RPS", 49, 49, "RID_PASID"),
        Field("PMS", 51, 51, "performance monitoring"),
    ),
    "Extended Capability Register (offset 0x10)",
)


def parse_version(text: str, *, where: str | None = None) -> int:
    """``"MAJOR:MINOR"`` (dmesg, sysfs ``version``) as a VER_REG value."""
    major, sep, minor = text.strip().partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise InputError(f"{text.strip()!r} is not a VT-d version MAJOR:MINOR", where=where)
    if int(major) > 15 or int(minor) > 15:
        raise InputError(f"{text.strip()!r}: major and minor are 4-bit fields (0-15)", where=where)
    return VER.encode(MAX=int(major), MIN=int(minor))


def _agaw_width(agaw: int) -> int:
    return min(30 + 9 * agaw, 64)


def effective_sagaw(cap: int, ecap: int, *, scalable_mode: bool) -> int:
    """``__iommu_calculate_sagaw``: the page-table depths the driver may use.

    ``scalable_mode`` is ``sm_supported``: the kernel runs the unit in
    scalable mode (boot option) and ECAP.SMTS is set.
    """
    c, e = CAP.decode(cap), ECAP.decode(ecap)
    second = c["SAGAW"]
    # First stage is 4-level, plus 5-level with FL5LP (bit 2 = 48-bit, bit 3 = 57-bit).
    first = 0b0100 | (0b1000 if c["FL5LP"] else 0)
    if not (scalable_mode and e["FLTS"]):
        return second
    if not e["SLTS"]:
        return first
    return first & second


def _agaw(sagaw: int) -> int | None:
    """``__iommu_calculate_agaw(iommu, 57)``: the highest usable depth, None if none."""
    limit = -(-(DEFAULT_DOMAIN_ADDRESS_WIDTH - 30) // 9)  # width_to_agaw(57) = 3
    for agaw in range(limit, -1, -1):
        if sagaw >> agaw & 1:
            return agaw
    return None


def usable(cap: int, ecap: int, *, scalable_mode: bool) -> bool:
    """Whether Linux keeps the unit for DMA translation (``alloc_iommu`` and the agaw check)."""
    c, e = CAP.decode(cap), ECAP.decode(ecap)
    if not c["SAGAW"] and (not e["SMTS"] or e["SLTS"]):
        return False  # "No supported address widths. Not attempting DMA translation."
    sm = scalable_mode and bool(e["SMTS"])
    return _agaw(effective_sagaw(cap, ecap, scalable_mode=sm)) is not None


def uses_first_stage(ecap: int, *, scalable_mode: bool) -> bool:
    """Whether a plain paging domain (VFIO type1, iommufd IOAS) is first-stage.

    ``first_level_by_default`` (≈v6.13+): scalable mode and ECAP.FLTS. Older
    kernels gave unmanaged (VFIO) domains the second stage when both stages
    existed.
    """
    e = ECAP.decode(ecap)
    return scalable_mode and bool(e["SMTS"]) and bool(e["FLTS"])


def domain_iova_bits(cap: int, ecap: int, *, scalable_mode: bool) -> int | None:
    """N such that the paging-domain aperture VFIO/iommufd sees is [0, 2^N - 1].

    ``scalable_mode``: whether the kernel runs the unit in scalable mode (the
    boot option; ECAP.SMTS is checked here). Returns None when Linux does not
    use the unit for DMA translation. Examples: 39 on client parts with MGAW
    38, 48 on 4-level servers, 47 on a scalable-mode unit whose domains are
    first-stage 4-level (the top bit is the canonical sign bit).
    """
    if not usable(cap, ecap, scalable_mode=scalable_mode):
        return None
    sm = scalable_mode and bool(ECAP.decode(ecap)["SMTS"])
    agaw = _agaw(effective_sagaw(cap, ecap, scalable_mode=sm))
    assert agaw is not None  # usable() checked it
    width = min(_agaw_width(agaw), CAP.decode(cap)["MGAW"] + 1)
    if uses_first_stage(ecap, scalable_mode=sm):
        return width - 1
    return width


def second_stage_pgsizes(cap: int) -> int:
    """Page-size bitmap of a second-stage domain (``iommu_superpage_capability``).

    Linux takes ``fls(SLLPS)`` levels of superpages and knows only two (2M,
    1G): a value with bit 2 or 3 set gives no superpages at all.
    """
    levels = CAP.decode(cap)["SLLPS"].bit_length()
    return SZ_4K | {1: SZ_2M, 2: SZ_2M | SZ_1G}.get(levels, 0)


def first_stage_pgsizes(cap: int) -> int:
    """Page-size bitmap of a first-stage domain: 4K and 2M, 1G with FL1GP."""
    return SZ_4K | SZ_2M | (SZ_1G if CAP.decode(cap)["FL1GP"] else 0)


def derive(cap: int, ecap: int) -> dict[str, Any]:
    """Every value Linux derives from CAP/ECAP, JSON-ready, in a stable order."""
    c, e = CAP.decode(cap), ECAP.decode(ecap)
    smts = bool(e["SMTS"])
    mgaw_bits = c["MGAW"] + 1
    sagaw_bits = [30 + 9 * i for i in range(4) if c["SAGAW"] >> i & 1]
    legacy = domain_iova_bits(cap, ecap, scalable_mode=False)
    scalable = domain_iova_bits(cap, ecap, scalable_mode=True) if smts else None
    first_stage = smts and bool(e["FLTS"])
    pasid = smts and bool(e["PASID"])
    notes: list[str] = []
    widest = max((w for w in sagaw_bits if w <= DEFAULT_DOMAIN_ADDRESS_WIDTH), default=None)
    if widest is not None and mgaw_bits < widest:
        notes.append(
            f"MGAW ({mgaw_bits} bits) is below the widest page-table level ({widest} bits): Linux clamps "
            f"domains to {mgaw_bits} bits. The ACPI DMAR 'Host address width' (46 on many client parts "
            "with this unit) bounds physical addresses, not IOVAs."
        )
    if legacy is None:
        notes.append("Linux does not use this unit for DMA translation in legacy mode (no usable SAGAW).")
    if smts:
        notes.append(
            "Scalable-mode facts assume the kernel runs the unit in scalable mode (intel_iommu=sm_on or the "
            "build default); the registers cannot show the boot option."
        )
    if c["SAGAW"] >> 4:
        notes.append("SAGAW bit 4 is reserved; Linux never uses it.")
    if c["ND"] == 7:
        notes.append("ND=7 is reserved by the VT-d specification.")
    if c["SLLPS"] >> 2:
        notes.append("SLLPS bits 2-3 are reserved; Linux then uses no second-stage superpages.")
    return {
        "version": None,
        "mgaw_bits": mgaw_bits,
        "sagaw_bits": sagaw_bits,
        "max_iova_bits": legacy,
        "max_iova_bits_scalable": scalable,
        "scalable_domain_stage": None if scalable is None else ("first" if first_stage else "second"),
        "first_stage_bits": (57 if c["FL5LP"] else 48) if first_stage else None,
        "second_stage_page_sizes": page_sizes(second_stage_pgsizes(cap)),
        "second_stage_pgsize_bitmap": second_stage_pgsizes(cap),
        "first_stage_page_sizes": page_sizes(first_stage_pgsizes(cap)) if first_stage else None,
        "first_stage_pgsize_bitmap": first_stage_pgsizes(cap) if first_stage else None,
        "domains": 1 << (4 + 2 * c["ND"]),
        "fault_recording_registers": c["NFR"] + 1,
        "fault_register_offset": c["FRO"] * 16,
        "iotlb_register_offset": e["IRO"] * 16,
        "scalable_mode": smts,
        "first_stage": first_stage,
        "second_stage_scalable": smts and bool(e["SLTS"]),
        "pasid": pasid,
        "pasid_bits": e["PSS"] + 1 if pasid else None,
        "max_pasids": 2 << e["PSS"] if pasid else None,
        "nesting": smts and bool(e["NEST"]),
        "dirty_tracking": smts and bool(e["SLADS"]) and bool(e["SMPWCS"]),
        "page_walk_coherent": bool(e["C"]),
        "page_walk_coherent_scalable": smts and bool(e["SMPWCS"]),
        "enforce_cache_coherency": bool(e["SC"]),
        "caching_mode": bool(c["CM"]),
        "device_tlb": bool(e["DT"]),
        "pass_through": bool(e["PT"]),
        "interrupt_remapping": bool(e["IR"]),
        "x2apic": bool(e["EIM"]),
        "posted_interrupts": bool(c["PI"]),
        "reserved_cap_bits": bits_list(c.undefined),
        "reserved_ecap_bits": bits_list(e.undefined),
        "notes": notes,
    }


def _bits(width: int | None) -> str:
    return "none (unit not used for DMA translation)" if width is None else f"{width}"


def _facts(d: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    facts = []
    if d["version"] is not None:
        facts.append(("version", d["version"]))
    sagaw = ", ".join(f"{w}-bit/{(w - 30) // 9 + 2}-level" for w in d["sagaw_bits"]) or "none"
    facts.append(
        ("max IOVA bits" + (" (legacy mode)" if d["scalable_mode"] else ""), _bits(d["max_iova_bits"]))
    )
    if d["scalable_mode"]:
        stage = d["scalable_domain_stage"]
        facts.append(
            (
                f"max IOVA bits (scalable mode, {stage or 'no'}-stage domain)",
                _bits(d["max_iova_bits_scalable"]),
            )
        )
    facts += [
        ("MGAW", f"{d['mgaw_bits']} bits"),
        ("SAGAW", sagaw + (" only" if len(d["sagaw_bits"]) == 1 else "")),
        ("second-stage page sizes", sizes_text(d["second_stage_pgsize_bitmap"])),
    ]
    if d["first_stage"]:
        facts.append(("first-stage width", f"{d['first_stage_bits']} bits"))
        facts.append(("first-stage page sizes", sizes_text(d["first_stage_pgsize_bitmap"])))
    facts += [
        ("domain ids", str(d["domains"])),
        ("fault registers", f"{d['fault_recording_registers']} at offset 0x{d['fault_register_offset']:x}"),
        ("IOTLB registers offset", f"0x{d['iotlb_register_offset']:x}"),
        ("scalable mode (hardware)", yes_no(d["scalable_mode"])),
        ("PASID", f"{d['pasid_bits']} bits ({d['max_pasids']} PASIDs)" if d["pasid"] else "no"),
        ("nesting", yes_no(d["nesting"])),
        ("dirty tracking", yes_no(d["dirty_tracking"])),
        ("snoop control", yes_no(d["enforce_cache_coherency"])),
        ("caching mode", yes_no(d["caching_mode"])),
        ("interrupt remapping", yes_no(d["interrupt_remapping"]) + (" (x2APIC)" if d["x2apic"] else "")),
    ]
    for key, label in (
        ("reserved_cap_bits", "reserved CAP bits set"),
        ("reserved_ecap_bits", "reserved ECAP bits set"),
    ):
        if d[key]:
            facts.append((label, ", ".join(str(b) for b in d[key])))
    facts += [("note", n) for n in d["notes"]]
    return tuple(facts)


def decode(cap: int, ecap: int, ver: int | None = None) -> UnitDecode:
    """The full decode of one VT-d unit (``ver`` optional)."""
    registers = [("cap", CAP.decode(cap)), ("ecap", ECAP.decode(ecap))]
    derived = derive(cap, ecap)
    if ver is not None:
        v = VER.decode(ver)
        registers.append(("ver", v))
        derived["version"] = f"{v['MAX']}:{v['MIN']}"
    return UnitDecode("intel-vtd", tuple(registers), derived, _facts(derived))
