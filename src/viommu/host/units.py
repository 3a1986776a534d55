"""From raw unit registers to what VFIO will give a device behind that unit.

The kernel's reserved_regions file does not hold the end of the aperture
(seen on Linux 6.12 under an emulated intel-iommu: only the MSI window and
RMRRs), so a backend without ioctls derives the aperture from the decoded
registers the way the driver sizes a paging domain, and cuts the
non-relaxable reserved regions out of it, as VFIO type1 and iommufd do
(``vfio_iommu_resv_exclude`` and ``iopt_table_enforce_dev_resv_regions`` skip
only ``direct-relaxable``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from viommu.host.caps import U64_MAX, IommuType, IovaRange, ReservedRegion, ResvType, complement
from viommu.host.inventory import IommuUnit
from viommu.regs import amd, smmuv3, vtd

#: Linux's AMD_IOMMU_PGSIZES for a v1 (host) page table: every power of two from
#: 4K to 2^51 except 512G (a hardware bug). Kernels before about 6.5 also
#: advertised sizes from 2^52 up (~0xFFF & ~512G); no guest maps those.
AMD_V1_PGSIZES = (((1 << 52) - 1) & ~0xFFF) ^ (1 << 39)

#: The AMD driver sizes v1 domains from EFR.HATS from this release on (before,
#: 64 bits whatever HATS says); approximate, see linux-uapi.md §6.1.
AMD_HATS_FROM = (6, 15)

_NON_RELAXABLE = (ResvType.MSI, ResvType.RESERVED, ResvType.DIRECT)


def usable_ranges(aperture_bits: int, regions: Iterable[ReservedRegion]) -> tuple[IovaRange, ...]:
    """[0, 2^bits - 1] minus every reserved region VFIO cuts out (all but direct-relaxable)."""
    top = U64_MAX if aperture_bits >= 64 else (1 << aperture_bits) - 1
    holes = [IovaRange(r.start, r.last) for r in regions if r.type in _NON_RELAXABLE]
    return complement(holes, 0, top)


def vtd_unit(
    name: str, registers: Mapping[str, int], *, address: int | None, scalable_mode: bool
) -> IommuUnit:
    """A VT-d unit; ``scalable_mode`` is the kernel's boot-time choice (ECAP.SMTS is checked here)."""
    cap, ecap = registers["cap"], registers["ecap"]
    e = vtd.ECAP.decode(ecap)
    sm = scalable_mode and bool(e["SMTS"])
    bits = vtd.domain_iova_bits(cap, ecap, scalable_mode=sm)
    first = vtd.uses_first_stage(ecap, scalable_mode=sm)
    notes: list[str] = []
    if bits is None:
        notes.append("Linux does not use this unit for DMA translation (no usable SAGAW)")
    elif first:
        notes.append(
            f"scalable mode with first-stage domains: the aperture drops the canonical sign bit ({bits} bits)"
        )
    return IommuUnit(
        name=name,
        iommu_type=IommuType.INTEL_VTD,
        registers=dict(registers),
        address=address,
        aperture_bits=bits,
        page_size_mask=None
        if bits is None
        else (vtd.first_stage_pgsizes(cap) if first else vtd.second_stage_pgsizes(cap)),
        scalable_mode=sm,
        nesting=sm and bool(e["NEST"]),
        dirty_tracking=sm and bool(e["SLADS"]) and bool(e["SMPWCS"]),
        pasid_bits=e["PSS"] + 1 if sm and e["PASID"] else None,
        notes=tuple(notes),
    )


def amd_unit(
    name: str, registers: Mapping[str, int], *, kernel: tuple[int, int] | None, notes: Iterable[str] = ()
) -> IommuUnit:
    """An AMD-Vi unit from EFR (and EFR2 when the kernel shows it)."""
    efr, efr2 = registers["efr"], registers.get("efr2")
    derived = amd.derive(efr, efr2)
    hats_bits = amd.host_iova_bits(efr)
    extra = list(notes)
    bits: int | None
    if hats_bits is None:
        bits = None
        extra.append("EFR.HATS=3: host (v1) translation disabled; the v2 aperture is not modelled")
    elif kernel is not None and kernel < AMD_HATS_FROM:
        bits = 64
        extra.append(f"kernel {kernel[0]}.{kernel[1]} gives v1 domains a 64-bit aperture whatever HATS says")
    else:
        bits = hats_bits
    return IommuUnit(
        name=name,
        iommu_type=IommuType.AMD,
        registers=dict(registers),
        aperture_bits=bits,
        page_size_mask=None if bits is None else AMD_V1_PGSIZES,
        nesting=derived["nest_parent"],
        dirty_tracking=derived["dirty_tracking"],
        pasid_bits=derived["pasid_bits"],
        notes=tuple(extra),
    )


def amd_ht_hole_applies(registers: Mapping[str, int]) -> bool:
    """Whether Linux reserves the HyperTransport window (not with EFR2.HTRANGEIGNORE)."""
    efr2 = registers.get("efr2")
    return efr2 is None or not amd.EFR2.decode(efr2)["HTRANGEIGNORE"]


#: The HyperTransport window AMD hosts reserve (linux-uapi.md §4.1).
AMD_HT_HOLE = ReservedRegion(0xFD_0000_0000, 0xFF_FFFF_FFFF, ResvType.RESERVED)


def smmuv3_unit(name: str, registers: Mapping[str, int]) -> IommuUnit:
    """An SMMUv3 unit; sysfs shows no ID registers, so without them little is known."""
    if "idr0" not in registers or "idr5" not in registers:
        return IommuUnit(
            name=name,
            iommu_type=IommuType.ARM_SMMUV3,
            registers=dict(registers),
            notes=(
                "SMMUv3 shows no ID registers in sysfs: aperture and page sizes unknown "
                "(the iommufd backend reads them from IOMMU_GET_HW_INFO)",
            ),
        )
    d = smmuv3.decode(dict(registers)).derived
    # arm_smmu_domain_finalise: a stage-1 domain when the unit has stage 1, input
    # size 48 bits (52 with VAX); a stage-2 domain takes the IAS.
    bits = d["stage1_input_bits"] if d["stage1"] else d["stage2_input_bits"]
    pgsizes = d["pgsize_bitmap"]
    if pgsizes & smmuv3.SZ_4K:
        # A 4K-page kernel picks the 4K granule; its block sizes are 2M and 1G.
        pgsizes = smmuv3.SZ_4K | smmuv3.SZ_2M | smmuv3.SZ_1G
    return IommuUnit(
        name=name,
        iommu_type=IommuType.ARM_SMMUV3,
        registers=dict(registers),
        aperture_bits=bits,
        page_size_mask=pgsizes,
        nesting=d["nesting"],
        dirty_tracking=d["dirty_tracking"],
        pasid_bits=d["ssid_bits"] or None,
    )
