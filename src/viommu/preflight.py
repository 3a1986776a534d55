"""Pre-flight answers for operators: will this VM start, hotplug, migrate; which vIOMMU fits.

:func:`check_vm` runs the VM's start-up on one host (realize, cold-plug every
VFIO device, machine-done: :func:`viommu.machine.run_cold`'s steps), asks for
each device whether a later hotplug of it would pass, and adds warnings for
what the ``set_iommu_device`` checks do not catch but breaks DMA all the same
(the guest memory map against the IOMMU widths and the host reserved regions,
IOMMU groups). :func:`plan_vm` computes explicit vIOMMU properties that fit
every given host; :func:`migrate_vm` compares source and destination.

The guest memory map is QEMU's q35 map (``hw/i386/pc_q35.c`` ``pc_q35_init``,
``hw/i386/pc.c`` ``pc_memory_init`` / ``pc_pci_hole64_start``,
``hw/pci-host/q35.c``): RAM of 0xb0000000 bytes or more puts 2 GiB below
4 GiB, less stays below 0xb0000000 whole; the rest starts at 4 GiB; the
64-bit PCI hole (``pci-hole64-size``, 32 GiB by default) starts at the next
GiB boundary above RAM (and above the hotplug memory region with ``maxmem``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from viommu.errors import InputError
from viommu.host.caps import ResvType, aw_bits_of
from viommu.host.inventory import HostInventory
from viommu.machine import (
    Decision,
    Machine,
    Plan,
    Policy,
    Topology,
    host_device,
    plan_properties,
)
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.reasons import register
from viommu.record import field, record, replace
from viommu.vm import VfioDev, VMConfig

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: ``pc_q35_init``: RAM of this size or more is split at 2 GiB, smaller RAM stays below it.
Q35_LOWMEM_LIMIT = 0xB000_0000
Q35_LOWMEM_SPLIT = 0x8000_0000
#: ``Q35_PCI_HOST_HOLE64_SIZE_DEFAULT`` (hw/pci-host/q35.c): 1 << 35.
Q35_HOLE64_SIZE_DEFAULT = 1 << 35
#: ``TCG_PHYS_ADDR_BITS`` (target/i386/cpu.h): phys-bits when neither phys-bits nor
#: host-phys-bits is given.
DEFAULT_PHYS_BITS = 40
#: The default ``-m`` of x86 machines (``mc->default_ram_size``).
DEFAULT_RAM = 128 * MiB

#: Host reserved-region types VFIO refuses to map over (type1 skips only direct-relaxable,
#: which Linux relaxes for device assignment).
_BLOCKING = (ResvType.DIRECT, ResvType.RESERVED, ResvType.MSI)

# --- warning codes -----------------------------------------------------------------------------

CACHING_MODE_MISSING = register(
    "caching-mode-missing",
    "The VM assigns VFIO devices behind intel-iommu without caching-mode=on. QEMU cannot learn "
    "of the guest's new mappings, so it cannot program the host IOMMU: QEMU 10.2 and later refuse "
    "each device, earlier releases exit at start-up (cold plug) or refuse the hotplug. Add "
    "caching-mode=on to the -device intel-iommu options (libvirt: <driver caching_mode='on'/>).",
)
REQUIRED_PROPERTY_MISSING = register(
    "required-property-missing",
    "A vIOMMU property has a value that VFIO devices cannot work with whatever the host; the "
    "warning names the property, the value it needs and why.",
)
PHYS_BITS_EXCEED_IOMMU = register(
    "phys-bits-exceed-iommu",
    "The guest's physical address width (phys-bits) is wider than the IOMMU's address width (the "
    "vIOMMU's aw-bits, or the host IOMMU's usable IOVA width). Firmware such as OVMF places 64-bit "
    "PCI resources near the top of the physical address space it is given; DMA to or through "
    "addresses above the IOMMU width cannot be mapped (VFIO_MAP_DMA fails with EINVAL, the guest "
    "driver cannot map the IOVA). Lower phys-bits (or host-phys-bits-limit) to the IOMMU width.",
)
PCI_HOLE64_EXCEEDS_IOMMU = register(
    "pci-hole64-exceeds-iommu",
    "The q35 64-bit PCI hole (where 64-bit BARs of passthrough devices go, placed above guest "
    "RAM) ends above the IOMMU's address width: peer-to-peer DMA to those BARs, and any IOVA the "
    "guest takes from that range, cannot be mapped on the host. Reduce guest RAM or "
    "pci-hole64-size (-global q35-pcihost.pci-hole64-size=...), or use a wider host.",
)
RAM_EXCEEDS_IOMMU = register(
    "ram-exceeds-iommu",
    "Guest RAM reaches above the IOMMU's address width: DMA to the top of guest RAM cannot be "
    "mapped (without a vIOMMU QEMU maps all guest RAM at IOVA = GPA and the mapping fails at "
    "start-up; with one the guest cannot identity-map it). Reduce guest RAM or use a wider host.",
)
RAM_OVERLAPS_RESERVED = register(
    "ram-overlaps-reserved",
    "Guest RAM (or the 64-bit PCI hole) overlaps a host reserved IOVA region of a passthrough "
    "device (an RMRR 'direct' region, AMD's HyperTransport hole 0xfd00000000-0xffffffffff "
    "reported as 'reserved', an MSI window). VFIO refuses mappings that cross it "
    "(VFIO_IOMMU_MAP_DMA / IOMMU_IOAS_MAP: EINVAL), so DMA to that guest memory fails. On AMD "
    "hosts give the guest an AMD CPU model on a machine type >= 7.1 (QEMU then moves RAM above "
    "1 TiB, which needs phys-bits > 40) or less RAM.",
)
GROUP_PARTIALLY_ASSIGNED = register(
    "group-partially-assigned",
    "A passthrough device shares its host IOMMU group with endpoints the VM does not assign. VFIO "
    "opens a group only when every endpoint in it is bound to vfio-pci (or pci-stub, or no "
    "driver): a member held by a host driver makes the group not viable and QEMU cannot start; a "
    "member bound to vfio-pci but left out cannot be given to another VM while this one runs. "
    "Assign the whole group, or move the device to a slot with its own group (ACS).",
)
GROUP_SPLIT_ADDRESS_SPACES = register(
    "group-split-address-spaces",
    "Two passthrough devices of one host IOMMU group sit in different guest address spaces behind "
    "the vIOMMU (for instance on different root ports): one group has one host IOMMU domain, so "
    "QEMU refuses the second device ('group N used in multiple address spaces'). Put the group's "
    "devices behind one pcie-pci-bridge so they share a requester ID.",
)
INPUT_NOT_MODELLED = register(
    "input-not-modelled",
    "A part of the VM definition was read but is not modelled by viommu; the check ignores it, "
    "so the verdict does not account for it.",
)
PHYS_BITS_TOO_LOW = register(
    "phys-bits-too-low",
    "QEMU (7.1 and later) refuses to start a PC machine whose highest used guest-physical address "
    "(the end of the 64-bit PCI hole above RAM) does not fit in the CPU's phys-bits: \"Address "
    "space limit ... < ... phys-bits too low\". Raise phys-bits, or lower RAM or pci-hole64-size.",
)
HOST_DEVICE_MISSING = register(
    "host-device-missing",
    "The VM assigns a host PCI address at which this host has no assignable device (absent, or "
    "outside any IOMMU group): VFIO cannot open it and QEMU cannot start.",
)


@record(frozen=True)
class Finding:
    """A warning: its code, what is wrong, the values involved and the suggested fix."""

    code: str
    message: str
    fix: str
    device: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    #: QEMU itself refuses to start (not only a later DMA failure).
    fatal: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "fatal": self.fatal,
            "device": self.device,
            "message": self.message,
            "values": dict(self.values),
            "fix": self.fix,
        }


# --- the guest memory map ------------------------------------------------------------------------


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@record(frozen=True)
class GuestLayout:
    """Guest RAM, the 64-bit PCI hole and the physical address width of a q35 guest."""

    ram_size: int
    below_4g: int
    above_4g: int
    hole64_start: int
    hole64_size: int
    phys_bits: int | None
    #: Where ``phys_bits`` came from (``phys-bits=N``, the default, host-phys-bits).
    phys_bits_source: str
    notes: tuple[str, ...] = ()

    @classmethod
    def q35(cls, vm: VMConfig, *, host_cpu_phys_bits: int | None = None) -> GuestLayout:
        """The layout QEMU builds for ``vm`` (``pc_q35_init`` and ``pc_memory_init``);
        ``host_cpu_phys_bits`` is what a guest with host-phys-bits gets (None: unknown)."""
        notes: list[str] = []
        ram = vm.memory
        if ram is None:
            ram = DEFAULT_RAM
            notes.append("guest RAM not given: QEMU's default of 128 MiB")
        lowmem = Q35_LOWMEM_SPLIT if ram >= Q35_LOWMEM_LIMIT else Q35_LOWMEM_LIMIT
        below = min(ram, lowmem)
        above = ram - below
        above_end = 4 * GiB + above
        max_memory = getattr(vm, "max_memory", None)
        if isinstance(max_memory, int) and max_memory > ram:
            # pc_get_device_memory_range: hotplug memory from the next GiB above RAM
            # (plus 1 GiB per slot, which front ends do not report: not counted).
            hole_start = _round_up(_round_up(above_end, GiB) + max_memory - ram, GiB)
            notes.append(f"memory hotplug region up to maxmem {max_memory // MiB} MiB before the 64-bit hole")
        else:
            hole_start = _round_up(above_end, GiB)
        phys: int | None
        limit = getattr(vm, "host_phys_bits_limit", None)
        host_phys = vm.host_phys_bits and vm.accel == "kvm"  # host_cpu_realizefn: KVM (and HVF)
        if host_phys:
            # host_cpu_adjust_phys_bits: the host's width wins over phys-bits=, and the limit
            # only lowers it.
            host_bits = host_cpu_phys_bits
            if host_bits is not None:
                phys = min(host_bits, limit) if isinstance(limit, int) and limit else host_bits
                source = f"host-phys-bits: the host CPU's {host_bits} bits"
                if phys != host_bits:
                    source += f", lowered by host-phys-bits-limit={limit}"
            elif isinstance(limit, int) and limit:
                phys, source = limit, f"host-phys-bits, at most host-phys-bits-limit={limit}"
            else:
                phys, source = None, ("host-phys-bits (on by default for -cpu host and max under KVM): "
                                      "the guest takes the host CPU's width, which the inventory "
                                      "does not hold")
        elif vm.phys_bits is not None:
            phys, source = vm.phys_bits, f"phys-bits={vm.phys_bits}"
        else:
            phys, source = DEFAULT_PHYS_BITS, f"QEMU's default phys-bits ({DEFAULT_PHYS_BITS})"
        return cls(ram, below, above, hole_start, Q35_HOLE64_SIZE_DEFAULT, phys, source, tuple(notes))

    def ram_ranges(self) -> list[tuple[int, int]]:
        """Guest RAM as inclusive ``(start, last)`` ranges."""
        out = [(0, self.below_4g - 1)]
        if self.above_4g:
            out.append((4 * GiB, 4 * GiB + self.above_4g - 1))
        return out

    @property
    def hole64(self) -> tuple[int, int]:
        return self.hole64_start, self.hole64_start + self.hole64_size - 1

    @property
    def ram_last(self) -> int:
        return self.ram_ranges()[-1][1]

    def to_json(self) -> dict[str, Any]:
        return {
            "ram_size": _hex(self.ram_size),
            "ram": [[_hex(a), _hex(b)] for a, b in self.ram_ranges()],
            "pci_hole64": [_hex(self.hole64[0]), _hex(self.hole64[1])],
            "phys_bits": self.phys_bits,
            "phys_bits_source": self.phys_bits_source,
            "notes": list(self.notes),
        }


def _hex(value: int) -> str:
    return f"0x{value:x}"


def _size(value: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if value >= unit and value % unit == 0:
            return f"{value // unit} {name}"
    return f"{value} B"


# --- reports -------------------------------------------------------------------------------------


@record(frozen=True)
class DeviceReport:
    """One VFIO device: its cold-plug decision, the field comparison, and a later hotplug."""

    label: str
    host: str
    backend: str
    cold: Decision
    hotplug: Decision
    #: Field by field: ``{"field", "viommu", "host", "ok"}``.
    comparison: tuple[Mapping[str, Any], ...] = ()
    #: What makes the device fit when it (or its hotplug) is refused: property changes, or why none can.
    fix: str | None = None

    @property
    def accepted(self) -> bool:
        return self.cold.accepted

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.label,
            "host": self.host,
            "backend": self.backend,
            "accepted": self.cold.accepted,
            "code": self.cold.code,
            "message": self.cold.message,
            "comparison": [dict(row) for row in self.comparison],
            "fix": self.fix,
            "hotplug": {
                "accepted": self.hotplug.accepted,
                "code": self.hotplug.code,
                "message": self.hotplug.message,
            },
        }


def describe_host(host: HostInventory) -> dict[str, Any]:
    """Which host a report is about and how it was read."""
    m = host.machine
    return {
        "backend": host.backend,
        "reason": host.reason,
        "hostname": m.hostname,
        "product": m.product,
        "source": host.provenance.get("source"),
    }


def host_label(host: HostInventory) -> str:
    m = host.machine
    return m.hostname or m.product or host.backend


def describe_vm(vm: VMConfig) -> dict[str, Any]:
    return {
        "kind": vm.kind,
        "path": vm.path,
        "machine": vm.machine,
        "viommu": None if vm.viommu is None else str(vm.viommu),
        "devices": [d.label for d in vm.vfio],
    }


@record(frozen=True)
class CheckReport:
    """``viommu check``: will the VM start on this host, and what else will go wrong."""

    vm: Mapping[str, Any]
    host: Mapping[str, Any]
    version: QemuVersion
    policy: Policy
    devices: tuple[DeviceReport, ...]
    #: The machine-done decision (None without a vIOMMU).
    machine_done: Decision | None
    warnings: tuple[Finding, ...]
    layout: GuestLayout | None
    #: The vIOMMU's guest-visible state after start-up.
    state: Mapping[str, Any] = field(default_factory=dict)
    #: The vIOMMU actually realized (the planned one under Policy.PLAN).
    viommu: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def starts(self) -> bool:
        """Whether QEMU would start the VM: every device accepted and machine-done passed."""
        done = self.machine_done is None or self.machine_done.accepted
        fatal = any(w.fatal for w in self.warnings)
        return done and not fatal and all(d.accepted for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "starts" if self.starts else "refused",
            "qemu_version": str(self.version),
            "policy": self.policy.value,
            "vm": dict(self.vm),
            "host": dict(self.host),
            "viommu": self.viommu,
            "devices": [d.to_json() for d in self.devices],
            "machine_done": None if self.machine_done is None else {
                "accepted": self.machine_done.accepted,
                "code": self.machine_done.code,
                "message": self.machine_done.message,
            },
            "state": dict(self.state),
            "warnings": [w.to_json() for w in self.warnings],
            "layout": None if self.layout is None else self.layout.to_json(),
            "notes": list(self.notes),
        }


# --- check ---------------------------------------------------------------------------------------


def _present(vm: VMConfig, host: HostInventory) -> tuple[list[VfioDev], list[VfioDev]]:
    names = {d.name for d in host.devices}
    present = [d for d in vm.vfio if d.host in names]
    missing = [d for d in vm.vfio if d.host not in names]
    return present, missing


def _missing_decision(dev: VfioDev, host: HostInventory, event: str) -> Decision:
    return Decision(
        event, dev.label, False, HOST_DEVICE_MISSING,
        f"no assignable device {dev.host} on {host_label(host)} (see 'viommu inspect')",
        {"host": dev.host,
         "comparison": [{"field": "host device", "viommu": "-", "host": "absent", "ok": False}]},
    )


def machine_type(vm: VMConfig) -> str | None:
    """The machine type as upstream QEMU names it: Proxmox's ``q35+pve0`` is its ``q35``."""
    if vm.machine is None:
        return None
    base, pve, build = vm.machine.rpartition("+pve")
    return base if pve and build.isdecimal() else vm.machine  # \\+pve\\d+$


def _no_viommu(dev: VfioDev, event: str) -> Decision:
    return Decision(event, dev.label, True, detail={
        "host": dev.host, "note": "no vIOMMU: QEMU maps all guest RAM at IOVA = GPA, no capability check",
    })


def _hotplug_trial(
    vm: VMConfig, host: HostInventory, dev: VfioDev, others: Sequence[VfioDev], *,
    version: QemuVersion, policy: Policy,
) -> Decision:
    """A fresh machine with ``others`` cold-plugged, machine-done, then ``dev`` hotplugged."""
    assert vm.viommu is not None
    pool = [(d, host) for d in [*others, dev]]
    machine = Machine(vm.viommu, version=version, policy=policy, machine_type=machine_type(vm),
                      irqchip=vm.irqchip, pool=pool, where=vm.viommu_where or None)
    for other in others:
        machine.cold_plug(other, host)
    machine.machine_done()
    return machine.hotplug(dev, host)


def check_vm(
    vm: VMConfig,
    host: HostInventory,
    *,
    version: QemuVersion,
    policy: Policy = Policy.CHECK,
) -> CheckReport:
    """Start ``vm`` on ``host`` the way QEMU ``version`` would, device by device, and warn."""
    present, missing = _present(vm, host)
    devices: list[DeviceReport] = []
    done: Decision | None = None
    state: dict[str, Any] = {}
    realized: str | None = None
    notes: list[str] = []
    if vm.viommu is None:
        if vm.vfio:
            notes.append("no vIOMMU: the set_iommu_device checks do not apply; QEMU maps guest RAM "
                         "into every device's host IOMMU at IOVA = GPA")
        for dev in vm.vfio:
            if dev in missing:
                gone = _missing_decision(dev, host, "cold-plug")
                devices.append(DeviceReport(dev.label, dev.host, dev.backend, gone,
                                            _missing_decision(dev, host, "hotplug"),
                                            tuple(gone.detail["comparison"])))
            else:
                devices.append(DeviceReport(dev.label, dev.host, dev.backend,
                                            _no_viommu(dev, "cold-plug"), _no_viommu(dev, "hotplug")))
    else:
        pool = [(d, host) for d in present]
        machine = Machine(vm.viommu, version=version, policy=policy, machine_type=machine_type(vm),
                          irqchip=vm.irqchip, pool=pool, where=vm.viommu_where or None)
        realized = str(machine.spec)
        cold: dict[str, Decision] = {}
        for dev in vm.vfio:
            cold[dev.label] = (
                _missing_decision(dev, host, "cold-plug") if dev in missing else machine.cold_plug(dev, host)
            )
        done = machine.machine_done()
        state = machine.guest_state()
        for dev in vm.vfio:
            decision = cold[dev.label]
            if dev in missing:
                devices.append(DeviceReport(dev.label, dev.host, dev.backend, decision,
                                            _missing_decision(dev, host, "hotplug"),
                                            tuple(decision.detail["comparison"])))
                continue
            plugged = machine.devices.get(dev.label)
            if plugged is not None:
                comparison = tuple(machine.compare(plugged.hiod))
            else:
                comparison = tuple(decision.detail.get("comparison", ()))
            others = [d for d in present if d is not dev]
            hot = _hotplug_trial(vm, host, dev, others, version=version, policy=policy)
            fix = None if decision.accepted and hot.accepted else _fix(vm, vm.viommu, dev, host, version)
            devices.append(DeviceReport(dev.label, dev.host, dev.backend, decision, hot, comparison, fix))
        if machine.plan is not None:
            notes.extend(f"plan: {c.name}={c.value} ({c.reason})" for c in machine.plan.choices)
    layout, layout_notes = _layout(vm, host)
    notes.extend(layout_notes)
    warnings = _warnings(vm, host, present, layout, version=version)
    return CheckReport(
        vm=describe_vm(vm),
        host=describe_host(host),
        version=version,
        policy=policy,
        devices=tuple(devices),
        machine_done=done,
        warnings=tuple(warnings),
        layout=layout,
        state=state,
        viommu=realized,
        notes=tuple(notes),
    )


def _fix(vm: VMConfig, spec: DeviceSpec, dev: VfioDev, host: HostInventory, version: QemuVersion) -> str:
    """The property changes that make ``dev`` fit (what ``plan`` would set for it alone)."""
    from viommu.errors import Refusal

    try:
        plan = plan_properties(spec, version, [(dev, host)], machine_type=machine_type(vm),
                               irqchip=vm.irqchip)
    except Refusal as exc:
        return f"no {spec.driver} setting fits: {exc.message}"
    current = {**_viommu_model(replace(vm, viommu=spec), version).explicit(), **spec.props}
    changes = [f"{k}={v}" for k, v in plan.spec.props.items() if k != "id" and current.get(k) != v]
    if not changes:
        return "no property change helps: see QEMU's message"
    return "set " + ",".join(changes)


def _layout(vm: VMConfig, host: HostInventory) -> tuple[GuestLayout | None, list[str]]:
    from viommu.models.qdev import resolve_machine

    try:
        family: str | None = resolve_machine(machine_type(vm), _LAYOUT_VERSION).family
    except InputError:  # an unknown machine type: the vIOMMU model reports it where it matters
        family = None
    if family != "q35":
        return None, [f"guest memory map not modelled for machine {vm.machine or 'default'!r} (q35 only)"]
    layout = GuestLayout.q35(vm, host_cpu_phys_bits=host.machine.cpu_phys_bits)
    if layout.phys_bits is None:
        return layout, [f"guest phys-bits not compared with the IOMMU widths: {layout.phys_bits_source}"]
    return layout, []


#: Machine-type names are resolved against the newest profile only to learn the family.
_LAYOUT_VERSION = QemuVersion(11, 0)


def _warnings(
    vm: VMConfig, host: HostInventory, present: Sequence[VfioDev], layout: GuestLayout | None, *,
    version: QemuVersion,
) -> list[Finding]:
    out: list[Finding] = []
    out.extend(_required_properties(vm, present, version))
    if layout is not None:
        out.extend(_phys_bits_too_low(layout))
        out.extend(_width_findings(vm, host, present, layout, version))
        out.extend(_reserved_findings(vm, host, present, layout))
    out.extend(_group_findings(vm, host, present))
    for part in vm.unsupported:
        out.append(Finding(INPUT_NOT_MODELLED, f"not modelled: {part.what}", "check this part by hand",
                           values={"where": part.where}))
    return out


def _viommu_model(vm: VMConfig, version: QemuVersion) -> Any:
    from viommu.machine import create_viommu

    assert vm.viommu is not None
    return create_viommu(vm.viommu, version, machine_type=machine_type(vm), irqchip=vm.irqchip,
                         where=vm.viommu_where or None)


def _required_properties(vm: VMConfig, present: Sequence[VfioDev], version: QemuVersion) -> list[Finding]:
    if vm.viommu is None or not vm.vfio:
        return []
    model = _viommu_model(vm, version)
    resolved = {**model.explicit(), **vm.viommu.props}
    out = []
    for name, (value, why) in sorted(model.required(has_vfio=True).items()):
        current = resolved.get(name)
        if current == value:
            continue
        code = CACHING_MODE_MISSING if name == "caching-mode" else REQUIRED_PROPERTY_MISSING
        out.append(Finding(
            code,
            f"{vm.viommu.driver} has {name}={current or 'unset'} with {len(vm.vfio)} VFIO device(s): {why}",
            f"set {name}={value} on -device {vm.viommu.driver}",
            values={"property": name, "viommu": current, "required": value},
        ))
    return out


def _limits(
    vm: VMConfig, host: HostInventory, present: Sequence[VfioDev], version: QemuVersion
) -> list[tuple[str, str | None, int]]:
    """(what, device label, address width in bits) of every IOMMU the guest's DMA goes through."""
    out: list[tuple[str, str | None, int]] = []
    if vm.viommu is not None:
        from viommu.models.base import PciAddr

        view = _viommu_model(vm, version).guest_view(PciAddr(0, 3 << 3))
        out.append((f"{vm.viommu.driver} address width", None, view.width_bits))
    for dev in present:
        hiod = host_device(dev, host)
        out.append((f"host IOMMU of {dev.host}", dev.label, aw_bits_of(hiod.get_iova_ranges())))
    return out


def _width_findings(
    vm: VMConfig, host: HostInventory, present: Sequence[VfioDev], layout: GuestLayout, version: QemuVersion
) -> list[Finding]:
    out = []
    hole_start, hole_last = layout.hole64
    for what, label, bits in _limits(vm, host, present, version):
        if bits >= 64:
            continue
        top = 1 << bits
        if layout.phys_bits is not None and layout.phys_bits > bits:
            out.append(Finding(
                PHYS_BITS_EXCEED_IOMMU,
                f"guest phys-bits {layout.phys_bits} ({layout.phys_bits_source}) > {what} {bits} bits",
                f"limit the guest to phys-bits={bits} (-cpu ...,phys-bits={bits} or "
                f"host-phys-bits-limit={bits}; libvirt <maxphysaddr mode='emulate' bits='{bits}'/>)",
                device=label,
                values={"guest_phys_bits": layout.phys_bits, "iommu_bits": bits, "limit": what},
            ))
        if layout.ram_last >= top:
            out.append(Finding(
                RAM_EXCEEDS_IOMMU,
                f"guest RAM ends at {_hex(layout.ram_last)}, above the {what} limit {_hex(top - 1)}",
                "reduce guest RAM or use a host (and vIOMMU) with a wider address width",
                device=label,
                values={"ram_last": _hex(layout.ram_last), "iommu_last": _hex(top - 1), "limit": what},
            ))
        if hole_last >= top:
            out.append(Finding(
                PCI_HOLE64_EXCEEDS_IOMMU,
                f"64-bit PCI hole {_hex(hole_start)}-{_hex(hole_last)} ({_size(layout.hole64_size)}) ends "
                f"above the {what} limit {_hex(top - 1)}",
                "reduce guest RAM or -global q35-pcihost.pci-hole64-size, or use a wider host",
                device=label,
                values={"hole64": [_hex(hole_start), _hex(hole_last)], "iommu_last": _hex(top - 1),
                        "limit": what},
            ))
    return out


def _phys_bits_too_low(layout: GuestLayout) -> list[Finding]:
    """``pc_memory_init``: ``pc_max_used_gpa`` (the 64-bit hole's last byte) must fit phys-bits."""
    if layout.phys_bits is None or layout.phys_bits <= 32:
        return []
    max_used = layout.hole64[1]
    max_phys = (1 << layout.phys_bits) - 1
    if max_phys >= max_used:
        return []
    need = max_used.bit_length()
    return [Finding(
        PHYS_BITS_TOO_LOW,
        f"Address space limit 0x{max_phys:x} < 0x{max_used:x} phys-bits too low ({layout.phys_bits})",
        f"give the guest phys-bits={need} or more (-cpu ...,phys-bits={need}), or less RAM",
        values={"phys_bits": layout.phys_bits, "max_used_gpa": _hex(max_used), "needed_bits": need},
        fatal=True,
    )]


def _reserved_findings(
    vm: VMConfig, host: HostInventory, present: Sequence[VfioDev], layout: GuestLayout
) -> list[Finding]:
    out = []
    spans = [("guest RAM", a, b) for a, b in layout.ram_ranges()]
    spans.append(("64-bit PCI hole", *layout.hole64))
    for dev in present:
        caps = host.device(dev.host).caps
        for region in caps.reserved_regions:
            if region.type not in _BLOCKING:
                continue
            for what, start, last in spans:
                if start <= region.last and region.start <= last:
                    ht = region.start == AMD_HT_START and region.last == AMD_HT_END
                    caveat = ""
                    if ht and _relocates(vm):
                        caveat = (" (unless the guest CPU model is AMD: QEMU then moves RAM above 4 GiB "
                                  "to 1 TiB; the VM description does not say which CPU vendor it has)")
                    out.append(Finding(
                        RAM_OVERLAPS_RESERVED,
                        f"{what} {_hex(start)}-{_hex(last)} overlaps host reserved region "
                        f"{_hex(region.start)}-{_hex(region.last)} ({region.type.value}) of {dev.host}"
                        + caveat,
                        _reserved_fix(region.start, region.last, what),
                        device=dev.label,
                        values={"guest": [_hex(start), _hex(last)], "what": what,
                                "reserved": [_hex(region.start), _hex(region.last)],
                                "type": region.type.value},
                    ))
    return out


#: The AMD HyperTransport window (``AMD_HT_START``/``AMD_HT_END`` in hw/i386/pc.c).
AMD_HT_START, AMD_HT_END = 0xFD_0000_0000, 0xFF_FFFF_FFFF


def _relocates(vm: VMConfig) -> bool:
    """Whether ``pc_memory_init`` would move RAM to 1 TiB for an AMD guest CPU: machine types
    7.1 and later (``enforce_amd_1tb_hole``, off for pc-q35-7.0 and older)."""
    from viommu.models.qdev import resolve_machine

    try:
        version = resolve_machine(machine_type(vm), _LAYOUT_VERSION).version
    except InputError:
        return True
    return version is None or version[:2] >= (7, 1)


def _reserved_fix(start: int, last: int, what: str) -> str:
    if start == AMD_HT_START and last == AMD_HT_END:
        return ("AMD HyperTransport hole: use an AMD guest CPU model on machine type >= 7.1 with phys-bits "
                "> 40 (QEMU then starts RAM above 4 GiB at 1 TiB), or keep RAM plus the 64-bit hole below "
                "0xfd00000000")
    return f"keep {what} clear of {_hex(start)}-{_hex(last)} (less RAM, or a device without this region)"


def _group_findings(vm: VMConfig, host: HostInventory, present: Sequence[VfioDev]) -> list[Finding]:
    out = []
    assigned = {d.host for d in vm.vfio}
    endpoints = {d.name for d in host.devices}
    seen: set[int] = set()
    for dev in present:
        number = host.device(dev.host).caps.group
        if number is None or number in seen:
            continue
        seen.add(number)
        group = next((g for g in host.groups if g.number == number), None)
        if group is None:
            continue
        left = [m for m in group.devices if m in endpoints and m not in assigned]
        if not left:
            continue
        drivers = {m: (host.pci[m].driver if m in host.pci else None) for m in left}
        held = [m for m, drv in drivers.items() if drv not in (None, "vfio-pci", "pci-stub")]
        if held:
            state = "not viable: " + ", ".join(f"{m} is bound to {drivers[m]}" for m in held)
        else:
            state = "viable, but the other members cannot go to another VM"
        out.append(Finding(
            GROUP_PARTIALLY_ASSIGNED,
            f"IOMMU group {number} of {dev.host} also holds {', '.join(left)}, "
            f"not assigned to this VM ({state})",
            f"assign {', '.join(left)} too, or bind them to vfio-pci and leave them unused",
            device=dev.label,
            values={"group": number, "members": list(group.devices), "unassigned": left,
                    "drivers": drivers},
        ))
    if vm.viommu is not None:
        out.extend(_split_groups(vm, host, present))
    return out


def _split_groups(vm: VMConfig, host: HostInventory, present: Sequence[VfioDev]) -> list[Finding]:
    topo = Topology()
    spaces: dict[int, dict[str, list[str]]] = {}
    for dev in present:
        addr, alias = topo.place(dev)
        number = host.device(dev.host).caps.group
        if number is None:
            continue
        spaces.setdefault(number, {}).setdefault(str(alias or addr), []).append(dev.label)
    out = []
    for number, by_space in sorted(spaces.items()):
        if len(by_space) < 2:
            continue
        out.append(Finding(
            GROUP_SPLIT_ADDRESS_SPACES,
            f"host IOMMU group {number} is split over {len(by_space)} guest address spaces: "
            + "; ".join(f"{space}: {', '.join(labels)}" for space, labels in sorted(by_space.items())),
            "plug the group's devices behind one pcie-pci-bridge (same requester ID)",
            values={"group": number, "address_spaces": {k: v for k, v in sorted(by_space.items())}},
        ))
    return out


# --- plan ----------------------------------------------------------------------------------------


@record(frozen=True)
class PlanReport:
    """``viommu plan``: the explicit vIOMMU that fits every host, or why none does."""

    vm: Mapping[str, Any]
    hosts: tuple[Mapping[str, Any], ...]
    version: QemuVersion
    plan: Plan | None
    #: The refusal (code, message) when no configuration fits.
    code: str | None = None
    message: str | None = None
    #: Per host, the check of the planned VM (None when there is no plan).
    checks: tuple[CheckReport, ...] = ()

    @property
    def fits(self) -> bool:
        return self.plan is not None and all(c.starts for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "fits" if self.fits else "no-fitting-plan",
            "qemu_version": str(self.version),
            "vm": dict(self.vm),
            "hosts": [dict(h) for h in self.hosts],
            "viommu": None if self.plan is None else str(self.plan.spec),
            "choices": [] if self.plan is None else [c.to_json() for c in self.plan.choices],
            "code": self.code,
            "message": self.message,
            "checks": [
                {"host": c.host, "verdict": "starts" if c.starts else "refused",
                 "warnings": [w.to_json() for w in c.warnings]}
                for c in self.checks
            ],
        }


def plan_vm(vm: VMConfig, hosts: Sequence[HostInventory], *, version: QemuVersion) -> PlanReport:
    """Explicit vIOMMU properties fitting every host in ``hosts`` and the VM's devices (maximal,
    per :func:`viommu.machine.plan_properties`), then the check of the planned VM on each host."""
    from viommu.errors import Refusal
    from viommu.machine import NO_FITTING_PLAN

    described = tuple(describe_host(h) for h in hosts)
    if vm.viommu is None:
        return PlanReport(describe_vm(vm), described, version, None, NO_FITTING_PLAN,
                          "the VM has no vIOMMU to plan (add -device intel-iommu or <iommu>)")
    pool: list[tuple[VfioDev, HostInventory]] = []
    for host in hosts:
        present, missing = _present(vm, host)
        if missing:
            bad = _missing_decision(missing[0], host, "plan")
            return PlanReport(describe_vm(vm), described, version, None, bad.code, bad.message)
        pool.extend((d, host) for d in present)
    try:
        plan = plan_properties(vm.viommu, version, pool, machine_type=machine_type(vm), irqchip=vm.irqchip)
    except Refusal as exc:
        return PlanReport(describe_vm(vm), described, version, None, exc.code, exc.message)
    planned = _with_viommu(vm, plan.spec)
    checks = tuple(check_vm(planned, h, version=version) for h in hosts)
    failed = next((c for c in checks if not c.starts), None)
    if failed is not None:
        first = next((d.cold for d in failed.devices if not d.accepted), failed.machine_done)
        where = failed.host.get("hostname") or failed.host.get("product") or failed.host.get("backend")
        why = first.message if first is not None else "refused"
        return PlanReport(describe_vm(vm), described, version, plan, NO_FITTING_PLAN,
                          f"the planned {plan.spec} is refused on {where}: {why}", checks)
    return PlanReport(describe_vm(vm), described, version, plan, checks=checks)


def _with_viommu(vm: VMConfig, spec: DeviceSpec) -> VMConfig:
    return replace(vm, viommu=spec)


# --- migrate -------------------------------------------------------------------------------------


@record(frozen=True)
class MigrateReport:
    """``viommu migrate-check``: the source start-up, then the migration decision."""

    vm: Mapping[str, Any]
    source: Mapping[str, Any]
    dest: Mapping[str, Any]
    version: QemuVersion
    dest_version: QemuVersion
    source_check: CheckReport
    decision: Decision | None

    @property
    def migrates(self) -> bool:
        return self.source_check.starts and self.decision is not None and self.decision.accepted

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "verdict": "migrates" if self.migrates else "refused",
            "qemu_version": str(self.version),
            "dest_qemu_version": str(self.dest_version),
            "vm": dict(self.vm),
            "source": dict(self.source),
            "destination": dict(self.dest),
            "source_starts": self.source_check.starts,
            "code": None if d is None else d.code,
            "message": None if d is None else d.message,
            "detail": {} if d is None else dict(d.detail),
            "source_state": dict(self.source_check.state),
        }


def migrate_vm(
    vm: VMConfig,
    source: HostInventory,
    dest: HostInventory,
    *,
    version: QemuVersion,
    dest_version: QemuVersion | None = None,
) -> MigrateReport:
    """Start ``vm`` on ``source`` and migrate it to ``dest``: would the guest-visible vIOMMU state be
    identical, and do the destination's devices fit the vIOMMU the guest already sees?"""
    target = dest_version or version
    source_check = check_vm(vm, source, version=version)
    decision: Decision | None = None
    if source_check.starts and vm.viommu is not None:
        present, _ = _present(vm, source)
        machine = Machine(vm.viommu, version=version, machine_type=machine_type(vm), irqchip=vm.irqchip,
                          where=vm.viommu_where or None)
        for dev in present:
            machine.cold_plug(dev, source)
        machine.machine_done()
        decision = machine.migrate(dest, version=target)
    elif source_check.starts:
        _, missing = _present(vm, dest)
        if missing:
            from viommu.machine import MIGRATION_DEVICE_MISSING

            why = _missing_decision(missing[0], dest, "migrate").message
            decision = Decision("migrate", host_label(dest), False, MIGRATION_DEVICE_MISSING,
                                f"{missing[0].label}: {why}")
        else:
            decision = Decision("migrate", host_label(dest), True,
                                detail={"note": "no vIOMMU: no guest-visible vIOMMU state to compare"})
    return MigrateReport(describe_vm(vm), describe_host(source), describe_host(dest), version, target,
                         source_check, decision)
