"""The machine lifecycle around one vIOMMU, under a policy, as a trace of decisions.

Steps (qemu-framework brief §1.6): realize the vIOMMU, cold-plug VFIO
devices (each through ``set_iommu_device``), machine-init-done (caps freeze),
guest DMA map/unmap, hotplug, unplug, system reset, migration out and in.
Every step returns a :class:`Decision` and is appended to
:attr:`Machine.trace`.

Policies (DESIGN.md):

``check``  QEMU upstream: guest-visible state is a function of the properties;
           each device is checked; a misfit is refused.
``sync``   the 2024 seed series: before machine-done each cold-plugged device
           narrows the vIOMMU's caps (the model's :meth:`~VIOMMU.narrowed`); then
           they freeze and devices are only checked.
``plan``   explicit property values computed from every host of a pool
           (:func:`plan_properties`), then ``check``.
``none``   QEMU before 9.1: no ``set_iommu_device`` checks at all, to show what
           goes wrong (the caching-mode machine hooks, older than 9.1, stay).

Messages are QEMU's, as QEMU prints them after the ``-device ...:``
location: ``vfio 0000:01:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39``
(``Failed to set iommu_device:`` before 10.0).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence

from viommu.dma import GUEST_MAP_ILLEGAL, HOST_MAP_FAILED, HostDomain, MapError
from viommu.errors import InputError, Refusal
from viommu.host.caps import PciAlias
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.host.inventory import HostInventory
from viommu.lazyre import Pattern
from viommu.models.base import DEFAULT_QEMU_VERSION, VIOMMU, DeviceSpec, PciAddr, QemuVersion
from viommu.reasons import register
from viommu.record import field, record, replace
from viommu.vm import VfioDev

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

MIGRATION_STATE_MISMATCH = register(
    "migration-state-mismatch",
    "The destination would expose different guest-visible vIOMMU state (registers or config space) "
    "than the source: the guest read the source's values at boot and keeps using them, so QEMU "
    "loads the source's state (intel-iommu's CAP/ECAP travel in vmstate) over a device built for "
    "other hosts, or (virtio-iommu) the page-size mask silently changes under the guest. Make the "
    "property explicit on both sides (viommu plan).",
)
MIGRATION_DEVICE_REFUSED = register(
    "migration-device-refused",
    "A device of the VM does not fit the vIOMMU on the destination host: the destination QEMU "
    "refuses it at start-up, so the incoming migration cannot begin.",
)
MIGRATION_DEVICE_MISSING = register(
    "migration-device-missing",
    "The destination host has no assignable device at the host address the VM uses.",
)
NO_FITTING_PLAN = register(
    "no-fitting-plan",
    "No value of the vIOMMU's properties fits every device on every host of the pool; the reason "
    "names the device and the check that cannot be satisfied.",
)
UNKNOWN_DEVICE = register(
    "unknown-device",
    "The event names a device that is not plugged into the machine.",
)
DEVICE_EXISTS = register(
    "device-exists",
    "A device with this id is already plugged into the machine.",
)


class Policy(enum.Enum):
    CHECK = "check"
    SYNC = "sync"
    PLAN = "plan"
    NONE = "none"

    @classmethod
    def parse(cls, text: str, *, where: str | None = "--policy") -> Policy:
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise InputError(f"unknown policy {text!r} (known: {known})", where=where) from None


@record(frozen=True)
class Decision:
    """One step of the lifecycle and what came of it."""

    event: str
    #: The device (its id or host address) or host the event concerns.
    target: str | None
    accepted: bool
    code: str | None = None
    message: str | None = None
    #: Event-specific facts (field comparisons, narrowed properties, errno, ...), JSON-ready.
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: The guest-visible state after the event.
    state: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "target": self.target,
            "accepted": self.accepted,
            "code": self.code,
            "message": self.message,
            "detail": dict(self.detail),
            "state": dict(self.state),
        }


def create_viommu(
    spec: DeviceSpec,
    version: QemuVersion,
    *,
    machine_type: str | None = None,
    irqchip: str = "off",
    where: str | None = None,
) -> VIOMMU:
    """The model for ``spec.driver``; QEMU's realize errors raise DeviceConfigError (exit 2).

    ``irqchip`` is the effective ``kernel-irqchip`` mode (``off`` stands for TCG too).
    """
    from viommu.models import registry

    return registry.create(spec, version, machine=machine_type, irqchip=irqchip, where=where)


class _HookRefusal(Refusal):
    """A refusal from the machine's pre-plug hook: QEMU prints it without the vfio prefix."""


def vfio_prefix(version: QemuVersion) -> str:
    """``vfio_pci_realize``'s prefix for a set_iommu_device failure (renamed in 10.0)."""
    return "Failed to set vIOMMU: " if version.at_least(10, 0) else "Failed to set iommu_device: "


# --- guest topology ------------------------------------------------------------------------

_ROOT_BUSES = (None, "", "pcie.0", "pci.0", "pcie", "pci")
_ADDR = Pattern(r"(?:0x)?([0-9a-fA-F]{1,2})(?:\.(?:0x)?([0-7]))?")


def parse_guest_addr(text: str, *, where: str | None = None) -> tuple[int, int]:
    """QEMU's ``addr=SLOT[.FN]`` (hex, optional 0x): (slot, function)."""
    m = _ADDR.fullmatch(text.strip())
    if m is None or int(m.group(1), 16) > 0x1F:
        raise InputError(f"bad PCI address {text!r} (expected SLOT[.FUNCTION], e.g. 04.0)", where=where)
    return int(m.group(1), 16), int(m.group(2) or 0)


class Topology:
    """Guest bus numbers and devfns for the VM's devices, assigned the way a reader expects:
    the root bus is 0, other buses get numbers in order of first use, devices without
    ``addr=`` take the next free slot from 3 on their bus."""

    def __init__(self) -> None:
        self._buses: dict[str, int] = {}
        self._used: set[PciAddr] = set()

    def bus_number(self, bus: str | None) -> int:
        if bus in _ROOT_BUSES:
            return 0
        assert bus is not None
        return self._buses.setdefault(bus, len(self._buses) + 1)

    def place(self, dev: VfioDev) -> tuple[PciAddr, PciAddr | None]:
        """(own address, requester-ID alias or None) for ``dev``."""
        bus = self.bus_number(dev.bus)
        if dev.addr is not None:
            slot, fn = parse_guest_addr(dev.addr, where=dev.where or None)
            addr = PciAddr(bus, slot << 3 | fn)
        else:
            slot = 3 if bus == 0 else 0
            while PciAddr(bus, slot << 3) in self._used:
                slot += 1
            addr = PciAddr(bus, slot << 3)
        self._used.add(addr)
        alias = PciAddr(bus, 0) if dev.behind_pci_bridge else None
        return addr, alias

    def release(self, addr: PciAddr) -> None:
        self._used.discard(addr)


def host_device(dev: VfioDev, host: HostInventory, *, alias: PciAddr | None = None) -> HostIOMMUDevice:
    """The HostIOMMUDevice QEMU would create for ``dev`` on ``host``: the caps the host reports,
    the type its VFIO backend names, and the guest-side alias (what 11.0's x-flts check reads)."""
    found = host.device(dev.host)
    kind = HiodKind.IOMMUFD if dev.iommufd is not None else HiodKind.LEGACY_VFIO
    caps = found.caps
    if alias is not None and not caps.alias.aliased:
        caps = replace(caps, alias=PciAlias(bridge="guest PCIe-to-PCI bridge", alias_bdf=str(alias)))
    return HostIOMMUDevice(found.name, caps, kind)


@record
class _Plugged:
    dev: VfioDev
    hiod: HostIOMMUDevice
    addr: PciAddr
    alias: PciAddr | None
    domain: HostDomain
    hotplugged: bool


# --- plan ----------------------------------------------------------------------------------


@record(frozen=True)
class PlanChoice:
    """One property the plan sets, and why."""

    name: str
    value: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"property": self.name, "value": self.value, "reason": self.reason}


@record(frozen=True)
class Plan:
    spec: DeviceSpec
    choices: tuple[PlanChoice, ...]

    def to_json(self) -> dict[str, Any]:
        return {"device": str(self.spec), "choices": [c.to_json() for c in self.choices]}


def plan_properties(
    spec: DeviceSpec,
    version: QemuVersion,
    pool: Sequence[tuple[VfioDev, HostInventory]],
    *,
    machine_type: str | None = None,
    irqchip: str = "off",
) -> Plan:
    """Explicit properties that fit every ``(device, host)`` of the pool, as wide as allowed.

    Properties the user set are upper bounds; caps left to their defaults start at
    the widest value the model offers (``VIOMMU.widest``) and are narrowed by
    every device of every host (``VIOMMU.narrowed``). Requirements a model states
    (``VIOMMU.required``, e.g. caching-mode=on for VFIO behind intel-iommu) are
    added. Every guest-visible property ends up explicit, so the guest ABI no
    longer depends on the QEMU release's defaults. Raises Refusal
    (``no-fitting-plan``) when some device cannot be made to fit.
    """
    def build(props: Mapping[str, str]) -> VIOMMU:
        return create_viommu(DeviceSpec(spec.driver, dict(props)), version, machine_type=machine_type,
                             irqchip=irqchip)

    probe = build(spec.props)
    props = dict(spec.props)
    choices: dict[str, PlanChoice] = {}
    for name, value in probe.widest().items():
        if name not in spec.props:
            props[name] = value
            choices[name] = PlanChoice(
                name, value, "widest value the model offers, before the hosts narrow it"
            )
    if pool:
        for name, (value, why) in probe.required(has_vfio=True).items():
            if props.get(name) != value:
                props[name] = value
                choices[name] = PlanChoice(name, value, why)
    model = build(props)
    topo = Topology()
    for dev, host in pool:
        addr, alias = topo.place(dev)
        hiod = host_device(dev, host, alias=alias)
        changes = model.narrowed(hiod)
        if changes:
            props.update(changes)
            for name, value in changes.items():
                host_name = host.machine.hostname or host.machine.product or "host"
                choices[name] = PlanChoice(
                    name, value, f"narrowed to fit {dev.host} ({dev.backend}) on {host_name}"
                )
            model = build(props)
    # Every device of every host must now pass the check, cold-plugged and hotplugged alike.
    for i, (dev, host) in enumerate(pool):
        trial = build(props)
        addr, alias = Topology().place(dev)
        try:
            trial.set_iommu_device(addr, host_device(dev, host, alias=alias), hotplug=False, alias=alias)
        except Refusal as exc:
            host_name = host.machine.hostname or host.machine.product or f"host {i}"
            raise Refusal(
                NO_FITTING_PLAN,
                f"no {spec.driver} configuration fits {dev.label} ({dev.host}) on {host_name}: "
                f"{exc.message} [{exc.code}]",
            ) from None
    for name, value in model.explicit().items():
        if name not in props:
            props[name] = value
            choices.setdefault(name, PlanChoice(name, value, "made explicit: the release default may change"))
    ordered = {k: props[k] for k in sorted(props, key=lambda k: (k != "id", k))}
    return Plan(DeviceSpec(spec.driver, ordered), tuple(choices[k] for k in sorted(choices)))


# --- the machine -----------------------------------------------------------------------------


class Machine:
    """One VM's vIOMMU and its VFIO devices through the lifecycle."""

    def __init__(
        self,
        viommu: DeviceSpec,
        *,
        version: QemuVersion = DEFAULT_QEMU_VERSION,
        policy: Policy = Policy.CHECK,
        machine_type: str | None = None,
        pool: Sequence[tuple[VfioDev, HostInventory]] = (),
        irqchip: str = "off",
        where: str | None = None,
    ) -> None:
        self.version = version
        self.irqchip = irqchip
        self.policy = policy
        self.machine_type = machine_type
        self.requested = viommu
        self.plan: Plan | None = None
        if policy is Policy.PLAN:
            self.plan = plan_properties(viommu, version, pool, machine_type=machine_type, irqchip=irqchip)
            viommu = self.plan.spec
        self.spec = viommu
        self.model = create_viommu(viommu, version, machine_type=machine_type, irqchip=irqchip, where=where)
        self.frozen = False
        self.topology = Topology()
        self.devices: dict[str, _Plugged] = {}
        self.trace: list[Decision] = []
        #: After an accepted migration: the machine on the destination.
        self.destination: Machine | None = None
        detail: dict[str, Any] = {"device": str(self.spec)}
        if self.plan is not None:
            detail["plan"] = self.plan.to_json()
        self._record("realize", self.model.model, True, detail=detail)

    # -- helpers --

    def guest_state(self) -> dict[str, Any]:
        return self.model.guest_state()

    def _record(
        self,
        event: str,
        target: str | None,
        accepted: bool,
        *,
        code: str | None = None,
        message: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> Decision:
        decision = Decision(event, target, accepted, code, message, dict(detail or {}), self.guest_state())
        self.trace.append(decision)
        return decision

    def _rebuild(self, changes: Mapping[str, str]) -> None:
        """sync: re-realize the vIOMMU with narrowed properties and re-register its devices."""
        props = dict(self.spec.props)
        props.update(changes)
        self.spec = DeviceSpec(self.spec.driver, props)
        self.model = create_viommu(self.spec, self.version, machine_type=self.machine_type,
                                   irqchip=self.irqchip)
        for plugged in self.devices.values():
            self.model.set_iommu_device(plugged.addr, plugged.hiod, hotplug=False, alias=plugged.alias)

    def _plug(self, dev: VfioDev, host: HostInventory, *, hotplug: bool) -> Decision:
        event = "hotplug" if hotplug else "cold-plug"
        label = dev.label
        if label in self.devices:
            return self._record(event, label, False, code=DEVICE_EXISTS,
                                message=f"Duplicate device ID '{label}'")
        addr, alias = self.topology.place(dev)
        hiod = host_device(dev, host, alias=alias)
        detail: dict[str, Any] = {"host": dev.host, "backend": dev.backend, "guest_addr": str(addr)}
        if alias is not None:
            detail["alias"] = str(alias)
        unnarrowed = (self.spec, self.model)
        if self.policy is Policy.SYNC and not self.frozen:
            changes = self.model.narrowed(hiod)
            if changes:
                self._rebuild(changes)
                detail["narrowed"] = dict(changes)
        try:
            try:
                self.model.pre_plug(hotplug=hotplug)
            except Refusal as exc:
                raise _HookRefusal(exc.code, exc.message) from None
            if self.policy is not Policy.NONE:
                self.model.set_iommu_device(addr, hiod, hotplug=hotplug, alias=alias)
        except Refusal as exc:
            self.topology.release(addr)
            if isinstance(exc, _HookRefusal):
                message = exc.message
            else:
                message = f"vfio {hiod.name}: {vfio_prefix(self.version)}{exc.message}"
            detail["comparison"] = self.compare(hiod)
            # A refused device is not part of the machine: what it narrowed is undone.
            self.spec, self.model = unnarrowed
            detail.pop("narrowed", None)
            return self._record(event, label, False, code=exc.code, message=message, detail=detail)
        self.devices[label] = _Plugged(dev, hiod, addr, alias, HostDomain.of(hiod), hotplug)
        return self._record(event, label, True, detail=detail)

    def compare(self, hiod: HostIOMMUDevice) -> list[dict[str, Any]]:
        """Field-level comparison of the host device with the vIOMMU (what check prints)."""
        return self.model.compare(hiod)

    # -- lifecycle --

    def cold_plug(self, dev: VfioDev, host: HostInventory) -> Decision:
        if self.frozen:
            raise InputError(f"{dev.label}: cold plug after machine-done (use hotplug)")
        return self._plug(dev, host, hotplug=False)

    def machine_done(self) -> Decision:
        try:
            self.model.machine_done(vfio_devices=[p.addr for p in self.devices.values()])
        except Refusal as exc:
            self.frozen = True
            return self._record("machine-done", None, False, code=exc.code, message=exc.message)
        self.frozen = True
        return self._record("machine-done", None, True)

    def hotplug(self, dev: VfioDev, host: HostInventory) -> Decision:
        if not self.frozen:
            raise InputError(f"{dev.label}: hotplug before machine-done (use cold plug)")
        return self._plug(dev, host, hotplug=True)

    def unplug(self, label: str) -> Decision:
        plugged = self.devices.pop(label, None)
        if plugged is None:
            return self._record("unplug", label, False, code=UNKNOWN_DEVICE,
                                message=f"Device '{label}' not found")
        self.model.unset_iommu_device(plugged.addr)
        self.topology.release(plugged.addr)
        return self._record("unplug", label, True)

    def reset(self) -> Decision:
        self.model.reset()
        for plugged in self.devices.values():
            plugged.domain.mappings.clear()
        return self._record("reset", None, True)

    def dma_map(self, label: str, iova: int, size: int, page_size: int = 4096) -> Decision:
        """The guest maps ``[iova, iova + size)`` for device ``label``; QEMU shadows it on the host."""
        plugged = self.devices.get(label)
        detail: dict[str, Any] = {
            "iova": f"0x{iova:x}", "size": f"0x{size:x}", "page_size": f"0x{page_size:x}"
        }
        if plugged is None:
            return self._record("dma-map", label, False, code=UNKNOWN_DEVICE,
                                message=f"Device '{label}' not found", detail=detail)
        view = self.model.guest_view(plugged.alias or plugged.addr)
        try:
            view.check(iova, size, page_size)
        except MapError as exc:
            detail["stage"] = "guest"
            return self._record("dma-map", label, False, code=GUEST_MAP_ILLEGAL, message=exc.message,
                                detail=detail)
        try:
            # QEMU's VFIO listener maps each IOTLB entry (one guest page) on its own.
            for offset in range(0, size, page_size):
                plugged.domain.map(iova + offset, page_size)
        except MapError as exc:
            detail["stage"] = "host"
            detail["errno"] = exc.errno
            return self._record(
                "dma-map", label, False, code=HOST_MAP_FAILED, message=str(exc), detail=detail
            )
        return self._record("dma-map", label, True, detail=detail)

    def dma_unmap(self, label: str, iova: int, size: int) -> Decision:
        plugged = self.devices.get(label)
        if plugged is None:
            return self._record("dma-unmap", label, False, code=UNKNOWN_DEVICE,
                                message=f"Device '{label}' not found")
        gone = plugged.domain.unmap(iova, size)
        return self._record("dma-unmap", label, True, detail={"unmapped": f"0x{gone:x}"})

    def vmstate(self) -> str:
        """The migration stream's vIOMMU section: the guest-visible state as JSON (intel-iommu's
        CAP/ECAP travel in vmstate ``iommu-intel``; virtio-iommu's config is re-derived on the
        destination, which is exactly what the comparison catches)."""
        return json.dumps({"model": self.model.model, "qemu": str(self.version), "state": self.guest_state()},
                          sort_keys=True)

    def migrate(
        self,
        dest: HostInventory,
        *,
        version: QemuVersion | None = None,
        devices: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Decision:
        """Migrate to ``dest``: the destination QEMU realizes the same command line (the planned
        one under ``plan``), cold-plugs the VM's devices (host addresses from ``devices``, by id,
        else the same) and reaches machine-done; its guest-visible state must equal ours."""
        dest_version = version or self.version
        target = name or dest.machine.hostname or dest.machine.product or "destination"
        spec = self.spec if self.policy is not Policy.SYNC else self.requested
        dest_policy = Policy.CHECK if self.policy is Policy.PLAN else self.policy
        try:
            other = Machine(spec, version=dest_version, policy=dest_policy, machine_type=self.machine_type,
                            irqchip=self.irqchip)
        except InputError as exc:
            return self._record("migrate", target, False, code=getattr(exc, "code", "bad-destination"),
                                message=str(exc))
        refused: list[Decision] = []
        for label, plugged in sorted(self.devices.items()):
            moved = replace(plugged.dev, host=(devices or {}).get(label, plugged.dev.host), hotplug=False)
            try:
                dest.device(moved.host)
            except InputError as exc:
                return self._record("migrate", target, False, code=MIGRATION_DEVICE_MISSING,
                                    message=f"{label}: {exc.message}")
            decision = other.cold_plug(moved, dest)
            if not decision.accepted:
                refused.append(decision)
        done = other.machine_done()
        if refused or not done.accepted:
            first = refused[0] if refused else done
            return self._record(
                "migrate", target, False, code=MIGRATION_DEVICE_REFUSED,
                message=f"destination refuses {first.target or 'the machine'}: {first.message}",
                detail={
                    "refusals": [d.to_json() for d in refused]
                    + ([] if done.accepted else [done.to_json()])
                },
            )
        # The source sends its guest-visible state; the destination compares it with the state it
        # derived from its own command line and host devices.
        ours = json.loads(self.vmstate())["state"]
        theirs = other.guest_state()
        diffs = diff_state(ours, theirs)
        if diffs:
            fields = ", ".join(d["field"] for d in diffs)
            return self._record(
                "migrate", target, False, code=MIGRATION_STATE_MISMATCH,
                message=f"guest-visible vIOMMU state differs on the destination: {fields}",
                detail={"differences": diffs},
            )
        self.destination = other
        return self._record("migrate", target, True, detail={"destination_state": theirs})


def diff_state(source: Mapping[str, Any], dest: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """The fields (dotted paths) whose values differ, with both values."""
    out: list[dict[str, Any]] = []
    for key in sorted(set(source) | set(dest)):
        a, b = source.get(key), dest.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_state(a, b, f"{path}."))
        elif a != b:
            out.append({"field": path, "source": a, "destination": b})
    return out


def run_cold(
    spec: DeviceSpec,
    devices: Iterable[tuple[VfioDev, HostInventory]],
    *,
    version: QemuVersion = DEFAULT_QEMU_VERSION,
    policy: Policy = Policy.CHECK,
    machine_type: str | None = None,
    irqchip: str = "off",
) -> Machine:
    """Realize, cold-plug every device, machine-done: what QEMU does at start-up."""
    pool = list(devices)
    machine = Machine(spec, version=version, policy=policy, machine_type=machine_type, pool=pool,
                      irqchip=irqchip)
    for dev, host in pool:
        machine.cold_plug(dev, host)
    machine.machine_done()
    return machine
