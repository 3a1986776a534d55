"""VT-d CAP/ECAP/VER tables and Linux's width rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viommu.errors import InputError
from viommu.regs import vtd

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@pytest.mark.parametrize("register", [vtd.CAP, vtd.ECAP])
@given(value=U64)
def test_encode_decode_round_trip_64(register: vtd.Register, value: int) -> None:
    decoded = register.decode(value)
    assert register.encode(decoded.fields, undefined=decoded.undefined) == value


@given(value=st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_ver_round_trip(value: int) -> None:
    decoded = vtd.VER.decode(value)
    assert vtd.VER.encode(decoded.fields, undefined=decoded.undefined) == value


def test_contract_field_names_present() -> None:
    # DESIGN.md "Public contract" lists these spec abbreviations.
    cap = (
        "ND AFL RWBF PLMR PHMR CM SAGAW MGAW ZLR FRO SLLPS PSI NFR MAMV DWD DRD FL1GP PI FL5LP"
        " ECMDS ESIRTPS ESRTPS"
    )
    ecap = ("C QI DT IR EIM PT SC IRO MHMV MTS NEST PRS ERS SRS NWFS EAFS PSS PASID DIT PDS SMTS SLADS SLTS "
            "FLTS SMPWCS RPS PMS")
    assert set(cap.split()) | {"ISOCH"} <= {f.name for f in vtd.CAP.fields}
    assert set(ecap.split()) | {"DIS", "VCS", "ECS", "BROKEN_PASID"} <= {f.name for f in vtd.ECAP.fields}


# Bit positions from linux-uapi.md 5.1/5.2 (Linux's cap_*/ecap_* accessors), one bit set at a time.
@pytest.mark.parametrize(
    ("name", "bit"),
    [("ISOCH", 23), ("ZLR", 22), ("PSI", 39), ("FL1GP", 56), ("PI", 59), ("FL5LP", 60), ("ESRTPS", 63)],
)
def test_cap_bit_positions(name: str, bit: int) -> None:
    assert vtd.CAP.decode(1 << bit)[name] == 1
    assert vtd.CAP.decode(1 << bit).undefined == 0


@pytest.mark.parametrize(
    ("name", "bit"),
    [("SC", 7), ("DIS", 27), ("BROKEN_PASID", 28), ("PASID", 40), ("SMTS", 43), ("VCS", 44),
     ("SLADS", 45), ("FLTS", 47), ("PMS", 51)],
)
def test_ecap_bit_positions(name: str, bit: int) -> None:
    assert vtd.ECAP.decode(1 << bit)[name] == 1


def test_reserved_bits_reported() -> None:
    # cap bit 38 and bits 13-15 are reserved; ecap bit 5 (VT-d 1.x CH) is not a Linux field.
    d = vtd.derive((1 << 38) | (1 << 13), 1 << 5)
    assert d["reserved_cap_bits"] == [13, 38]
    assert d["reserved_ecap_bits"] == [5]


# domain_iova_bits: the aperture N (0..2^N-1) VFIO sees.  Hand-worked: see expected.toml for the
# register working of each value.
@pytest.mark.parametrize(
    ("cap", "ecap", "sm", "bits"),
    [
        (0xD2008C40660462, 0xF050DA, False, 39),  # client: SAGAW 48 clamped to MGAW 39
        (0xD2008C40660462, 0xF050DA, True, 39),  # SMTS=0: scalable mode cannot be on
        (0x8D2078C106F0466, 0xF020DF, False, 48),  # Xeon SP, 4-level
        (0x01D2008C222F0606, 0x880000F00F4A, True, 47),  # QEMU x-flts: first stage, sign bit dropped
        (0x01D2008C222F0606, 0x880000F00F4A, False, 48),
        (0x19ED008C40780C66, 0x3EE9E86F050DF, False, 57),  # SPR legacy: 5-level second stage
        (0x19ED008C40780C66, 0x3EE9E86F050DF, True, 56),  # SPR scalable: 5-level first stage
        (0xE9DE008CEE690462, 0x1ACA9A00F0EFDE, True, 41),  # Arrow Lake: MGAW 42 then sign bit
        (0x00D2008C222F0006, 0xF00F4A, False, None),  # QEMU dma-translation=off: SAGAW 0
    ],
)
def test_domain_iova_bits(cap: int, ecap: int, sm: bool, bits: int | None) -> None:
    assert vtd.domain_iova_bits(cap, ecap, scalable_mode=sm) == bits


def test_first_stage_only_unit_without_sagaw_is_usable_in_scalable_mode() -> None:
    # SAGAW 0, SMTS+FLTS, no SLTS: alloc_iommu keeps it (!SAGAW && SMTS && !SLTS); first stage 48 -> 47.
    cap = 0x002F0000  # MGAW 47, nothing else
    ecap = (1 << 43) | (1 << 47)
    assert vtd.domain_iova_bits(cap, ecap, scalable_mode=True) == 47
    assert vtd.domain_iova_bits(cap, ecap, scalable_mode=False) is None


def test_fl5lp_gives_57_bit_first_stage() -> None:
    # SAGAW 48+57, MGAW 56 (57 bits), FLTS only with FL5LP: fl = 48|57 -> 57, first stage -> 56.
    cap = (1 << 60) | (0b1100 << 8) | (56 << 16)
    ecap = (1 << 43) | (1 << 47)
    assert vtd.domain_iova_bits(cap, ecap, scalable_mode=True) == 56
    # Without FL5LP the first stage is 4-level: 48 -> 47.
    assert vtd.domain_iova_bits(cap & ~(1 << 60), ecap, scalable_mode=True) == 47


@given(cap=U64, ecap=U64, sm=st.booleans())
def test_domain_width_never_exceeds_mgaw_or_57(cap: int, ecap: int, sm: bool) -> None:
    bits = vtd.domain_iova_bits(cap, ecap, scalable_mode=sm)
    if bits is not None:
        assert 0 <= bits <= min(57, ((cap >> 16) & 0x3F) + 1)


def test_second_stage_superpages_follow_linux_fls() -> None:
    sllps = 34
    assert vtd.second_stage_pgsizes(0) == 0x1000
    assert vtd.second_stage_pgsizes(1 << sllps) == 0x1000 | 0x200000
    assert vtd.second_stage_pgsizes(3 << sllps) == 0x1000 | 0x200000 | 0x40000000
    assert vtd.second_stage_pgsizes(4 << sllps) == 0x1000  # fls 3: Linux knows no 3rd level


def test_sm_gated_features_need_smts() -> None:
    ecap = (1 << 40) | (1 << 26) | (1 << 45) | (1 << 48) | (19 << 35)  # PASID NEST SLADS SMPWCS PSS 19
    off = vtd.derive(0, ecap)
    on = vtd.derive(0, ecap | (1 << 43))
    flags = (off["pasid"], off["nesting"], off["dirty_tracking"], off["max_pasids"])
    assert flags == (False, False, False, None)
    assert (on["pasid"], on["nesting"], on["dirty_tracking"]) == (True, True, True)
    assert on["pasid_bits"] == 20 and on["max_pasids"] == 1 << 20


@pytest.mark.parametrize("text", ["1", "1:", "a:0", "16:0", "1:-1", ""])
def test_bad_version(text: str) -> None:
    with pytest.raises(InputError):
        vtd.parse_version(text)


def test_version_decodes_major_minor() -> None:
    assert vtd.parse_version("6:0") == 0x60
    unit = vtd.decode(0, 0, 0x71)
    assert unit.derived["version"] == "7:1"
    assert unit.to_json()["ver"] == {"value": "0x00000071", "fields": {"MIN": 1, "MAX": 7}}


def test_json_key_order_is_the_contract() -> None:
    assert list(vtd.decode(0xD2008C40660462, 0xF050DA).to_json()) == ["vendor", "cap", "ecap", "derived"]
