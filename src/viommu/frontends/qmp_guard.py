"""The fail-closed QMP hotplug guard: check a VFIO hotplug against a running VM, then send it.

:class:`QmpGuard` talks to a running QEMU over its QMP socket (``qemu.qmp``,
every command under a timeout) and

1. reads the VM (:meth:`QmpGuard.read_vm`): the QEMU version
   (``query-version``), the machine type (``qom-get /machine type``), the
   vIOMMU (the ``-device`` children of ``/machine/peripheral`` and
   ``/machine/peripheral-anon``, where QEMU puts a device given with and
   without ``id=``; ``qom-get`` of every property the model's schema has),
   every device already plugged (their ids; for ``vfio-pci`` also ``host``,
   ``iommufd``, ``parent_bus`` and ``addr``), the ids ``query-pci`` reports and
   the ``iommufd`` objects under ``/objects``;
2. decides (:func:`decide`): a :class:`~viommu.machine.Machine` built from
   the explicit property values read, with the existing VFIO devices
   cold-plugged, frozen at machine-done, then ``hotplug`` of the new device
   checked against the host inventory; the refusals QEMU's ``device_add``
   makes before realize (duplicate id, missing iommufd object, host device
   already attached) are checked in QEMU 10.0's order;
3. only when the device is accepted, re-reads ``/machine/peripheral`` (QEMU
   still answers, the id is still free) and sends ``device_add``.

It fails closed: an unreachable or non-QMP socket, a timeout, a disconnect, a
property that cannot be read, a vIOMMU that is missing or not modelled all
raise :class:`QmpError` (exit 2) before anything is sent. Every state-changing
command is recorded in :attr:`QmpGuard.sent` as it goes out, so callers can
assert that nothing was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from viommu.errors import InputError
from viommu.host.pci import check_bdf
from viommu.machine import DEVICE_EXISTS, Decision, Machine, Policy
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.reasons import register
from viommu.record import field, record, replace
from viommu.vm import VfioDev

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

    from viommu.host.inventory import HostInventory

#: Seconds each QMP exchange (connect and greeting, every command) may take.
DEFAULT_TIMEOUT_S = 5.0
#: Where QEMU puts ``-device`` / ``device_add`` devices: with an id, and without.
PERIPHERAL = "/machine/peripheral"
PERIPHERAL_ANON = "/machine/peripheral-anon"
#: Device types that are vIOMMUs (the guard refuses to guess with one it does not model).
VIOMMU_TYPES = ("intel-iommu", "virtio-iommu-pci", "amd-iommu", "arm-smmuv3")
VFIO_TYPES = frozenset({"vfio-pci"})
#: virtio-iommu-pci's properties the model's guest-visible state depends on.
VIRTIO_PROPERTIES = ("aw-bits", "boot-bypass", "granule")

# --- reason codes ------------------------------------------------------------------------------

QMP_UNREACHABLE = register(
    "qmp-unreachable",
    "The QMP socket could not be opened: the path does not exist, is not a unix socket, or nothing "
    "listens on it (QEMU needs -qmp unix:PATH,server=on,wait=off). Nothing was sent.",
)
QMP_NOT_QMP = register(
    "qmp-not-qmp",
    "Something answered on the socket, but not with a QMP greeting (an HMP monitor, a serial "
    "console, another program). Nothing was sent.",
)
QMP_TIMEOUT = register(
    "qmp-timeout",
    "QEMU did not answer within the timeout: no greeting (the socket is not QMP, another client "
    "holds QEMU's only QMP connection, or QEMU is stuck) or no reply to a command. The guard does "
    "not guess: nothing was sent.",
)
QMP_DISCONNECTED = register(
    "qmp-disconnected",
    "The QMP connection closed before the guard had read and checked everything (QEMU exited or "
    "was killed). Nothing was sent.",
)
QMP_COMMAND_FAILED = register(
    "qmp-command-failed",
    "A read-only QMP query the guard needs returned an error, so the VM's state is unknown. "
    "Nothing was sent.",
)
VIOMMU_PROPERTY_UNREADABLE = register(
    "viommu-property-unreadable",
    "A vIOMMU property the model needs could not be read with qom-get (a QEMU build without it, "
    "or a value of an unexpected type): the guard cannot tell what the guest sees, so it refuses "
    "to send anything.",
)
VIOMMU_NOT_FOUND = register(
    "viommu-not-found",
    "The VM has no vIOMMU (or more than one) among its -device children, so there is nothing "
    "definite to check the host device against. Nothing was sent.",
)
VIOMMU_NOT_MODELLED = register(
    "viommu-not-modelled",
    "The VM's vIOMMU type, QEMU version or configuration is not modelled here, so the hotplug "
    "cannot be checked. Nothing was sent.",
)
IOMMUFD_OBJECT_MISSING = register(
    "iommufd-object-missing",
    "--iommufd names no 'iommufd' object under /objects of the VM (create it first with "
    "object-add qom-type=iommufd,id=ID). QEMU's device_add fails with \"Device 'ID' not found\".",
)
HOST_DEVICE_IN_USE = register(
    "host-device-in-use",
    "A vfio-pci device of the VM already uses this host device; QEMU refuses a second one "
    "(legacy VFIO: \"device is already attached\").",
)
DEVICE_ADD_FAILED = register(
    "device-add-failed",
    "The checks passed and device_add was sent, but QEMU refused it; the message is QEMU's.",
)
DEVICE_ADD_UNCONFIRMED = register(
    "device-add-unconfirmed",
    "device_add was sent but the connection closed (or timed out) before QEMU replied: whether "
    "the device was added is unknown; look with query-pci / qom-list.",
)


class QmpError(InputError):
    """The VM could not be read or reached over QMP: exit 2, one line, nothing sent (unless
    ``code`` is ``device-add-unconfirmed``)."""

    def __init__(self, code: str, message: str, *, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.code = code


# --- what the guard reads ------------------------------------------------------------------------


@record(frozen=True)
class PluggedDevice:
    """A device the VM already has (a child of /machine/peripheral or peripheral-anon)."""

    path: str
    type: str
    #: The qdev id (None for peripheral-anon).
    id: str | None
    #: vfio-pci only: host BDF, iommufd object id, guest bus id and devfn.
    host: str | None = None
    iommufd: str | None = None
    bus: str | None = None
    devfn: int | None = None

    def vfio_dev(self) -> VfioDev:
        addr = None
        if self.devfn is not None and self.devfn >= 0:
            addr = f"{self.devfn >> 3:02x}.{self.devfn & 7}"
        assert self.host is not None
        return VfioDev(host=self.host, id=self.id, iommufd=self.iommufd, bus=self.bus, addr=addr,
                       where=self.path)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "id": self.id, "host": self.host,
                "iommufd": self.iommufd, "bus": self.bus, "devfn": self.devfn}


@record(frozen=True)
class VMState:
    """What the guard read from the running VM."""

    qemu_version: QemuVersion
    qemu_package: str
    machine_type: str
    viommu_path: str
    #: The vIOMMU with every modelled property explicit, as read back.
    viommu: DeviceSpec
    devices: tuple[PluggedDevice, ...]
    #: qdev ids ``query-pci`` reports (devices behind bridges the firmware has not numbered
    #: yet are missing there; the QOM children above are complete).
    pci_ids: frozenset[str]
    iommufd_objects: tuple[str, ...]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(d.id for d in self.devices if d.id) | self.pci_ids

    @property
    def vfio(self) -> tuple[PluggedDevice, ...]:
        return tuple(d for d in self.devices if d.type in VFIO_TYPES)

    def to_json(self) -> dict[str, Any]:
        return {
            "qemu_version": str(self.qemu_version),
            "qemu_package": self.qemu_package,
            "machine_type": self.machine_type,
            "viommu_path": self.viommu_path,
            "viommu": str(self.viommu),
            "devices": [d.to_json() for d in self.devices],
            "iommufd_objects": list(self.iommufd_objects),
        }


@record(frozen=True)
class HotplugRequest:
    """The device to hotplug: ``device_add driver=vfio-pci,host=BDF[,id=ID][,bus=BUS][,iommufd=ID]``."""

    host: str
    id: str | None = None
    iommufd: str | None = None
    bus: str | None = None
    #: TEST-ONLY stand-in. This machine has no VFIO device, so the tests check the real
    #: host device (from a profile) against the real VM's vIOMMU as usual, and then send
    #: ``device_add driver=<driver_override>,id=ID,bus=BUS`` (e.g. ``edu``) instead of
    #: vfio-pci, to show that an accepted hotplug really reaches QEMU. Nothing that a
    #: VFIO device would do in QEMU (attach, set_iommu_device) happens for the stand-in.
    driver_override: str | None = None

    def device_add_args(self) -> dict[str, str]:
        if self.driver_override is not None:
            args = {"driver": self.driver_override}
        else:
            args = {"driver": "vfio-pci", "host": self.host}
        for key, value in (("id", self.id), ("bus", self.bus)):
            if value is not None:
                args[key] = value
        if self.iommufd is not None and self.driver_override is None:
            args["iommufd"] = self.iommufd
        return args


@record
class GuardResult:
    """The decision, what was (or would have been) sent, and QEMU's reply."""

    vm: VMState
    request: HotplugRequest
    decision: Decision
    device_add: dict[str, str]
    dry_run: bool
    #: Every state-changing command sent, in order (empty: QEMU was not touched).
    sent: list[dict[str, Any]]
    #: device_add's reply ({} on success) or None when not sent.
    reply: Any = None
    #: QEMU's error text when device_add was sent and refused.
    qemu_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """The check accepted the device and (unless dry run) QEMU added it."""
        return self.decision.accepted and self.qemu_error is None

    @property
    def code(self) -> str | None:
        return DEVICE_ADD_FAILED if self.qemu_error is not None else self.decision.code

    @property
    def message(self) -> str | None:
        return self.qemu_error if self.qemu_error is not None else self.decision.message

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "code": self.code,
            "message": self.message,
            "dry_run": self.dry_run,
            "device_add": self.device_add,
            "sent": self.sent,
            "reply": self.reply,
            "decision": self.decision.to_json(),
            "vm": self.vm.to_json(),
            "notes": self.notes,
        }


# --- the decision (no I/O) -----------------------------------------------------------------------


def normalize_bdf(text: str, *, where: str = "--host") -> str:
    """``01:00.0`` -> ``0000:01:00.0``; lower case; a malformed address is bad input."""
    bdf = text.strip().lower()
    if bdf.count(":") == 1:
        bdf = f"0000:{bdf}"
    try:
        return check_bdf(bdf, where=where)
    except InputError:
        raise InputError(f"{text!r} is not a PCI address [DDDD:]BB:DD.F", where=where) from None


def build_machine(vm: VMState) -> Machine:
    """A check-policy machine for the vIOMMU as read (realize errors become QmpError)."""
    try:
        return Machine(vm.viommu, version=vm.qemu_version, policy=Policy.CHECK,
                       machine_type=vm.machine_type, where=vm.viommu_path)
    except InputError as exc:
        raise QmpError(
            VIOMMU_NOT_MODELLED, f"cannot model {vm.viommu.driver} of QEMU {vm.qemu_version}: {exc}"
        ) from None


def _pre_realize_refusal(vm: VMState, request: HotplugRequest) -> tuple[str, str] | None:
    """device_add's refusals before the device is realized, in QEMU 10.0's order (qdev_set_id,
    then the iommufd link property, then vfio_device_attach), read from the binary."""
    if request.id is not None and request.id in vm.ids:
        return DEVICE_EXISTS, f"Duplicate device ID '{request.id}'"
    if request.iommufd is not None and request.iommufd not in vm.iommufd_objects:
        return IOMMUFD_OBJECT_MISSING, f"Device '{request.iommufd}' not found"
    for dev in vm.vfio:
        if dev.host == request.host:
            return HOST_DEVICE_IN_USE, f"vfio {request.host}: device is already attached"
    return None


def _is_machine_hook(decision: Decision) -> bool:
    """A refusal from the machine's hotplug hook (pc_hotplug_allowed before 10.2), which QEMU
    runs before qdev_set_id; set_iommu_device refusals carry the ``vfio NAME:`` prefix."""
    return (not decision.accepted and decision.code != DEVICE_EXISTS
            and not (decision.message or "").startswith("vfio "))


def decide(vm: VMState, request: HotplugRequest, inventory: HostInventory) -> tuple[Decision, list[str]]:
    """Would QEMU accept ``request`` on ``vm``, with the host device from ``inventory``?

    Returns the hotplug decision and notes about existing devices the model
    could not register. A host device missing from ``inventory`` is bad input.
    """
    inventory.device(request.host)
    new = VfioDev(host=request.host, id=request.id, iommufd=request.iommufd, bus=request.bus,
                  hotplug=True, where="--host")
    label = new.label
    pre = _pre_realize_refusal(vm, request)
    if pre is not None:
        # The machine hook still comes first: probe it on a machine without devices.
        probe = build_machine(vm)
        probe.machine_done()
        hooked = probe.hotplug(new, inventory)
        if _is_machine_hook(hooked):
            return hooked, []
        return Decision("hotplug", label, False, pre[0], pre[1]), []
    notes: list[str] = []
    machine = build_machine(vm)
    for plugged in vm.vfio:
        assert plugged.host is not None
        try:
            inventory.device(plugged.host)
        except InputError:
            notes.append(f"{plugged.path}: host {plugged.host} is not in the host inventory; "
                         "its id and host are taken, but the model does not register it")
            continue
        cold = machine.cold_plug(plugged.vfio_dev(), inventory)
        if not cold.accepted:
            notes.append(f"{plugged.path}: already plugged, but the model would refuse it: "
                         f"{cold.message} [{cold.code}]")
    done = machine.machine_done()
    if not done.accepted:
        notes.append(f"machine-done: {done.message} [{done.code}]")
    return machine.hotplug(new, inventory), notes


# --- QMP -------------------------------------------------------------------------------------------


def one_line(text: object, limit: int = 240) -> str:
    """An exception's text as one line (qemu.qmp's greeting errors span several)."""
    flat = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _prop_text(path: str, name: str, value: Any) -> str:
    """A qom-get value as ``-device`` text (bool on/off, OnOffAuto as is, integers in decimal)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise QmpError(
        VIOMMU_PROPERTY_UNREADABLE,
        f"property {name!r} of {path} has an unexpected value {value!r}; refusing to guess",
    )


def _schema(driver: str, version: QemuVersion) -> Iterable[str]:
    """The property names of the model of ``driver`` for ``version``."""
    if driver == "intel-iommu":
        from viommu.models.intel import Profile

        try:
            return list(Profile.of(version).schema())
        except InputError as exc:
            raise QmpError(VIOMMU_NOT_MODELLED, exc.message) from None
    if driver == "virtio-iommu-pci":
        # What VirtioConfig (the guest-visible config space and the checks) is built from; the
        # rest of the schema is PCI placement and virtio transport, which the check never reads.
        return VIRTIO_PROPERTIES
    raise QmpError(
        VIOMMU_NOT_MODELLED,
        f"the VM's vIOMMU is {driver}, which the guard does not model (intel-iommu, "
        "virtio-iommu-pci only): "
        "refusing to hotplug unchecked",
    )


def _pci_ids(buses: Any) -> set[str]:
    """Every qdev_id in a ``query-pci`` reply, bridges' secondary buses included."""
    ids: set[str] = set()
    stack = list(buses) if isinstance(buses, list) else []
    while stack:
        bus = stack.pop()
        for dev in bus.get("devices", []) if isinstance(bus, dict) else []:
            if dev.get("qdev_id"):
                ids.add(str(dev["qdev_id"]))
            bridge = dev.get("pci_bridge")
            if isinstance(bridge, dict) and bridge.get("devices"):
                stack.append({"devices": bridge["devices"]})
    return ids


def _child_type(entry: Mapping[str, Any]) -> str | None:
    kind = str(entry.get("type", ""))
    if kind.startswith("child<") and kind.endswith(">"):
        return kind[len("child<"):-1]
    return None


class QmpGuard:
    """One guarded hotplug over one QMP socket.

    ``after_read`` is called once everything is read and before the decision
    (tests kill QEMU there to prove that nothing is sent afterwards).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        after_read: Callable[[], None] | None = None,
    ) -> None:
        self.socket = os.fspath(socket_path)
        self.timeout = timeout
        self.after_read = after_read
        self.sent: list[dict[str, Any]] = []
        #: Every QMP command executed, in order (name only).
        self.log: list[str] = []
        self._client: QMPClient | None = None

    # -- connection --

    def _fail(self, code: str, message: str) -> QmpError:
        return QmpError(code, message, where=self.socket)

    async def _connect(self) -> QMPClient:
        from qemu.qmp import ConnectError, QMPClient

        try:
            mode = os.stat(self.socket).st_mode
        except FileNotFoundError:
            raise self._fail(QMP_UNREACHABLE, "no such file (is QEMU running with -qmp unix:PATH,"
                             "server=on,wait=off?)") from None
        except OSError as exc:
            raise self._fail(QMP_UNREACHABLE, f"cannot stat the socket: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise self._fail(QMP_UNREACHABLE, "not a unix socket")
        # qemu.qmp logs each failure at ERROR level; without a handler Python's last-resort
        # handler would print those multi-line records next to our one-line error.
        logger = logging.getLogger("qemu.qmp")
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        client = QMPClient("viommu-hotplug")
        try:
            await asyncio.wait_for(client.connect(self.socket), self.timeout)
        except TimeoutError:
            await self._close(client)
            raise self._fail(QMP_TIMEOUT, f"no QMP greeting within {self.timeout:g} s (not a QMP "
                             "socket, another client holds QEMU's QMP connection, or QEMU is stuck)"
                             ) from None
        except ConnectError as exc:
            await self._close(client)
            cause = exc.exc
            if isinstance(cause, ConnectionRefusedError):
                raise self._fail(QMP_UNREACHABLE, "connection refused (nothing listens on it)") from None
            if isinstance(cause, OSError):
                raise self._fail(QMP_UNREACHABLE, f"cannot connect: {cause.strerror or cause}") from None
            raise self._fail(QMP_NOT_QMP, f"not a QMP socket: {one_line(exc)}") from None
        return client

    @staticmethod
    async def _close(client: QMPClient) -> None:
        # The session is over either way: a reader that died (EOF) re-raises here, moot now.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)

    async def _execute(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """One command under the timeout; transport failures become QmpError, QMP errors
        (ExecuteError) are the caller's."""
        from qemu.qmp import ExecuteError, QMPError

        assert self._client is not None
        self.log.append(cmd)
        try:
            return await asyncio.wait_for(self._client.execute(cmd, dict(args or {})), self.timeout)
        except ExecuteError:
            raise
        except TimeoutError:
            raise self._fail(QMP_TIMEOUT, f"no reply to {cmd} within {self.timeout:g} s") from None
        except (QMPError, OSError, EOFError) as exc:
            detail = one_line(exc) or type(exc).__name__
            raise self._fail(QMP_DISCONNECTED, f"QEMU closed the QMP connection during {cmd} "
                             f"({detail})") from None

    async def _query(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """A read the guard needs: a QMP error is fatal (fail closed)."""
        from qemu.qmp import ExecuteError

        try:
            return await self._execute(cmd, args)
        except ExecuteError as exc:
            what = f"{cmd} {dict(args)}" if args else cmd
            raise self._fail(QMP_COMMAND_FAILED, f"{what} failed: {one_line(exc)}") from None

    async def _qom_get(self, path: str, name: str, *, code: str = QMP_COMMAND_FAILED) -> Any:
        from qemu.qmp import ExecuteError

        try:
            return await self._execute("qom-get", {"path": path, "property": name})
        except ExecuteError as exc:
            raise self._fail(code, f"cannot read property {name!r} of {path}: {one_line(exc)}") from None

    async def _children(self, path: str) -> list[tuple[str, str]]:
        reply = await self._query("qom-list", {"path": path})
        out = []
        for entry in reply if isinstance(reply, list) else []:
            kind = _child_type(entry)
            if kind is not None:
                out.append((str(entry["name"]), kind))
        return out

    # -- reading --

    async def read_vm(self) -> VMState:
        """Read everything the decision needs (the connection must be open: use :meth:`run`)."""
        ver = await self._query("query-version")
        try:
            q = ver["qemu"]
            version = QemuVersion(int(q["major"]), int(q["minor"]), int(q["micro"]))
        except (KeyError, TypeError, ValueError):
            raise self._fail(QMP_COMMAND_FAILED, f"query-version gave no version: {ver!r}") from None
        machine_type = str(await self._qom_get("/machine", "type"))
        machine_type = machine_type.removesuffix("-machine")

        devices: list[PluggedDevice] = []
        viommus: list[tuple[str, str]] = []
        for container, named in ((PERIPHERAL, True), (PERIPHERAL_ANON, False)):
            for name, kind in await self._children(container):
                path = f"{container}/{name}"
                if kind in VIOMMU_TYPES:
                    viommus.append((path, kind))
                devices.append(await self._device(path, kind, name if named else None))
        if len(viommus) != 1:
            found = ", ".join(f"{kind} at {path}" for path, kind in viommus) or "none"
            raise self._fail(VIOMMU_NOT_FOUND, f"expected one vIOMMU among the VM's devices "
                             f"({', '.join(VIOMMU_TYPES)}), found {found}: nothing to check against")
        viommu_path, driver = viommus[0]
        props: dict[str, str] = {}
        for name in _schema(driver, version):
            value = await self._qom_get(viommu_path, name, code=VIOMMU_PROPERTY_UNREADABLE)
            props[name] = _prop_text(viommu_path, name, value)
        pci_ids = _pci_ids(await self._query("query-pci"))
        objects = tuple(sorted(name for name, kind in await self._children("/objects")
                               if kind == "iommufd"))
        return VMState(version, str(ver.get("package", "")).strip(), machine_type, viommu_path,
                       DeviceSpec(driver, props), tuple(devices), frozenset(pci_ids), objects)

    async def _device(self, path: str, kind: str, qdev_id: str | None) -> PluggedDevice:
        if kind not in VFIO_TYPES:
            return PluggedDevice(path, kind, qdev_id)
        host = str(await self._qom_get(path, "host") or "")
        if not host:
            # sysfsdev=/sys/bus/pci/devices/BDF instead of host=
            host = os.path.basename(str(await self._qom_get(path, "sysfsdev") or "").rstrip("/"))
        if not host:
            raise self._fail(QMP_COMMAND_FAILED, f"{path} names no host device (host, sysfsdev)")
        iommufd = str(await self._qom_get(path, "iommufd") or "") or None
        bus = str(await self._qom_get(path, "parent_bus") or "").rsplit("/", 1)[-1] or None
        devfn = await self._qom_get(path, "addr")
        return PluggedDevice(path, kind, qdev_id, host=normalize_bdf(host, where=path),
                             iommufd=iommufd.rsplit("/", 1)[-1] if iommufd else None, bus=bus,
                             devfn=devfn if isinstance(devfn, int) else None)

    # -- the guarded hotplug --

    async def hotplug(self, request: HotplugRequest, inventory: HostInventory, *,
                      dry_run: bool = False) -> GuardResult:
        """Connect, read, decide and (only if accepted and not ``dry_run``) send device_add."""
        from qemu.qmp import ExecuteError

        request = replace(request, host=normalize_bdf(request.host))
        self._client = await self._connect()
        try:
            vm = await self.read_vm()
            if self.after_read is not None:
                self.after_read()
            decision, notes = decide(vm, request, inventory)
            args = request.device_add_args()
            result = GuardResult(vm, request, decision, args, dry_run, self.sent, notes=notes)
            if not decision.accepted or dry_run:
                return result
            # Last look before the only write: QEMU still answers and the id is still free.
            if request.id is not None and request.id in {n for n, _ in await self._children(PERIPHERAL)}:
                result.decision = Decision("hotplug", request.id, False, DEVICE_EXISTS,
                                           f"Duplicate device ID '{request.id}'")
                return result
            self.sent.append({"execute": "device_add", "arguments": dict(args)})
            try:
                result.reply = await self._execute("device_add", args)
            except ExecuteError as exc:
                result.qemu_error = one_line(exc)
            except QmpError as exc:
                raise self._fail(DEVICE_ADD_UNCONFIRMED, f"device_add was sent, but {exc.message}; "
                                 "whether the device was added is unknown") from None
            return result
        finally:
            client, self._client = self._client, None
            if client is not None:
                await self._close(client)

    def run(self, request: HotplugRequest, inventory: HostInventory, *,
            dry_run: bool = False) -> GuardResult:
        """:meth:`hotplug` in a fresh event loop."""
        return asyncio.run(self.hotplug(request, inventory, dry_run=dry_run))


def guarded_hotplug(
    socket_path: str | os.PathLike[str],
    request: HotplugRequest,
    inventory: HostInventory,
    *,
    dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> GuardResult:
    """Check ``request`` against the VM behind ``socket_path`` and send it only if it fits."""
    return QmpGuard(socket_path, timeout=timeout).run(request, inventory, dry_run=dry_run)
