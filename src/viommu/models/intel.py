"""intel-iommu as QEMU builds it, per version profile.

Guest-visible state is CAP_REG and ECAP_REG, a pure function of the device
properties, the machine type's compat properties and (for interrupt
remapping) the irqchip mode; QEMU never lets a host device change it.
``set_iommu_device`` runs QEMU's checks in QEMU's order with QEMU's texts.

Version profiles (qemu-framework brief §3-4; 10.0 is verified bit for bit and
text for text against the real binary by ``tests/test_intel_differential.py``):

=========  =================================================================
9.1, 9.2   aw-bits default 39; no x-flts/fs1gp/stale-tm; "Supported values
           for aw-bits are: 39, 48"; caching-mode enforced by machine hooks
10.0       x-flts, fs1gp, stale-tm; aw-bits default 48 (pc-q35-9.1 and
           older machine types keep 39); aw-bits texts name the mode; a
           host device with x-flts=on is always refused
10.1       ECAP.PSS (7) with x-pasid-mode
10.2       CAP.ESRTPS always; caching-mode checked in set_iommu_device
11.0       properties renamed (scalable-mode, flts), pt/dma-drain/x-buggy-eim
           removed (drain always on), svm added, x-flts accepted for iommufd
           VT-d hosts (vtd_check_hiod_accel); 11.0.0-11.0.2 put the PT bit
           into CAP bit 6 and drop ECAP.PT, fixed in 11.0.3
=========  =================================================================

Under TCG (the default here) there is no in-kernel irqchip: intremap=auto is
on and eim=auto is off; eim=on is accepted (QEMU checks the KVM x2APIC API
only with a split irqchip).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from functools import cache

from viommu.dma import X86_INTERRUPT_WINDOW, GuestView
from viommu.errors import InputError, Refusal
from viommu.host.caps import IommuType
from viommu.host.device import CAP_AW_BITS, CapUnsupported, HostIOMMUDevice
from viommu.models.base import VIOMMU, DeviceSpec, PciAddr, QemuVersion
from viommu.models.qdev import (
    DeviceConfigError,
    MachineType,
    OnOffAuto,
    PropKind,
    PropSpec,
    PropValue,
    check_id,
    check_sysbus_placement,
    prop_text,
    resolve_machine,
    set_properties,
)
from viommu.reasons import register
from viommu.record import record
from viommu.regs.vtd import CAP, ECAP

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

MODEL = "intel-iommu"

#: Version register: major 1, minor 0.
VER_VALUE = 0x10

# --- reason codes ----------------------------------------------------------------------------

CACHING_MODE_REQUIRED = register(
    "caching-mode-required",
    "intel-iommu without caching-mode=on cannot shadow guest page tables for an assigned device: "
    "the guest would not tell QEMU about new mappings, so VFIO could not program the host IOMMU. "
    "QEMU 10.2 and later refuse the device in set_iommu_device; earlier releases exit at "
    "machine-init-done for cold-plugged vfio-pci devices and refuse hotplug in pc_hotplug_allowed.",
)
DUPLICATE_HOST_IOMMU_DEVICE = register(
    "duplicate-host-iommu-device",
    "A host IOMMU device is already registered at this guest PCI address (bus, devfn); "
    "QEMU says \"Host IOMMU device already exist\".",
)
GET_CAP_NOT_IMPLEMENTED = register(
    "get-cap-not-implemented",
    "The host IOMMU device's backend cannot answer capability queries (.get_cap() not "
    "implemented), so intel-iommu cannot check the host address width.",
)
GET_CAP_FAILED = register(
    "get-cap-failed",
    "Asking the host IOMMU device for its address width failed; QEMU passes the backend's "
    "error through.",
)
AW_BITS_EXCEEDS_HOST = register(
    "aw-bits-exceeds-host",
    "The vIOMMU's aw-bits (guest IOVA width) is wider than the host IOMMU's usable IOVA space "
    "(the top bit of the last usable range, plus one): the guest could map IOVAs the host cannot, "
    "and DMA to them would fail. Lower aw-bits (39 fits every VT-d host) or use a wider host.",
)
FLTS_INCOMPATIBLE = register(
    "flts-incompatible",
    "QEMU 10.0-10.2 offer first-stage translation (x-flts=on) to emulated devices only: every "
    "host device is refused with \"host device is uncompatible with stage-1 translation\". "
    "Use x-flts=off (second-stage) for passthrough, or QEMU 11.0 with iommufd.",
)
FLTS_NEEDS_IOMMUFD = register(
    "flts-needs-iommufd",
    "With flts=on (QEMU 11.0) the guest's first-stage tables are nested on the host, which needs "
    "the iommufd backend; a legacy VFIO container cannot do it.",
)
IOMMU_TYPE_MISMATCH = register(
    "iommu-type-mismatch",
    "With flts=on (QEMU 11.0) the host IOMMU must be Intel VT-d: the guest's VT-d first-stage "
    "tables are handed to the host hardware as they are.",
)
FS1GP_UNSUPPORTED = register(
    "fs1gp-unsupported",
    "The vIOMMU offers first-stage 1 GiB pages (fs1gp=on, CAP.FL1GP) but the host VT-d unit "
    "lacks them, so nested translation would fail on 1 GiB guest mappings. Set fs1gp=off.",
)
FLTS_BEHIND_BRIDGE = register(
    "flts-behind-bridge",
    "With flts=on (QEMU 11.0) a host device behind a PCIe-to-PCI bridge is refused: its DMA "
    "arrives with the bridge's requester ID, which the per-device nested setup cannot express.",
)
INTREMAP_KERNEL_IRQCHIP = register(
    "intremap-kernel-irqchip",
    "Interrupt remapping needs the IOAPIC in QEMU: use kernel-irqchip=split or off with intremap=on.",
)
PASID_DEVICE_IOTLB = register(
    "pasid-device-iotlb",
    "QEMU up to 10.x does not implement PASID-based device-IOTLB invalidation, so x-pasid-mode=on "
    "and device-iotlb=on cannot be combined.",
)
EIM_NEEDS_INTREMAP = register(
    "eim-needs-intremap",
    "Extended interrupt mode (x2APIC destinations) is part of interrupt remapping: eim=on needs "
    "intremap=on.",
)
FLTS_NEEDS_SCALABLE = register(
    "flts-needs-scalable",
    "First-stage translation exists only in scalable mode: set x-scalable-mode=on (scalable-mode "
    "from QEMU 11.0) together with x-flts=on.",
)
AW_BITS_UNSUPPORTED = register(
    "aw-bits-unsupported",
    "intel-iommu emulates 3- and 4-level page tables only: aw-bits must be 39 or 48, and exactly 48 "
    "with first-stage translation.",
)
DMA_DRAIN_REQUIRED = register(
    "dma-drain-required",
    "Scalable mode needs DMA draining advertised (dma-drain=on) up to QEMU 10.x.",
)
PASID_NEEDS_SCALABLE = register(
    "pasid-needs-scalable",
    "PASIDs exist only in scalable mode: x-pasid-mode=on needs x-scalable-mode=on.",
)
SVM_INCOMPLETE = register(
    "svm-incomplete",
    "Shared virtual memory (svm=on, QEMU 11.0) needs device-iotlb, flts, dma-translation and "
    "x-pasid-mode all on.",
)

_CM_TEXT_SET = "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
_CM_TEXT_MACHINE_DONE = (
    "We need to set caching-mode=on for intel-iommu to enable device assignment with IOMMU protection."
)

# --- version profiles --------------------------------------------------------------------------


class Irqchip(enum.Enum):
    """``-accel kvm,kernel-irqchip=``; USERSPACE is TCG (or KVM with kernel-irqchip=off)."""

    USERSPACE = "off"
    SPLIT = "split"
    KERNEL = "on"

    @property
    def in_kernel(self) -> bool:
        return self is not Irqchip.USERSPACE


PROFILES = ("9.1", "9.2", "10.0", "10.1", "10.2", "11.0")


@record(frozen=True)
class Profile:
    """What differs between the QEMU releases intel-iommu is modelled for."""

    version: QemuVersion

    @classmethod
    def of(cls, version: QemuVersion) -> Profile:
        if f"{version.major}.{version.minor}" not in PROFILES:
            raise InputError(
                f"no intel-iommu profile for QEMU {version}; profiles: {', '.join(PROFILES)}",
                where="--qemu-version",
            )
        return cls(version)

    @property
    def flts(self) -> bool:
        """x-flts, fs1gp and stale-tm exist (10.0)."""
        return self.version.at_least(10, 0)

    @property
    def renamed(self) -> bool:
        """11.0: scalable-mode/flts names, svm; pt, dma-drain and x-buggy-eim gone."""
        return self.version.at_least(11, 0)

    @property
    def scalable_prop(self) -> str:
        return "scalable-mode" if self.renamed else "x-scalable-mode"

    @property
    def flts_prop(self) -> str:
        return "flts" if self.renamed else "x-flts"

    @property
    def default_aw_bits(self) -> int:
        return 48 if self.version.at_least(10, 0) else 39

    @property
    def pss(self) -> bool:
        return self.version.at_least(10, 1)

    @property
    def esrtps(self) -> bool:
        return self.version.at_least(10, 2)

    @property
    def caching_mode_in_set(self) -> bool:
        return self.version.at_least(10, 2)

    @property
    def pt_bug(self) -> bool:
        """11.0.0-11.0.2: VTD_ECAP_PT ended up in the CAP initializer (CAP bit 6, PHMR)."""
        return self.renamed and not self.version.at_least(11, 0, 3)

    def schema(self) -> Mapping[str, PropSpec]:
        """The properties, by name (computed once per release: callers must not change it)."""
        return _schema(self)

    def defaults(self, machine: MachineType) -> Mapping[str, PropValue]:
        """Property defaults after the machine type's ``pc_compat_*`` entries (once per release
        and machine type: callers must not change them).

        Read from the 10.0 binary (``-M pc-q35-X.Y -device intel-iommu``):
        <=9.1 aw-bits=39 (and stale-tm=on), <=3.1 dma-drain=off, <=2.9 pt=off,
        <=2.7 x-buggy-eim=on. A compat entry only applies where the property exists.
        """
        return _defaults(self, machine)


@cache
def _schema(profile: Profile) -> Mapping[str, PropSpec]:
    b, ooa, u8, u32 = PropKind.BOOL, PropKind.ON_OFF_AUTO, PropKind.UINT8, PropKind.UINT32
    specs = [
        PropSpec("version", u32, 0),
        PropSpec("eim", ooa, OnOffAuto.AUTO),
        PropSpec("aw-bits", u8, profile.default_aw_bits),
        PropSpec("caching-mode", b, False),
        PropSpec(profile.scalable_prop, b, False),
        PropSpec("snoop-control", b, False),
        PropSpec("x-pasid-mode", b, False),
        PropSpec("dma-translation", b, True),
        # X86IOMMUState (the parent type) properties:
        PropSpec("intremap", ooa, OnOffAuto.AUTO),
        PropSpec("device-iotlb", b, False),
    ]
    if not profile.renamed:
        specs += [PropSpec("x-buggy-eim", b, False), PropSpec("dma-drain", b, True)]
        specs.append(PropSpec("pt", b, True))
    if profile.flts:
        specs += [PropSpec(profile.flts_prop, b, False), PropSpec("fs1gp", b, True)]
        specs.append(PropSpec("stale-tm", b, False))
    if profile.renamed:
        specs.append(PropSpec("svm", b, False))
    return {s.name: s for s in sorted(specs, key=lambda s: s.name)}


@cache
def _defaults(profile: Profile, machine: MachineType) -> Mapping[str, PropValue]:
    schema = profile.schema()
    values: dict[str, PropValue] = {name: spec.default for name, spec in schema.items()}
    compat: list[tuple[tuple[int, int], str, PropValue]] = [
        ((9, 1), "aw-bits", 39),
        ((9, 1), "stale-tm", True),
        ((3, 1), "dma-drain", False),
        ((2, 9), "pt", False),
        ((2, 7), "x-buggy-eim", True),
    ]
    for (major, minor), name, value in compat:
        if name in schema and machine.older_or_equal(major, minor):
            values[name] = value
    return values


# --- configuration (realize) ---------------------------------------------------------------


@record(frozen=True)
class IntelConfig:
    """The resolved device state that CAP/ECAP and the checks read."""

    aw_bits: int
    caching_mode: bool
    scalable: bool
    flts: bool
    fs1gp: bool
    pasid: bool
    dma_drain: bool
    dma_translation: bool
    snoop_control: bool
    device_iotlb: bool
    intremap: bool
    eim: bool
    pt: bool
    svm: bool


def _realize(profile: Profile, values: Mapping[str, PropValue], irqchip: Irqchip) -> IntelConfig:
    """x86_iommu_realize, vtd_realize and vtd_decide_config, in QEMU's order."""

    def flag(name: str, default: bool = False) -> bool:
        return bool(values.get(name, default))

    intremap_prop = values["intremap"]
    if intremap_prop is OnOffAuto.AUTO:
        intremap = irqchip is not Irqchip.KERNEL
    else:
        intremap = intremap_prop is OnOffAuto.ON
    if intremap and irqchip is Irqchip.KERNEL:
        raise DeviceConfigError(
            INTREMAP_KERNEL_IRQCHIP,
            "Interrupt Remapping cannot work with kernel-irqchip=on, please use 'split|off'.",
        )
    scalable = flag(profile.scalable_prop)
    flts = flag(profile.flts_prop)
    pasid = flag("x-pasid-mode")
    device_iotlb = flag("device-iotlb")
    aw = values["aw-bits"]
    assert isinstance(aw, int)
    aw_bits = aw
    dma_drain = flag("dma-drain", True) if not profile.renamed else True
    dma_translation = flag("dma-translation", True)
    svm = flag("svm")

    if not profile.renamed and pasid and device_iotlb:
        raise DeviceConfigError(PASID_DEVICE_IOTLB, "PASID based device IOTLB is not supported")

    eim_prop = values["eim"]
    if eim_prop is OnOffAuto.ON and not intremap:
        raise DeviceConfigError(EIM_NEEDS_INTREMAP, "eim=on cannot be selected without intremap=on")
    if eim_prop is OnOffAuto.AUTO:
        eim = (irqchip.in_kernel or flag("x-buggy-eim")) and intremap
    else:
        # eim=on with a split irqchip also needs KVM's X2APIC_API (Linux >= 4.7): assumed present.
        eim = eim_prop is OnOffAuto.ON

    if profile.flts and flts and not scalable:
        raise DeviceConfigError(
            FLTS_NEEDS_SCALABLE, f"{profile.flts_prop} is only available in scalable mode"
        )
    if not profile.flts:
        if aw_bits not in (39, 48):
            raise DeviceConfigError(AW_BITS_UNSUPPORTED, "Supported values for aw-bits are: 39, 48")
    elif not flts and aw_bits not in (39, 48):
        mode = "Scalable mode(flts=off)" if scalable else "Legacy mode"
        raise DeviceConfigError(AW_BITS_UNSUPPORTED, f"{mode}: supported values for aw-bits are: 39, 48")
    elif flts and aw_bits != 48:
        raise DeviceConfigError(
            AW_BITS_UNSUPPORTED, "Scalable mode(flts=on): supported value for aw-bits is: 48"
        )
    if scalable and not dma_drain:
        raise DeviceConfigError(DMA_DRAIN_REQUIRED, "Need to set dma_drain for scalable mode")
    if pasid and not scalable:
        raise DeviceConfigError(PASID_NEEDS_SCALABLE, "Need to set scalable mode for PASID")
    if svm:
        # 2026 tree; the order of these four is as listed in the brief (not verified on a binary).
        for ok, what in ((device_iotlb, "device IOTLB"), (flts, "flts"),
                         (dma_translation, "dma-translation"), (pasid, "PASID support")):
            if not ok:
                raise DeviceConfigError(SVM_INCOMPLETE, f"Need to set {what} for svm")

    return IntelConfig(
        aw_bits=aw_bits,
        caching_mode=flag("caching-mode"),
        scalable=scalable,
        flts=flts,
        fs1gp=flag("fs1gp", True),
        pasid=pasid,
        dma_drain=dma_drain,
        dma_translation=dma_translation,
        snoop_control=flag("snoop-control"),
        device_iotlb=device_iotlb,
        intremap=intremap,
        eim=eim,
        pt=flag("pt", True),
        svm=svm,
    )


# --- registers (vtd_cap_init) ------------------------------------------------------------------


@cache
def registers(profile: Profile, cfg: IntelConfig) -> tuple[int, int]:
    """CAP_REG and ECAP_REG as ``vtd_cap_init`` (and ``vtd_init`` for svm) compose them
    (once per release and configuration)."""
    cap: dict[str, int] = {
        "ND": 6,  # 16-bit domain ids
        "FRO": 0x220 >> 4,  # fault-recording registers at 0x220
        "NFR": 0,  # one fault-recording register
        "MAMV": 18,
        "PSI": 1,
        "SLLPS": 0b11,  # 2M and 1G second-stage pages
        "MGAW": cfg.aw_bits - 1,
    }
    if profile.esrtps:
        cap["ESRTPS"] = 1
    if profile.pt_bug:
        cap["PHMR"] = 1
    if cfg.dma_drain:
        cap["DRD"] = cap["DWD"] = 1
    if cfg.dma_translation:
        cap["SAGAW"] = (0b010 if cfg.aw_bits >= 39 else 0) | (0b100 if cfg.aw_bits >= 48 else 0)
    if cfg.caching_mode:
        cap["CM"] = 1
    if cfg.flts and cfg.fs1gp:
        cap["FL1GP"] = 1

    ecap: dict[str, int] = {"QI": 1, "IRO": 0xF0 >> 4}  # IOTLB registers at 0xf0
    if cfg.intremap:
        ecap["IR"] = 1
        ecap["MHMV"] = 15
        if cfg.eim:
            ecap["EIM"] = 1
    if cfg.device_iotlb:
        ecap["DT"] = 1
    if cfg.pt and not profile.pt_bug:
        # From 11.0 there is no pt property (cfg.pt stays on): 11.0.3 advertises PT again.
        ecap["PT"] = 1
    if cfg.flts:
        ecap["SMTS"] = ecap["FLTS"] = 1
    elif cfg.scalable:
        ecap["SMTS"] = ecap["SRS"] = ecap["SLTS"] = 1
    if cfg.snoop_control:
        ecap["SC"] = 1
    if cfg.pasid:
        ecap["PASID"] = 1
        if profile.pss:
            ecap["PSS"] = 7  # 8-bit PASIDs: the limit of MemTxAttrs::pid
    if cfg.svm:
        ecap["PRS"] = ecap["PDS"] = ecap["NWFS"] = 1
    return CAP.encode(cap), ECAP.encode(ecap)


@cache  # every trial machine of a check builds the same vIOMMU (a refusal is not cached)
def _configure(profile: Profile, machine: MachineType, props: tuple[tuple[str, str], ...],
               irqchip: Irqchip, where: str | None) -> tuple[IntelConfig, Mapping[str, str | int]]:
    """qdev's property setting, then realize: the configuration and the properties' texts."""
    values = set_properties(MODEL, profile.schema(), profile.defaults(machine), dict(props), where=where)
    try:
        config = _realize(profile, values, irqchip)
    except DeviceConfigError as exc:
        raise DeviceConfigError(exc.code, exc.message, where=where) from None
    return config, {name: prop_text(v) for name, v in values.items()}


# --- the device --------------------------------------------------------------------------------


class IntelIOMMU(VIOMMU):
    """One ``-device intel-iommu`` in a q35 machine."""

    model = MODEL

    def __init__(
        self,
        spec: DeviceSpec,
        version: QemuVersion,
        *,
        machine: str | None = None,
        irqchip: Irqchip = Irqchip.USERSPACE,
        where: str | None = None,
    ) -> None:
        super().__init__(spec, version, where=where)
        where = self.where
        self.profile = Profile.of(version)
        check_id(spec.props, where=where)
        self.machine = resolve_machine(machine, version)
        check_sysbus_placement(MODEL, self.machine, spec.props, where=where)
        self.config, properties = _configure(self.profile, self.machine, tuple(spec.props.items()),
                                             irqchip, where)
        self.irqchip = irqchip
        self.properties = dict(properties)
        self.cap, self.ecap = registers(self.profile, self.config)
        self._devices: dict[PciAddr, HostIOMMUDevice] = {}
        self.frozen = False

    # -- host devices --

    def pre_plug(self, *, hotplug: bool) -> None:
        """Before 10.2, pc_hotplug_allowed() refuses a vfio-pci device_add without caching-mode."""
        if hotplug and not self.config.caching_mode and not self.profile.caching_mode_in_set:
            raise Refusal(CACHING_MODE_REQUIRED, _CM_TEXT_SET)

    def set_iommu_device(
        self, addr: PciAddr, hiod: HostIOMMUDevice, *, hotplug: bool, alias: PciAddr | None = None
    ) -> None:
        self.pre_plug(hotplug=hotplug)
        if not self.config.caching_mode and self.profile.caching_mode_in_set:
            # 10.2 moved the check into vtd_dev_set_iommu_device.
            raise Refusal(CACHING_MODE_REQUIRED, _CM_TEXT_SET)
        if addr in self._devices:
            raise Refusal(DUPLICATE_HOST_IOMMU_DEVICE, "Host IOMMU device already exist")
        self._check_hiod(hiod, behind_bridge=alias is not None and alias != addr)
        self._devices[addr] = hiod

    def _check_hiod(self, hiod: HostIOMMUDevice, *, behind_bridge: bool) -> None:
        """``vtd_check_hiod`` (and 11.0's ``vtd_check_hiod_accel``)."""
        get_cap = getattr(hiod, "get_cap", None)
        if get_cap is None:
            raise Refusal(GET_CAP_NOT_IMPLEMENTED, ".get_cap() not implemented")
        try:
            host_aw = int(get_cap(CAP_AW_BITS))
        except CapUnsupported as exc:
            raise Refusal(GET_CAP_FAILED, str(exc)) from None
        if self.config.aw_bits > host_aw:
            raise Refusal(AW_BITS_EXCEEDS_HOST, f"aw-bits {self.config.aw_bits} > host aw-bits {host_aw}")
        if not self.config.flts:
            return
        if not self.profile.renamed:
            raise Refusal(FLTS_INCOMPATIBLE, "host device is uncompatible with stage-1 translation")
        if not hiod.kind.is_iommufd:
            raise Refusal(FLTS_NEEDS_IOMMUFD, "Need IOMMUFD backend when x-flts=on")
        if hiod.caps.iommu_type is not IommuType.INTEL_VTD:
            code = hiod.caps.iommu_type.code
            raise Refusal(IOMMU_TYPE_MISMATCH, f"Incompatible host platform IOMMU type {code}")
        if self.config.fs1gp and not CAP.decode(hiod.caps.registers.get("cap", 0))["FL1GP"]:
            raise Refusal(FS1GP_UNSUPPORTED, "First stage 1GB large page is unsupported by host IOMMU")
        # 11.0's pci_device_get_iommu_bus_devfn says "aliased" from the guest topology;
        # a host-side alias recorded in the caps counts as well.
        if behind_bridge or hiod.aliased:
            raise Refusal(
                FLTS_BEHIND_BRIDGE, "Host device downstream to a PCI bridge is unsupported when x-flts=on"
            )

    def unset_iommu_device(self, addr: PciAddr) -> None:
        self._devices.pop(addr, None)

    @property
    def devices(self) -> Mapping[PciAddr, HostIOMMUDevice]:
        return dict(self._devices)

    # -- lifecycle --

    def machine_done(self, *, vfio_devices: Collection[PciAddr] = ()) -> None:
        """Before 10.2, any vfio-pci device (registered here or listed in ``vfio_devices``,
        e.g. an mdev that never reaches set_iommu_device) without caching-mode exits QEMU."""
        if (
            not self.profile.caching_mode_in_set
            and not self.config.caching_mode
            and (self._devices or vfio_devices)
        ):
            raise Refusal(CACHING_MODE_REQUIRED, _CM_TEXT_MACHINE_DONE)
        self.frozen = True

    def reset(self) -> None:
        # vtd_reset re-runs vtd_cap_init from the same properties.
        self.cap, self.ecap = registers(self.profile, self.config)

    def guest_view(self, addr: PciAddr) -> GuestView:
        """Second-stage tables: 4K plus SLLPS (2M, 1G); first-stage: 4K, 2M and 1G with FL1GP.

        The guest sees no reserved regions (QEMU's DMAR table lists no RMRR), only
        the x86 interrupt window that no guest driver maps.
        """
        cap = CAP.decode(self.cap)
        if self.config.flts:
            sizes = (1 << 12) | (1 << 21) | ((1 << 30) if cap["FL1GP"] else 0)
        else:
            sllps = cap["SLLPS"]
            sizes = (1 << 12) | ((1 << 21) if sllps & 1 else 0) | ((1 << 30) if sllps & 2 else 0)
        if not cap["SAGAW"]:
            sizes = 0  # dma-translation=off: the guest has no DMA remapping to map through
        return GuestView(self.config.aw_bits, (X86_INTERRUPT_WINDOW,), sizes)

    def narrowed(self, hiod: HostIOMMUDevice) -> dict[str, str]:
        """aw-bits down to the widest value (48, else 39) the host's address width reaches;
        with first-stage translation (11.0), fs1gp off for a host unit without FL1GP."""
        changes: dict[str, str] = {}
        try:
            host_aw = int(hiod.get_cap(CAP_AW_BITS))
        except CapUnsupported:
            return {}
        if self.config.aw_bits > host_aw and not self.config.flts:
            # In first-stage mode 48 is the only value QEMU takes: nothing to narrow to.
            fitting = [aw for aw in (48, 39) if aw <= host_aw]
            if fitting:
                changes["aw-bits"] = str(fitting[0])
        if (
            self.config.flts
            and self.config.fs1gp
            and hiod.caps.iommu_type is IommuType.INTEL_VTD
            and not CAP.decode(hiod.caps.registers.get("cap", 0))["FL1GP"]
        ):
            changes["fs1gp"] = "off"
        return changes

    def widest(self) -> dict[str, str]:
        return {"aw-bits": "48"}

    def required(self, *, has_vfio: bool) -> dict[str, tuple[str, str]]:
        if not has_vfio:
            return {}
        out = {
            "caching-mode": (
                "on",
                "VFIO devices behind intel-iommu need caching-mode=on: without it QEMU cannot shadow "
                "the guest's mappings onto the host IOMMU (QEMU refuses the device)",
            )
        }
        if self.config.flts and not self.profile.renamed:
            out[self.profile.flts_prop] = (
                "off",
                f"QEMU {self.version} refuses every host device with {self.profile.flts_prop}=on "
                "(first-stage translation is for emulated devices only before 11.0)",
            )
        return out

    def explicit(self) -> dict[str, str]:
        """aw-bits (its default changed in 10.0), caching-mode, and the interrupt-remapping pair
        whose ``auto`` values depend on the accelerator (EIM differs between TCG and KVM)."""
        out = {
            "aw-bits": str(self.config.aw_bits),
            "caching-mode": "on" if self.config.caching_mode else "off",
            "intremap": "on" if self.config.intremap else "off",
        }
        if self.config.intremap:
            out["eim"] = "on" if self.config.eim else "off"
        return out

    def compare(self, hiod: HostIOMMUDevice) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        rows.append({"field": "caching-mode", "viommu": "on" if self.config.caching_mode else "off",
                     "host": "on (VFIO)", "ok": self.config.caching_mode})
        try:
            host_aw: int | str = int(hiod.get_cap(CAP_AW_BITS))
            aw_ok = self.config.aw_bits <= int(host_aw)
        except CapUnsupported as exc:
            host_aw, aw_ok = str(exc), False
        rows.append({"field": "aw-bits", "viommu": self.config.aw_bits, "host": host_aw, "ok": aw_ok})
        if self.config.flts:
            rows.append({"field": "backend", "viommu": "iommufd (flts)", "host": hiod.kind.value,
                         "ok": self.profile.renamed and hiod.kind.is_iommufd})
            rows.append({"field": "iommu-type", "viommu": IommuType.INTEL_VTD.value,
                         "host": hiod.caps.iommu_type.value,
                         "ok": hiod.caps.iommu_type is IommuType.INTEL_VTD})
            if self.config.fs1gp:
                host_fl1gp = bool(CAP.decode(hiod.caps.registers.get("cap", 0))["FL1GP"])
                rows.append({"field": "fs1gp", "viommu": "on", "host": "on" if host_fl1gp else "off",
                             "ok": host_fl1gp})
        return rows

    def guest_state(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "cap": f"0x{self.cap:016x}",
            "ecap": f"0x{self.ecap:016x}",
            "ver": f"0x{VER_VALUE:08x}",
        }


def compose(
    props: Mapping[str, str],
    version: QemuVersion | str,
    machine: str | None = None,
    *,
    irqchip: Irqchip = Irqchip.USERSPACE,
) -> tuple[int, int]:
    """(CAP, ECAP) of ``-device intel-iommu`` with ``props``; QEMU's refusals raise DeviceConfigError."""
    qemu = version if isinstance(version, QemuVersion) else QemuVersion.parse(version)
    dev = IntelIOMMU(DeviceSpec(MODEL, dict(props)), qemu, machine=machine, irqchip=irqchip)
    return dev.cap, dev.ecap
