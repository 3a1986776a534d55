"""Scenario files: a VM, its hosts, its devices and a list of events, in TOML.

::

    [vm]
    viommu = "intel-iommu,aw-bits=48,caching-mode=on"   # a QEMU -device string
    policy = "check"                                    # check | sync | plan | none
    qemu = "10.0"                                       # QEMU version profile
    machine = "q35"                                     # optional machine type

    [hosts.laptop]                                      # one table per host
    profile = "intel-cometlake-u-xps13-7390"            # a bundled profile, or
    # snapshot = "host.json"                            # a snapshot, relative to this file

    [[devices]]
    id = "nic0"
    host = "laptop"            # the host key; optional when there is one host
    bdf = "0000:02:00.0"       # the host PCI address
    backend = "legacy"         # legacy (VFIO container) | iommufd
    plug = "cold"              # cold | hot (hot devices are hotplugged after machine-done)
    bus = "rp1"                # optional guest bus, addr = "04.0" optional guest slot
    behind_pci_bridge = false  # optional: behind a PCIe-to-PCI bridge in the guest

    [[events]]
    do = "dma-map"             # hotplug | unplug | reset | dma-map | dma-unmap | migrate
    device = "nic0"
    iova = 0x8000000000
    size = 0x1000
    page_size = "4K"

    [[events]]
    do = "migrate"
    host = "narrow"            # a host key; qemu = "10.2" optional destination version

Events run after realize, the cold plugs and machine-done. A hot device that
no ``hotplug`` event names is hotplugged right after machine-done. A refused
cold plug (or machine-done) ends the run the way QEMU exits at start-up: the
remaining events are reported as not run.

Errors name the file, the line and the key (``FILE:LINE: events[1].iova: ...``)
and exit 2.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from viommu.errors import InputError
from viommu.host.inventory import HostInventory
from viommu.machine import Decision, Machine, Policy
from viommu.models.base import DEFAULT_QEMU_VERSION, DeviceSpec, QemuVersion
from viommu.record import field, record, replace
from viommu.vm import IOMMUFD, LEGACY, VfioDev, VMConfig

EVENTS = ("hotplug", "unplug", "reset", "dma-map", "dma-unmap", "migrate")

_TOP_KEYS = {"vm", "hosts", "devices", "events"}
_VM_KEYS = {"viommu", "policy", "qemu", "machine"}
_HOST_KEYS = {"profile", "snapshot"}
_DEVICE_KEYS = {"id", "host", "bdf", "backend", "plug", "bus", "addr", "behind_pci_bridge", "iommufd"}
_EVENT_KEYS: dict[str, set[str]] = {
    "hotplug": {"device"},
    "unplug": {"device"},
    "reset": set(),
    "dma-map": {"device", "iova", "size", "page_size"},
    "dma-unmap": {"device", "iova", "size"},
    "migrate": {"host", "qemu", "devices"},
}
_BDF = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
_SIZE = re.compile(r"(0x[0-9a-fA-F]+|\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


@record(frozen=True)
class Event:
    do: str
    args: Mapping[str, Any]
    where: str


@record(frozen=True)
class Scenario:
    path: str
    vm: VMConfig
    policy: Policy
    version: QemuVersion
    hosts: Mapping[str, HostInventory]
    #: device id -> host key
    device_hosts: Mapping[str, str]
    events: tuple[Event, ...] = field(default=())


class _Locator:
    """Line numbers for TOML keys (tomllib keeps none): tables, array-of-table entries, keys."""

    _ARRAY = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\"-]+)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"-]+)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines: dict[tuple[str, str | None], int] = {}
        counters: dict[str, int] = {}
        current = ""
        for number, line in enumerate(text.splitlines(), 1):
            if m := self._ARRAY.match(line):
                name = m.group(1).replace('"', "")
                index = counters.get(name, -1) + 1
                counters[name] = index
                current = f"{name}[{index}]"
            elif m := self._TABLE.match(line):
                current = m.group(1).replace('"', "")
            elif m := self._KEY.match(line):
                self.lines.setdefault((current, m.group(1)), number)
                continue
            else:
                continue
            self.lines.setdefault((current, None), number)

    def at(self, table: str, key: str | None = None) -> str:
        line = self.lines.get((table, key)) or self.lines.get((table, None))
        name = f"{table}.{key}" if key and table else (key or table)
        return f"{self.path}:{line}: {name}" if line else f"{self.path}: {name}"


def parse_size(value: Any, *, where: str) -> int:
    """An integer, or a string like ``4K``, ``2M``, ``0x1000``."""
    if isinstance(value, bool):
        raise InputError(f"expected a size, got {value!r}", where=where)
    if isinstance(value, int):
        if value < 0:
            raise InputError(f"expected a non-negative size, got {value}", where=where)
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(m.group(1), 0) << _SHIFT[m.group(2).upper()]
    raise InputError(f"expected a size like 4096, 0x1000 or 4K, got {value!r}", where=where)


def normalize_bdf(text: Any, *, where: str) -> str:
    if not isinstance(text, str) or not (m := _BDF.fullmatch(text.strip())):
        raise InputError(f"expected a PCI address like 0000:01:00.0, got {text!r}", where=where)
    domain = m.group(1) or "0000"
    return f"{domain}:{m.group(2)}:{m.group(3)}.{m.group(4)}".lower()


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError("expected a table", where=where)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {value!r}", where=where)
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], loc: _Locator, name: str) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InputError(f"unknown key (known: {known})", where=loc.at(name, key))


def _load_host(key: str, raw: Any, base: Path, loc: _Locator) -> HostInventory:
    name = f"hosts.{key}"
    table = _table(raw, loc.at(name))
    _unknown(table, _HOST_KEYS, loc, name)
    if len(table) != 1:
        raise InputError("a host needs exactly one of profile = NAME or snapshot = FILE", where=loc.at(name))
    try:
        if "profile" in table:
            from viommu.host.profiles import load_profile

            return load_profile(_string(table["profile"], loc.at(name, "profile")))
        from viommu.host.discover import discover

        target = base / _string(table["snapshot"], loc.at(name, "snapshot"))
        return discover(root=target)
    except InputError as exc:
        which = "profile" if "profile" in table else "snapshot"
        raise InputError(exc.message if not exc.where else str(exc), where=loc.at(name, which)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario; every problem is one InputError naming file, line and key."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read scenario: {exc.strerror or exc}", where=str(file)) from None
    except UnicodeDecodeError:
        raise InputError("cannot read scenario: not UTF-8 text", where=str(file)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line N, column M)": keep it, it is the location.
        raise InputError(f"not valid TOML: {exc}", where=str(file)) from None
    loc = _Locator(str(file), text)
    _unknown(data, _TOP_KEYS, loc, "")
    vm = _table(data.get("vm"), f"{file}: vm") if "vm" in data else None
    if vm is None:
        raise InputError('a scenario needs a [vm] table with viommu = "-device string"', where=str(file))
    _unknown(vm, _VM_KEYS, loc, "vm")
    if "viommu" not in vm:
        raise InputError("missing key viommu (a QEMU -device string)", where=loc.at("vm"))
    spec = DeviceSpec.parse(_string(vm["viommu"], loc.at("vm", "viommu")), where=loc.at("vm", "viommu"))
    policy = Policy.parse(
        _string(vm.get("policy", "check"), loc.at("vm", "policy")), where=loc.at("vm", "policy")
    )
    version = (
        QemuVersion.parse(_string(vm["qemu"], loc.at("vm", "qemu")), where=loc.at("vm", "qemu"))
        if "qemu" in vm
        else DEFAULT_QEMU_VERSION
    )
    machine = _string(vm["machine"], loc.at("vm", "machine")) if "machine" in vm else None

    hosts_raw = _table(data.get("hosts", {}), loc.at("hosts"))
    if not hosts_raw:
        raise InputError("a scenario needs at least one [hosts.NAME] table", where=str(file))
    hosts = {key: _load_host(key, raw, file.parent, loc) for key, raw in hosts_raw.items()}

    devices: list[VfioDev] = []
    device_hosts: dict[str, str] = {}
    raw_devices = data.get("devices", [])
    if not isinstance(raw_devices, list):
        raise InputError("expected [[devices]] entries", where=loc.at("devices"))
    for i, raw in enumerate(raw_devices):
        name = f"devices[{i}]"
        dev = _table(raw, loc.at(name))
        _unknown(dev, _DEVICE_KEYS, loc, name)
        for key in ("id", "bdf"):
            if key not in dev:
                raise InputError(f"missing key {key}", where=loc.at(name))
        ident = _string(dev["id"], loc.at(name, "id"))
        if ident in device_hosts:
            raise InputError(f"device id {ident!r} is used twice", where=loc.at(name, "id"))
        if "host" in dev:
            host_key = _string(dev["host"], loc.at(name, "host"))
            if host_key not in hosts:
                raise InputError(
                    f"no host {host_key!r} (hosts: {', '.join(hosts)})", where=loc.at(name, "host")
                )
        elif len(hosts) == 1:
            host_key = next(iter(hosts))
        else:
            raise InputError("several hosts are defined: say which with host = NAME", where=loc.at(name))
        bdf = normalize_bdf(dev["bdf"], where=loc.at(name, "bdf"))
        try:
            hosts[host_key].device(bdf)
        except InputError as exc:
            raise InputError(exc.message, where=loc.at(name, "bdf")) from None
        backend = _string(dev.get("backend", LEGACY), loc.at(name, "backend"))
        if backend not in (LEGACY, IOMMUFD):
            raise InputError(
                f"backend must be {LEGACY} or {IOMMUFD}, not {backend!r}", where=loc.at(name, "backend")
            )
        plug = _string(dev.get("plug", "cold"), loc.at(name, "plug"))
        if plug not in ("cold", "hot"):
            raise InputError(f"plug must be cold or hot, not {plug!r}", where=loc.at(name, "plug"))
        bridge = dev.get("behind_pci_bridge", False)
        if not isinstance(bridge, bool):
            raise InputError(
                f"expected true or false, got {bridge!r}", where=loc.at(name, "behind_pci_bridge")
            )
        iommufd = None
        if backend == IOMMUFD:
            iommufd = _string(dev.get("iommufd", "iommufd0"), loc.at(name, "iommufd"))
        elif "iommufd" in dev:
            raise InputError('iommufd = ID needs backend = "iommufd"', where=loc.at(name, "iommufd"))
        devices.append(
            VfioDev(
                host=bdf,
                id=ident,
                iommufd=iommufd,
                bus=_string(dev["bus"], loc.at(name, "bus")) if "bus" in dev else None,
                addr=_string(dev["addr"], loc.at(name, "addr")) if "addr" in dev else None,
                behind_pci_bridge=bridge,
                hotplug=plug == "hot",
                where=loc.at(name),
            )
        )
        device_hosts[ident] = host_key

    events: list[Event] = []
    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        raise InputError("expected [[events]] entries", where=loc.at("events"))
    for i, raw in enumerate(raw_events):
        events.append(_event(i, raw, loc, hosts, device_hosts))

    iommufd_ids = tuple(sorted({d.iommufd for d in devices if d.iommufd is not None}))
    config = VMConfig(
        kind="scenario",
        path=str(file),
        machine=machine,
        viommu=spec,
        viommu_where=loc.at("vm", "viommu"),
        vfio=tuple(devices),
        iommufd_objects=iommufd_ids,
    )
    return Scenario(str(file), config, policy, version, hosts, device_hosts, tuple(events))


def _event(
    i: int, raw: Any, loc: _Locator, hosts: Mapping[str, HostInventory], device_hosts: Mapping[str, str]
) -> Event:
    name = f"events[{i}]"
    ev = _table(raw, loc.at(name))
    if "do" not in ev:
        raise InputError(f"missing key do ({' | '.join(EVENTS)})", where=loc.at(name))
    do = _string(ev["do"], loc.at(name, "do"))
    if do not in _EVENT_KEYS:
        raise InputError(f"unknown event {do!r} (known: {', '.join(EVENTS)})", where=loc.at(name, "do"))
    _unknown(ev, _EVENT_KEYS[do] | {"do"}, loc, name)
    args: dict[str, Any] = {}
    if "device" in _EVENT_KEYS[do]:
        if "device" not in ev:
            raise InputError("missing key device", where=loc.at(name))
        device = _string(ev["device"], loc.at(name, "device"))
        if device not in device_hosts:
            known = ", ".join(device_hosts) or "none"
            raise InputError(f"no device {device!r} (devices: {known})", where=loc.at(name, "device"))
        args["device"] = device
    if do in ("dma-map", "dma-unmap"):
        for key in ("iova", "size"):
            if key not in ev:
                raise InputError(f"missing key {key}", where=loc.at(name))
            args[key] = parse_size(ev[key], where=loc.at(name, key))
        if do == "dma-map":
            args["page_size"] = parse_size(ev.get("page_size", 4096), where=loc.at(name, "page_size"))
    if do == "migrate":
        if "host" not in ev:
            raise InputError("missing key host", where=loc.at(name))
        host = _string(ev["host"], loc.at(name, "host"))
        if host not in hosts:
            raise InputError(f"no host {host!r} (hosts: {', '.join(hosts)})", where=loc.at(name, "host"))
        args["host"] = host
        if "qemu" in ev:
            where = loc.at(name, "qemu")
            args["qemu"] = QemuVersion.parse(_string(ev["qemu"], where), where=where)
        if "devices" in ev:
            mapping = _table(ev["devices"], loc.at(name, "devices"))
            args["devices"] = {
                _string(k, loc.at(name, "devices")): normalize_bdf(v, where=loc.at(name, "devices"))
                for k, v in mapping.items()
            }
    return Event(do, args, loc.at(name))


@record
class Simulation:
    """The outcome of running a scenario: the trace and whether the VM ever started."""

    scenario: Scenario
    trace: list[Decision]
    started: bool
    not_run: list[Event]
    machine: Machine

    @property
    def refused(self) -> bool:
        """A device, machine-done, migration or host mapping was refused (exit 1)."""
        return any(not d.accepted and d.code != "guest-map-illegal" for d in self.trace)

    def to_json(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "scenario": s.path,
            "viommu": str(s.vm.viommu),
            "effective_viommu": str(self.machine.spec),
            "policy": s.policy.value,
            "qemu": str(s.version),
            "started": self.started,
            "trace": [d.to_json() for d in self.trace],
            "not_run": [{"event": e.do, "where": e.where} for e in self.not_run],
        }


def simulate(scenario: Scenario) -> Simulation:
    """Run realize, cold plugs, machine-done, then the events, as QEMU would."""
    vm = scenario.vm
    assert vm.viommu is not None

    def host_of(dev: VfioDev) -> HostInventory:
        return scenario.hosts[scenario.device_hosts[dev.label]]

    by_id = {d.label: d for d in vm.vfio}
    cold = [d for d in vm.vfio if not d.hotplug]
    machine = Machine(
        vm.viommu,
        version=scenario.version,
        policy=scenario.policy,
        machine_type=vm.machine,
        pool=_pool(scenario),
        where=vm.viommu_where,
    )
    for dev in cold:
        if not machine.cold_plug(dev, host_of(dev)).accepted:
            # vfio-pci realize failed: QEMU exits before machine-done, nothing else runs.
            return Simulation(scenario, list(machine.trace), False, list(scenario.events), machine)
    if not machine.machine_done().accepted:
        return Simulation(scenario, list(machine.trace), False, list(scenario.events), machine)
    explicit = {e.args["device"] for e in scenario.events if e.do == "hotplug"}
    for dev in vm.vfio:
        if dev.hotplug and dev.label not in explicit:
            machine.hotplug(dev, host_of(dev))
    for event in scenario.events:
        args = event.args
        if event.do == "hotplug":
            machine.hotplug(by_id[args["device"]], host_of(by_id[args["device"]]))
        elif event.do == "unplug":
            machine.unplug(args["device"])
        elif event.do == "reset":
            machine.reset()
        elif event.do == "dma-map":
            machine.dma_map(args["device"], args["iova"], args["size"], args["page_size"])
        elif event.do == "dma-unmap":
            machine.dma_unmap(args["device"], args["iova"], args["size"])
        elif event.do == "migrate":
            decision = machine.migrate(
                scenario.hosts[args["host"]], version=args.get("qemu"), devices=args.get("devices"),
                name=args["host"],
            )
            if decision.accepted and machine.destination is not None:
                # The VM now runs on the destination: later events happen there.
                dest = machine.destination
                dest.trace = list(machine.trace)
                machine = dest
                scenario = _moved(scenario, args["host"], args.get("devices") or {})
    return Simulation(scenario, list(machine.trace), True, [], machine)


def _pool(scenario: Scenario) -> list[tuple[VfioDev, HostInventory]]:
    """Under plan, every device must fit its own host and every migration target."""
    pool = [(d, scenario.hosts[scenario.device_hosts[d.label]]) for d in scenario.vm.vfio]
    for event in scenario.events:
        if event.do == "migrate":
            moved = event.args.get("devices") or {}
            dest = scenario.hosts[event.args["host"]]
            pool += [(replace(d, host=moved.get(d.label, d.host)), dest) for d in scenario.vm.vfio]
    return pool


def _moved(scenario: Scenario, host: str, devices: Mapping[str, str]) -> Scenario:
    vfio = tuple(replace(d, host=devices.get(d.label, d.host)) for d in scenario.vm.vfio)
    return replace(
        scenario, vm=replace(scenario.vm, vfio=vfio), device_hosts={k: host for k in scenario.device_hosts}
    )
