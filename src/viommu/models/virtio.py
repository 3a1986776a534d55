"""virtio-iommu (``-device virtio-iommu-pci``) as QEMU 10.0 builds it on x86.

Guest-visible state is the virtio config space (``struct virtio_iommu_config``):
``page_size_mask`` from ``granule``, ``input_range`` from ``aw-bits``, the
domain range, ``probe_size`` and ``bypass``. Unlike intel-iommu, QEMU lets
cold-plugged host devices narrow the page-size mask until machine-init-done
freezes the granule, and every host device's reserved IOVA ranges become
reserved regions of its endpoint, which the guest learns by PROBE
(qemu-framework brief §4.2, virtio-iommu.c at 62ac01d1 and the July 2024
fixes).

Facts read from the QEMU 10.0.2 binary (``tests/test_virtio_differential.py``
holds the model to them):

* the class default aw-bits is 64; q35 machine types from 9.0 on set 39
  (i440fx keeps 64); ``pc-*-8.2`` and older set ``granule=4k``;
* the pc machine's pre-plug hook sets ``reserved-regions`` to the x86 MSI
  window ``0xfee00000:0xfeefffff:1``; a user value can never stick on x86:
  key=value syntax cannot express an array ("Invalid parameter type ...,
  expected: array"; ``reserved-regions[0]=`` is an unknown property since
  QEMU 9.0 made arrays lists) and a JSON ``-device`` list makes QEMU abort
  ("array size property reserved-regions may not be set more than once");
* ``virtio-iommu-pci`` is a PCI device on q35 (``pcie.0``) and i440fx
  (``pci.0``); microvm has no PCI bus.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from viommu.dma import GuestView, lowest_page
from viommu.errors import InputError, Refusal
from viommu.host.caps import U64_MAX, IovaRange, complement
from viommu.host.device import CAP_AW_BITS, CapUnsupported, HostIOMMUDevice
from viommu.models.base import VIOMMU, DeviceSpec, PciAddr, QemuVersion
from viommu.models.intel import DUPLICATE_HOST_IOMMU_DEVICE
from viommu.models.qdev import (
    BAD_BUS,
    MACHINE_REJECTS_DEVICE,
    DeviceConfigError,
    MachineType,
    OnOffAuto,
    PropKind,
    PropSpec,
    PropValue,
    check_id,
    prop_text,
    resolve_machine,
    set_properties,
)
from viommu.reasons import register
from viommu.record import record

MODEL = "virtio-iommu-pci"
BACKEND = "virtio-iommu-device"
DRIVERS = (MODEL, BACKEND)

#: ``qemu_real_host_page_size()`` on the x86 hosts modelled here.
HOST_PAGE_SIZE = 4096
#: VIOMMU_PROBE_SIZE.
PROBE_SIZE = 512
#: ``VIRTIO_IOMMU_RESV_MEM_T_RESERVED`` / ``_MSI`` (virtio spec 5.13.6.8.1).
RESV_RESERVED, RESV_MSI = 0, 1
#: The region pc_machine_device_pre_plug_cb declares: the x86 APIC/MSI window.
X86_MSI_REGION = (0xFEE0_0000, 0xFEEF_FFFF, RESV_MSI)
GRANULES = {"4k": 1 << 12, "8k": 1 << 13, "16k": 1 << 14, "64k": 1 << 16}

# --- reason codes --------------------------------------------------------------------------

PAGE_SIZE_INCOMPATIBLE = register(
    "page-size-incompatible",
    "The host IOMMU of the device supports none of the page sizes virtio-iommu currently offers "
    "the guest (the two page-size masks do not intersect), so no guest mapping could be shadowed "
    "on the host (QEMU: \"virtio-iommu reports a page size mask 0x... incompatible with currently "
    "supported mask 0x...\").",
)
FROZEN_GRANULE_UNSUPPORTED = register(
    "frozen-granule-unsupported",
    "After machine-init-done virtio-iommu's granule (the smallest page size the guest was told) is "
    "frozen; a hotplugged device whose host IOMMU cannot map at that granule is refused (QEMU: "
    "\"virtio-iommu does not support frozen granule 0x...\"). Cold-plug the device, or pick a "
    "granule= the host supports.",
)
ALIASED_BDF_UNSUPPORTED = register(
    "aliased-bdf-unsupported",
    "Two host devices share one requester-ID alias (for instance both behind one PCIe-to-PCI "
    "bridge): virtio-iommu keeps one set of host reserved ranges per alias and refuses the second "
    "device (QEMU: \"virtio_iommu_set_host_iova_ranges virtio-iommu does not support aliased BDF\").",
)
AW_BITS_OUT_OF_RANGE = register(
    "aw-bits-out-of-range",
    "virtio-iommu's aw-bits (the guest input range) must be within 32 and 64.",
)
VIRTIO_NO_MODE = register(
    "virtio-no-mode",
    "A virtio-pci device needs modern or legacy mode: disable-legacy=on and disable-modern=on "
    "together leave neither.",
)
FAILOVER_NOT_ETHERNET = register(
    "failover-not-ethernet",
    "failover_pair_id= is for network devices (virtio-net failover); virtio-iommu-pci is not one.",
)
PCI_SLOT_IN_USE = register(
    "pci-slot-in-use",
    "addr= names a PCI slot and function already taken (on q35, 00.0 is the host bridge mch).",
)

_DUPLICATE_TEXT = "Host IOMMU device already exists"
_ALIASED_TEXT = "virtio_iommu_set_host_iova_ranges virtio-iommu does not support aliased BDF"

# --- properties ------------------------------------------------------------------------------


def _schema(machine: MachineType) -> dict[str, PropSpec]:
    """The writable properties of ``virtio-iommu-pci`` in QEMU 10.0 (``-device ...,help``)."""
    b, ooa, u8, u32 = PropKind.BOOL, PropKind.ON_OFF_AUTO, PropKind.UINT8, PropKind.UINT32
    bus = "pcie.0" if machine.family == "q35" else "pci.0"
    specs = [
        # VirtIOIOMMU (the backend, aliased onto the proxy):
        PropSpec("aw-bits", u8, 64),
        PropSpec("granule", PropKind.ENUM, "host", ("4k", "8k", "16k", "64k", "host")),
        PropSpec("boot-bypass", b, True),
        PropSpec("primary-bus", PropKind.LINK, bus, (bus,)),
        # virtio-iommu-pci itself:
        PropSpec("class", u32, 0),
        PropSpec("reserved-regions", PropKind.ARRAY, ""),
        # VirtIOPCIProxy:
        PropSpec("disable-legacy", ooa, OnOffAuto.AUTO),
        PropSpec("x-max-bounce-buffer-size", PropKind.SIZE, 4096),
        # PCIDevice:
        PropSpec("addr", PropKind.PCI_DEVFN, -1),
        PropSpec("romfile", PropKind.STR, ""),
        PropSpec("romsize", u32, 0xFFFFFFFF),
        PropSpec("rombar", PropKind.INT32, -1),
        PropSpec("acpi-index", u32, 0),
        PropSpec("failover_pair_id", PropKind.STR, ""),
    ]
    on = ("any_layout", "event_idx", "indirect_desc", "notify_on_empty", "queue_reset",
          "use-disabled-flag", "use-started", "migrate-extra", "x-ats-page-aligned",
          "x-pcie-deverr-init", "x-pcie-err-unc-mask", "x-pcie-ext-tag", "x-pcie-extcap-init",
          "x-pcie-flr-init", "x-pcie-lnkctl-init", "x-pcie-lnksta-dllla", "x-pcie-pm-init")
    off = ("in_order", "iommu_platform", "packed", "x-disable-legacy-check", "disable-modern",
           "modern-pio-notify", "page-per-vq", "virtio-pci-bus-master-bug-migration",
           "x-ignore-backend-features", "x-pcie-ari-nextfn-1", "x-pcie-pm-no-soft-reset",
           "x-disable-pcie", "ats", "aer", "multifunction")
    specs += [PropSpec(name, b, True) for name in on] + [PropSpec(name, b, False) for name in off]
    return {s.name: s for s in specs}


#: Properties that exist but cannot be set, and the type QEMU names in its error.
_READ_ONLY = {"busnr": MODEL, "virtio-backend": MODEL, "legacy-primary-bus": BACKEND}


def _defaults(schema: Mapping[str, PropSpec], machine: MachineType) -> dict[str, PropValue]:
    """Defaults after the machine's compat properties (read from the 10.0 binary with qom-get)."""
    values: dict[str, PropValue] = {name: spec.default for name, spec in schema.items()}
    if machine.family == "q35" and not machine.older_or_equal(8, 2):
        values["aw-bits"] = 39  # pc_q35_compat_defaults, from pc-q35-9.0
    if machine.older_or_equal(8, 2):
        values["granule"] = "4k"  # hw_compat_8_2
    return values


@record(frozen=True)
class VirtioConfig:
    """The realized device: what the config space and the checks read."""

    aw_bits: int
    granule: str
    boot_bypass: bool
    #: (start, end, type) from ``reserved-regions`` (on x86: the machine's MSI window).
    reserved_regions: tuple[tuple[int, int, int], ...]

    @property
    def initial_mask(self) -> int:
        """``-granule`` as a mask; ``host`` is ``qemu_real_host_page_mask()``."""
        size = HOST_PAGE_SIZE if self.granule == "host" else GRANULES[self.granule]
        return U64_MAX & -size

    @property
    def input_end(self) -> int:
        return U64_MAX if self.aw_bits >= 64 else (1 << self.aw_bits) - 1


#: Built-in PCI functions of a ``-nodefaults`` machine (devfn -> QEMU type), read from the binary.
_BUILTIN_SLOTS: Mapping[str, Mapping[int, str]] = {
    "q35": {0x00: "mch", 0xF8: "ICH9-LPC", 0xFA: "ich9-ahci", 0xFB: "ICH9-SMB"},
    "i440fx": {0x00: "i440FX", 0x08: "PIIX3", 0x09: "piix3-ide", 0x0B: "PIIX4_PM"},
}
#: Non-PCI buses of a ``-nodefaults`` machine and the name QEMU gives their type.
_OTHER_BUSES: Mapping[str, Mapping[str, str]] = {
    "q35": {"main-system-bus": "System", "isa.0": "ISA", "i2c": "i2c-bus",
            **{f"ide.{i}": "IDE" for i in range(6)}},
    "i440fx": {"main-system-bus": "System", "isa.0": "ISA", "i2c": "i2c-bus", "ide.0": "IDE",
               "ide.1": "IDE"},
}


def _realize(values: Mapping[str, PropValue], machine: MachineType) -> VirtioConfig:
    """The realize checks in the order the 10.0 binary reports them: the PCI slot
    (do_pci_register_device), the virtio-pci mode, virtio-iommu's aw-bits, then
    the failover pairing (checked after the device realize)."""
    devfn = values["addr"]
    assert isinstance(devfn, int)
    owner = _BUILTIN_SLOTS.get(machine.family, {}).get(devfn)
    if owner is not None:
        raise DeviceConfigError(
            PCI_SLOT_IN_USE,
            f"PCI: slot {devfn >> 3} function {devfn & 7} not available for {MODEL}, "
            f"in use by {owner},id=(null)",
        )
    if values["disable-legacy"] is OnOffAuto.ON and values["disable-modern"] is True:
        raise DeviceConfigError(
            VIRTIO_NO_MODE, "device cannot work as neither modern nor legacy mode is enabled"
        )
    aw = values["aw-bits"]
    assert isinstance(aw, int)
    if not 32 <= aw <= 64:
        raise DeviceConfigError(AW_BITS_OUT_OF_RANGE, "aw-bits must be within [32,64]")
    if values["failover_pair_id"]:
        raise DeviceConfigError(FAILOVER_NOT_ETHERNET, "failover primary device is not an Ethernet device")
    granule = str(values["granule"])
    # "Unsupported granule mode" cannot be reached from the command line: the enum
    # visitor refuses any other value first.
    return VirtioConfig(aw, granule, bool(values["boot-bypass"]), (X86_MSI_REGION,))


class VirtioIOMMU(VIOMMU):
    """One ``-device virtio-iommu-pci`` in a pc or q35 machine (QEMU 9.1 and later)."""

    model = MODEL
    drivers = DRIVERS

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
        if not version.at_least(9, 1):
            raise InputError(
                f"virtio-iommu is modelled from QEMU 9.1 (set_iommu_device), not {version}",
                where="--qemu-version",
            )
        if spec.driver == BACKEND:
            # The bare virtio device needs a virtio bus (virtio-mmio): x86 machines have none
            # without a transport, which the machine layer models.
            raise DeviceConfigError(
                BAD_BUS, f"No 'virtio-bus' bus found for device '{BACKEND}'", where=where
            )
        check_id(spec.props, where=where)
        self.machine = resolve_machine(machine, version)
        self._check_bus(spec.props, where=where)
        schema = _schema(self.machine)
        values = set_properties(
            MODEL, schema, _defaults(schema, self.machine), spec.props, where=where,
            read_only=_READ_ONLY, realized_crash="QEMU crashes (SIGSEGV) on realized=on",
        )
        try:
            self.config = _realize(values, self.machine)
        except DeviceConfigError as exc:
            raise DeviceConfigError(exc.code, exc.message, where=where) from None
        self.properties = {name: prop_text(v) for name, v in sorted(values.items())}
        self.page_size_mask = self.config.initial_mask
        self.bypass = self.config.boot_bypass
        self.granule_frozen = False
        self._devices: dict[PciAddr, tuple[HostIOMMUDevice, PciAddr]] = {}
        #: Host reserved ranges per requester-ID alias (IOMMUDevice.host_resv_ranges).
        self._host_resv: dict[PciAddr, tuple[IovaRange, ...]] = {}

    def _check_bus(self, props: Mapping[str, str], *, where: str) -> None:
        """qdev_device_add's bus lookup for a PCI device."""
        if self.machine.family == "microvm":
            raise DeviceConfigError(
                MACHINE_REJECTS_DEVICE, f"No 'PCI' bus found for device '{MODEL}'", where=where
            )
        bus = props.get("bus")
        if bus is None:
            return
        pci_bus = "pcie.0" if self.machine.family == "q35" else "pci.0"
        if bus == pci_bus:
            return
        kinds = _OTHER_BUSES[self.machine.family]
        if bus in kinds:
            raise DeviceConfigError(BAD_BUS, f"Device '{MODEL}' can't go on {kinds[bus]} bus", where=where)
        raise DeviceConfigError(BAD_BUS, f"Bus '{bus}' not found", where=where)

    # -- host devices --

    def set_iommu_device(
        self, addr: PciAddr, hiod: HostIOMMUDevice, *, hotplug: bool, alias: PciAddr | None = None
    ) -> None:
        """``virtio_iommu_set_iommu_device`` (brief §4.2), in QEMU's order."""
        if addr in self._devices:
            raise Refusal(DUPLICATE_HOST_IOMMU_DEVICE, _DUPLICATE_TEXT)
        ranges = hiod.get_iova_ranges()
        if not ranges:
            # A legacy container on a kernel without the IOVA-range capability: QEMU
            # returns success before registering or checking anything.
            return
        key = alias if alias is not None else addr
        if key in self._host_resv:
            raise Refusal(ALIASED_BDF_UNSUPPORTED, _ALIASED_TEXT)
        # Set before the page-size check and, as in QEMU, not undone when that check
        # fails: the failed device never reaches the table, so its unset finds nothing.
        self._host_resv[key] = complement(ranges, 0, U64_MAX)
        new = hiod.get_page_size_mask()
        cur = self.page_size_mask
        if not cur & new:
            raise Refusal(
                PAGE_SIZE_INCOMPATIBLE,
                f"{hiod.name}: virtio-iommu reports a page size mask 0x{new:x} incompatible "
                f"with currently supported mask 0x{cur:x}",
            )
        granule = lowest_page(cur)
        if self.granule_frozen and not new & granule:
            raise Refusal(
                FROZEN_GRANULE_UNSUPPORTED,
                f"{hiod.name}: virtio-iommu does not support frozen granule 0x{granule:x}",
            )
        if not self.granule_frozen:
            self.page_size_mask = cur & new
        self._devices[addr] = (hiod, key)

    def unset_iommu_device(self, addr: PciAddr) -> None:
        """Free the host ranges of the device's alias; the page-size mask is not widened back."""
        entry = self._devices.pop(addr, None)
        if entry is not None:
            self._host_resv.pop(entry[1], None)

    @property
    def devices(self) -> Mapping[PciAddr, HostIOMMUDevice]:
        return {addr: hiod for addr, (hiod, _) in self._devices.items()}

    def host_reserved(self, alias: PciAddr) -> tuple[IovaRange, ...]:
        """The host reserved ranges recorded for the endpoint ``alias``."""
        return self._host_resv.get(alias, ())

    # -- lifecycle --

    def machine_done(self, *, vfio_devices: Collection[PciAddr] = ()) -> None:
        self.granule_frozen = True

    def reset(self) -> None:
        # virtio_iommu_system_reset restores bypass; the mask and host ranges stay.
        self.bypass = self.config.boot_bypass

    def reserved_regions(self, addr: PciAddr) -> tuple[tuple[int, int, int], ...]:
        """What PROBE reports for the endpoint ``addr``: host ranges (RESERVED) merged with
        the property regions, sorted by start (``rebuild_resv_regions``)."""
        host = tuple((r.start, r.last, RESV_RESERVED) for r in self._host_resv.get(addr, ()))
        return tuple(sorted(host + self.config.reserved_regions))

    def guest_view(self, addr: PciAddr) -> GuestView:
        """Width = aw-bits, the endpoint's reserved regions, page sizes = the current mask.

        A registered device is looked up by its own address and reports the
        ranges of its requester-ID alias (the endpoint the guest PROBEs).
        """
        entry = self._devices.get(addr)
        key = entry[1] if entry is not None else addr
        regions = tuple(IovaRange(s, e) for s, e, _ in self.reserved_regions(key))
        return GuestView(self.config.aw_bits, regions, self.page_size_mask)

    def narrowed(self, hiod: HostIOMMUDevice) -> dict[str, str]:
        """For the ``sync`` policy: aw-bits down to the host's address width, never below 32.

        QEMU itself never compares virtio-iommu's input range with the host
        (only the page-size mask narrows, by itself): lowering aw-bits is the
        ``sync`` policy's addition, so that the guest never maps an IOVA the
        host cannot.
        """
        try:
            host_aw = int(hiod.get_cap(CAP_AW_BITS))
        except CapUnsupported:
            return {}
        if self.config.aw_bits <= host_aw or host_aw < 32:
            return {}
        return {"aw-bits": str(host_aw)}

    def widest(self) -> dict[str, str]:
        return {"aw-bits": "64"}

    def explicit(self) -> dict[str, str]:
        """aw-bits (its default depends on the machine type), the granule resolved to a size
        (``host`` depends on the host's page size), and boot-bypass."""
        granule = self.config.granule
        if granule == "host":
            granule = f"{HOST_PAGE_SIZE >> 10}k"
        return {
            "aw-bits": str(self.config.aw_bits),
            "granule": granule,
            "boot-bypass": "on" if self.config.boot_bypass else "off",
        }

    def compare(self, hiod: HostIOMMUDevice) -> list[dict[str, Any]]:
        new = hiod.get_page_size_mask()
        cur = self.page_size_mask
        granule = lowest_page(cur)
        rows: list[dict[str, Any]] = [
            {"field": "page-size-mask", "viommu": f"0x{cur:x}", "host": f"0x{new:x}", "ok": bool(cur & new)},
        ]
        if self.granule_frozen:
            rows.append({"field": "frozen-granule", "viommu": f"0x{granule:x}", "host": f"0x{new:x}",
                         "ok": bool(new & granule)})
        try:
            host_aw: int | str = int(hiod.get_cap(CAP_AW_BITS))
        except CapUnsupported as exc:
            host_aw = str(exc)
        # QEMU does not compare the input range: the host's limits reach the guest as
        # reserved regions instead, so this row is informational.
        rows.append({"field": "aw-bits", "viommu": self.config.aw_bits, "host": host_aw, "ok": True})
        return rows

    def guest_state(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "page_size_mask": f"0x{self.page_size_mask:016x}",
            "input_range": {"start": "0x0", "end": f"0x{self.config.input_end:x}"},
            "domain_range": {"start": 0, "end": 0xFFFFFFFF},
            "probe_size": PROBE_SIZE,
            "bypass": int(self.bypass),
        }
