"""arm-smmuv3 with ``accel=on`` (QEMU 11.0): a vSMMU nested on the host SMMUv3 through iommufd.

Guest-visible state is the ID registers IDR0..IDR5. ``smmuv3_init_id_regs``
(hw/arm/smmuv3.c) composes them from constants, then
``smmuv3_accel_idr_override`` (hw/arm/smmuv3-accel.c at 13b941aa) applies the
accel properties; ``auto`` values of ats, ril and ssidsize are resolved from
the first host device checked (``smmuv3_accel_auto_finalise``) and stay fixed
after that. ``set_iommu_device`` compares host and vSMMU fields in QEMU's
order (``smmuv3_accel_check_hw_compatible``) with QEMU's texts (brief §4.3).

There is no aarch64 QEMU 11.0 binary here: everything is modelled from the
sources named above (the defaults from ``smmuv3_properties``: ril=on, ats=off,
oas=44, ssidsize=0; the brief's "accel defaults ril off, ats on, oas 48" is
not what that table says). ``accel=off`` (the emulated SMMUv3) has no
``set_iommu_device`` and accepts every host device (brief §5.3 item 2).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

from viommu.dma import GuestView
from viommu.errors import InputError, Refusal
from viommu.host.caps import IommuType
from viommu.host.device import HostIOMMUDevice
from viommu.models.base import VIOMMU, DeviceSpec, PciAddr, QemuVersion
from viommu.models.qdev import (
    DeviceConfigError,
    OnOffAuto,
    PropKind,
    PropSpec,
    PropValue,
    check_id,
    set_properties,
)
from viommu.reasons import register
from viommu.record import record
from viommu.regs.smmuv3 import IDR0, IDR1, IDR3, IDR5, OAS_BITS, pgsize_bitmap

MODEL = "arm-smmuv3"
ACCEL_VERSION = QemuVersion(11, 0)

#: smmuv3-internal.h: SMMU_IDR1_SIDSIZE, SMMU_CMDQS, SMMU_EVENTQS; IDR5.OAS 4 = 44 bits, 5 = 48.
SIDSIZE, CMDQS, EVENTQS = 16, 19, 19
OAS_44, OAS_48 = 4, 5
#: smmuv3_oas_bits() in smmuv3-accel.c also knows the reserved encoding 7 = 56 bits.
_OAS_BITS = {**OAS_BITS, 7: 56}
_SSIDSIZES = ("auto", *(str(n) for n in range(21)))

# --- reason codes --------------------------------------------------------------------------

SMMU_NEEDS_IOMMUFD = register(
    "smmu-accel-needs-iommufd",
    "arm-smmuv3,accel=on nests the guest's stage-1 tables on the host SMMUv3, which only iommufd "
    "can set up: a vfio-pci device on a legacy VFIO container is refused (by "
    "supports_address_space, before set_iommu_device).",
)
SMMU_DUPLICATE = register(
    "smmu-duplicate-hiod",
    "The PCI address already has a different host IOMMU device attached to the accelerated SMMUv3 "
    "(QEMU: \"Device already has an associated hiodi 0x...\").",
)
SMMU_WRONG_TYPE = register(
    "smmu-host-not-smmuv3",
    "The host IOMMU behind the device is not an ARM SMMUv3 (IOMMU_GET_HW_INFO returned another data "
    "type), so the accelerated vSMMU cannot be nested on it.",
)
_FIELD_CODES = {
    "ST_LEVEL": register("smmu-stlevel-mismatch",
                         "Host and vSMMU stream table formats (IDR0.ST_LEVEL) differ."),
    "TTENDIAN": register("smmu-ttendian-unsupported",
                         "The host SMMUv3 cannot walk little-endian translation tables (IDR0.TTENDIAN)."),
    "TTF": register("smmu-ttf-unsupported",
                    "The host SMMUv3 lacks the AArch64 translation table format (IDR0.TTF)."),
    "SIDSIZE": register("smmu-sidsize-incompatible",
                        "The host SMMUv3 has fewer stream-id bits (IDR1.SIDSIZE) than the vSMMU's 16."),
    "SSIDSIZE": register("smmu-ssidsize-incompatible",
                         "The vSMMU offers more substream-id (PASID) bits (ssidsize=) than the host "
                         "SMMUv3 (IDR1.SSIDSIZE); lower ssidsize or use auto."),
    "RIL": register("smmu-ril-unsupported",
                    "The vSMMU advertises range invalidation (ril=on) but the host SMMUv3 lacks it "
                    "(IDR3.RIL); set ril=off."),
    "OAS": register("smmu-oas-exceeds-host",
                    "The vSMMU's output address size (oas=) is wider than the host SMMUv3's IPA size "
                    "(IDR5.OAS); set oas=44."),
    "ATS": register("smmu-ats-unsupported",
                    "The vSMMU advertises ATS (ats=on) but the host SMMUv3 lacks it (IDR0.ATS)."),
    "GRAN": register("smmu-granule-mismatch",
                     "Host and vSMMU translation granules (IDR5.GRAN4K/16K/64K) must match exactly: the "
                     "guest's stage-1 tables are walked by the host."),
}
SMMU_AUTO_UNRESOLVED = register(
    "smmu-auto-unresolved",
    "arm-smmuv3,accel=on with ats, ril or ssidsize set to auto takes their values from the first "
    "cold-plugged VFIO device; with none, QEMU exits at machine-init-done.",
)
SMMU_PROPERTY_NEEDS_ACCEL = register(
    "smmu-property-needs-accel",
    "ril=off, ats=on, oas=48 and a non-zero ssidsize only exist with accel=on.",
)


def _schema() -> dict[str, PropSpec]:
    ooa = PropKind.ON_OFF_AUTO
    specs = [
        PropSpec("accel", PropKind.BOOL, False),
        PropSpec("ril", ooa, OnOffAuto.ON),
        PropSpec("ats", ooa, OnOffAuto.OFF),
        PropSpec("oas", PropKind.ENUM, "44", ("44", "48")),
        PropSpec("ssidsize", PropKind.ENUM, "0", _SSIDSIZES),
        PropSpec("stage", PropKind.STR, "1"),
        PropSpec("msi-gpa", PropKind.STR, "0"),
        PropSpec("primary-bus", PropKind.STR, ""),
    ]
    return {s.name: s for s in specs}


@record(frozen=True)
class SmmuConfig:
    accel: bool
    ril: OnOffAuto
    ats: OnOffAuto
    oas48: bool
    #: None for ``auto``.
    ssidsize: int | None
    stage: str

    @property
    def auto_mode(self) -> bool:
        return OnOffAuto.AUTO in (self.ril, self.ats) or self.ssidsize is None


def _validate(cfg: SmmuConfig) -> None:
    """``smmu_validate_property`` (texts from the accel series; final-tree wording not re-read)."""
    if cfg.accel:
        return
    if cfg.ril is not OnOffAuto.ON:
        raise DeviceConfigError(SMMU_PROPERTY_NEEDS_ACCEL, "ril can only be disabled if accel=on")
    if cfg.ats is not OnOffAuto.OFF:
        raise DeviceConfigError(SMMU_PROPERTY_NEEDS_ACCEL, "ats can only be enabled if accel=on")
    if cfg.oas48:
        raise DeviceConfigError(SMMU_PROPERTY_NEEDS_ACCEL, "OAS can only be set to 44 bits if accel=off")
    if cfg.ssidsize != 0:
        raise DeviceConfigError(SMMU_PROPERTY_NEEDS_ACCEL, "ssidsize can only be set if accel=on")


def init_id_regs(cfg: SmmuConfig) -> dict[str, dict[str, int]]:
    """Named IDR fields: ``smmuv3_init_id_regs`` then ``smmuv3_accel_idr_override``."""
    s1 = cfg.stage != "2"
    s2 = cfg.stage in ("2", "nested")
    idr0 = {"S1P": int(s1), "S2P": int(s2), "TTF": 2, "COHACC": 1, "ASID16": 1, "VMID16": 1,
            "TTENDIAN": 2, "STALL_MODEL": 1, "TERM_MODEL": 1, "ST_LEVEL": 1}
    idr1 = {"SIDSIZE": SIDSIZE, "EVENTQS": EVENTQS, "CMDQS": CMDQS, "SSIDSIZE": 0}
    idr3 = {"HAD": 1, "RIL": 1, "BBML": 2, "XNX": int(s2)}
    idr5 = {"OAS": OAS_44, "GRAN4K": 1, "GRAN16K": 1, "GRAN64K": 1}
    if cfg.accel:
        if cfg.ril is OnOffAuto.OFF:
            idr3["RIL"] = 0
        if cfg.ats is OnOffAuto.ON:
            idr0["ATS"] = 1
        if cfg.oas48:
            idr5["OAS"] = OAS_48
        if cfg.ssidsize:
            idr1["SSIDSIZE"] = cfg.ssidsize
    return {"idr0": idr0, "idr1": idr1, "idr3": idr3, "idr5": idr5}


_TABLES = {"idr0": IDR0, "idr1": IDR1, "idr3": IDR3, "idr5": IDR5}


class SMMUv3(VIOMMU):
    """One ``-device arm-smmuv3`` on an arm virt machine."""

    model = MODEL

    def __init__(
        self,
        spec: DeviceSpec,
        version: QemuVersion,
        *,
        machine: str | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(spec, version, where=where)
        where = self.where
        if machine not in (None, "virt") and not (machine or "").startswith("virt-"):
            raise InputError(f"arm-smmuv3 is modelled on the arm virt machine, not {machine!r}",
                             where="-M")
        check_id(spec.props, where=where)
        values = set_properties(MODEL, _schema(), {n: s.default for n, s in _schema().items()},
                                spec.props, where=where)
        cfg = _config(values)
        if cfg.accel and (version.major, version.minor) != (11, 0):
            raise InputError(
                f"arm-smmuv3,accel=on is modelled for QEMU 11.0 only (it first appeared there), "
                f"not {version}", where="--qemu-version",
            )
        try:
            _validate(cfg)
        except DeviceConfigError as exc:
            raise DeviceConfigError(exc.code, exc.message, where=where) from None
        self.config = cfg
        self.fields = init_id_regs(cfg)
        self.auto_finalised = False
        self._mine_cache: Mapping[str, Mapping[str, int]] | None = None
        self._devices: dict[PciAddr, HostIOMMUDevice] = {}

    # -- registers --

    def idr(self, name: str) -> int:
        return _TABLES[name].encode(self.fields[name])

    def _host_fields(self, hiod: HostIOMMUDevice) -> Mapping[str, Mapping[str, int]]:
        regs = hiod.caps.registers
        return _decoded(tuple(regs.get(k, 0) for k in _TABLES))

    def _mine(self) -> Mapping[str, Mapping[str, int]]:
        """The vSMMU's fields as the guest reads them (re-encoded, as QEMU compares registers);
        computed again only after ``auto`` values were resolved."""
        if self._mine_cache is None:
            self._mine_cache = _decoded(tuple(self.idr(k) for k in _TABLES))
        return self._mine_cache

    # -- host devices --

    def set_iommu_device(
        self, addr: PciAddr, hiod: HostIOMMUDevice, *, hotplug: bool, alias: PciAddr | None = None
    ) -> None:
        if not self.config.accel:
            return  # the emulated SMMUv3 has no set_iommu_device: every device is accepted
        if not hiod.kind.is_iommufd:
            raise Refusal(
                SMMU_NEEDS_IOMMUFD,
                "vfio-pci endpoint devices without an iommufd backend not allowed when using "
                "arm-smmuv3,accel=on",
            )
        known = self._devices.get(addr)
        if known is not None:
            if known is hiod:
                return
            raise Refusal(SMMU_DUPLICATE, f"Device already has an associated hiodi 0x{_devid(hiod):x}")
        if hiod.caps.iommu_type is not IommuType.ARM_SMMUV3:
            raise Refusal(
                SMMU_WRONG_TYPE,
                f"Wrong data type ({hiod.caps.iommu_type.code}) for Host SMMUv3 device info",
            )
        host = self._host_fields(hiod)
        self._auto_finalise(host)
        self._check(host)
        self._devices[addr] = hiod

    def _auto_finalise(self, host: Mapping[str, Mapping[str, int]]) -> None:
        """Resolve ``auto`` from the first device QEMU checks, whether or not it fits."""
        if not self.config.auto_mode or self.auto_finalised:
            return
        if self.config.ats is OnOffAuto.AUTO:
            self.fields["idr0"]["ATS"] = host["idr0"]["ATS"]
        if self.config.ril is OnOffAuto.AUTO:
            self.fields["idr3"]["RIL"] = host["idr3"]["RIL"]
        if self.config.ssidsize is None:
            self.fields["idr1"]["SSIDSIZE"] = host["idr1"]["SSIDSIZE"]
        self.auto_finalised = True
        self._mine_cache = None

    def _check(self, host: Mapping[str, Mapping[str, int]]) -> None:
        """``smmuv3_accel_check_hw_compatible``, field by field in QEMU's order."""
        mine = self._mine()

        def h(reg: str, name: str) -> int:
            return host[reg][name]

        def q(reg: str, name: str) -> int:
            return mine[reg][name]

        if h("idr0", "ST_LEVEL") != q("idr0", "ST_LEVEL"):
            raise Refusal(_FIELD_CODES["ST_LEVEL"],
                          "Host SMMUv3 Stream Table format mismatch "
                          f"(host STLEVEL={h('idr0', 'ST_LEVEL')}, QEMU STLEVEL={q('idr0', 'ST_LEVEL')})")
        if h("idr0", "TTENDIAN") > q("idr0", "TTENDIAN"):
            raise Refusal(_FIELD_CODES["TTENDIAN"],
                          "Host SMMUv3 doesn't support Little-endian translation table")
        if h("idr0", "TTF") < q("idr0", "TTF"):
            raise Refusal(_FIELD_CODES["TTF"], "Host SMMUv3 doesn't support AArch64 translation table format")
        for name in ("SIDSIZE", "SSIDSIZE"):
            if h("idr1", name) < q("idr1", name):
                raise Refusal(_FIELD_CODES[name],
                              f"Host SMMUv3 {name} not compatible (host={h('idr1', name)}, "
                              f"QEMU={q('idr1', name)})")
        if h("idr3", "RIL") < q("idr3", "RIL"):
            raise Refusal(_FIELD_CODES["RIL"], "Host SMMUv3 doesn't support Range Invalidation")
        if h("idr5", "OAS") < q("idr5", "OAS"):
            raise Refusal(_FIELD_CODES["OAS"],
                          f"Host SMMUv3 supports only {_OAS_BITS[h('idr5', 'OAS')]}-bit IPA, but the "
                          f"vSMMU OAS implies {_OAS_BITS[q('idr5', 'OAS')]}-bit IPA")
        if h("idr0", "ATS") < q("idr0", "ATS"):
            raise Refusal(_FIELD_CODES["ATS"], "Host SMMUv3 doesn't support Address Translation Services")
        for field, label in (("GRAN4K", "4K"), ("GRAN16K", "16K"), ("GRAN64K", "64K")):
            if h("idr5", field) != q("idr5", field):
                raise Refusal(
                    _FIELD_CODES["GRAN"], f"Host SMMUv3 doesn't support {label} translation granule"
                )

    def unset_iommu_device(self, addr: PciAddr) -> None:
        # The auto-resolved values stay: QEMU re-uses those of the first cold plug.
        self._devices.pop(addr, None)

    @property
    def devices(self) -> Mapping[PciAddr, HostIOMMUDevice]:
        return dict(self._devices)

    # -- lifecycle --

    def machine_done(self, *, vfio_devices: Collection[PciAddr] = ()) -> None:
        if self.config.accel and self.config.auto_mode and not self.auto_finalised:
            raise Refusal(
                SMMU_AUTO_UNRESOLVED,
                "arm-smmuv3 accel=on with 'auto' properties requires at least one cold-plugged VFIO device",
            )

    def reset(self) -> None:
        # smmuv3_reset leaves the ID registers (set once at realize, plus auto) alone.
        pass

    def guest_view(self, addr: PciAddr) -> GuestView:
        """Stage-1 input: 48-bit VA (IDR5.VAX = 0); page sizes from the granules."""
        return GuestView(48, (), pgsize_bitmap(self.idr("idr5")))

    def narrowed(self, hiod: HostIOMMUDevice) -> dict[str, str]:
        """ril/ats off, oas 44 and ssidsize down to the host's where the host lacks them."""
        if not self.config.accel or hiod.caps.iommu_type is not IommuType.ARM_SMMUV3:
            return {}
        host = self._host_fields(hiod)
        mine = self._mine()
        out: dict[str, str] = {}
        if mine["idr3"]["RIL"] and not host["idr3"]["RIL"]:
            out["ril"] = "off"
        if mine["idr0"]["ATS"] and not host["idr0"]["ATS"]:
            out["ats"] = "off"
        if mine["idr5"]["OAS"] > host["idr5"]["OAS"] >= OAS_44:
            out["oas"] = "44"
        if mine["idr1"]["SSIDSIZE"] > host["idr1"]["SSIDSIZE"]:
            out["ssidsize"] = str(host["idr1"]["SSIDSIZE"])
        return out

    def widest(self) -> dict[str, str]:
        """With accel, plan starts from everything on and narrows to the hosts."""
        if not self.config.accel:
            return {}
        return {"ril": "on", "ats": "on", "oas": "48"}

    def explicit(self) -> dict[str, str]:
        """The resolved ats, ril, ssidsize and oas (``auto`` depends on the first host)."""
        if not self.config.accel:
            return {}
        idr0 = _TABLES["idr0"].decode(self.idr("idr0")).fields
        idr1 = _TABLES["idr1"].decode(self.idr("idr1")).fields
        idr3 = _TABLES["idr3"].decode(self.idr("idr3")).fields
        idr5 = _TABLES["idr5"].decode(self.idr("idr5")).fields
        return {
            "ats": "on" if idr0["ATS"] else "off",
            "ril": "on" if idr3["RIL"] else "off",
            "ssidsize": str(idr1["SSIDSIZE"]),
            "oas": "48" if idr5["OAS"] >= OAS_48 else "44",
        }

    def compare(self, hiod: HostIOMMUDevice) -> list[dict[str, Any]]:
        if not self.config.accel:
            return []
        if hiod.caps.iommu_type is not IommuType.ARM_SMMUV3 or not hiod.kind.is_iommufd:
            return [{"field": "host", "viommu": "iommufd ARM SMMUv3",
                     "host": f"{hiod.kind.value} {hiod.caps.iommu_type.value}", "ok": False}]
        host = self._host_fields(hiod)
        mine = self._mine()
        rows: list[dict[str, Any]] = []
        for reg, name, rule in (
            ("idr0", "ST_LEVEL", "eq"), ("idr0", "TTENDIAN", "le"), ("idr0", "TTF", "ge"),
            ("idr1", "SIDSIZE", "ge"), ("idr1", "SSIDSIZE", "ge"), ("idr3", "RIL", "ge"),
            ("idr5", "OAS", "ge"), ("idr0", "ATS", "ge"), ("idr5", "GRAN4K", "eq"),
            ("idr5", "GRAN16K", "eq"), ("idr5", "GRAN64K", "eq"),
        ):
            h, q = host[reg][name], mine[reg][name]
            ok = h == q if rule == "eq" else (h <= q if rule == "le" else h >= q)
            rows.append({"field": f"{reg.upper()}.{name}", "viommu": q, "host": h, "ok": ok})
        return rows

    def guest_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": MODEL}
        for name in ("idr0", "idr1", "idr2", "idr3", "idr4", "idr5"):
            # IDR2 (BA_VATOS) and IDR4 (implementation defined) stay 0 in QEMU.
            value = self.idr(name) if name in _TABLES else 0
            state[name] = f"0x{value:08x}"
        state["aidr"] = "0x00000001"
        return state


@functools.lru_cache(maxsize=512)
def _decoded(values: tuple[int, ...]) -> Mapping[str, Mapping[str, int]]:
    """Decoded IDR fields for register values in ``_TABLES`` order (cached: decoding is the
    costly part of a check, and the same host registers come back for every device)."""
    return MappingProxyType(
        {k: MappingProxyType(dict(_TABLES[k].decode(v).fields)) for k, v in zip(_TABLES, values, strict=True)}
    )


def _devid(hiod: HostIOMMUDevice) -> int:
    """The iommufd device id is not part of the host caps record: QEMU prints it; we print 0."""
    return 0


def _config(values: Mapping[str, PropValue]) -> SmmuConfig:
    ril, ats = values["ril"], values["ats"]
    assert isinstance(ril, OnOffAuto) and isinstance(ats, OnOffAuto)
    ssid = str(values["ssidsize"])
    return SmmuConfig(
        accel=bool(values["accel"]),
        ril=ril,
        ats=ats,
        oas48=values["oas"] == "48",
        ssidsize=None if ssid == "auto" else int(ssid),
        stage=str(values["stage"]),
    )
