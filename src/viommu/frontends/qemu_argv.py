"""A QEMU command line to a :class:`~viommu.vm.VMConfig`.

What is taken (QEMU 10.0 ``qemu-options.hx`` and ``system/vl.c`` semantics):
``-M``/``-machine`` (type, ``accel=``, ``kernel-irqchip=``, ``iommu=smmuv3``,
``default_bus_bypass_iommu=``; several ``-machine`` options merge, the last
value wins), ``-accel``, ``-enable-kvm``, ``-cpu`` (``phys-bits``,
``host-phys-bits``, ``host-phys-bits-limit``), ``-m`` (``[size=]N[,maxmem=]``,
MiB when unsuffixed), the vIOMMU ``-device``, ``-object iommufd``,
``-device vfio-pci`` and the PCI topology devices, ``-global`` and ``-set``
for those devices, and QEMU's JSON ``-device {...}`` form. Everything else
either cannot matter (disks, netdevs, display) and is skipped, or is listed
in ``VMConfig.unsupported`` with where it stood.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence

from viommu.errors import InputError
from viommu.frontends.words import Word, is_env_assignment
from viommu.models.base import DeviceSpec, opt_parts
from viommu.record import field, record
from viommu.vm import Unsupported, VfioDev, VMConfig

#: vIOMMU device models (``virtio-iommu`` is QEMU's alias of ``virtio-iommu-pci``).
VIOMMU_DRIVERS = frozenset(
    {"intel-iommu", "virtio-iommu-pci", "virtio-iommu-device", "arm-smmuv3", "amd-iommu"}
)
_DRIVER_ALIASES = {"virtio-iommu": "virtio-iommu-pci"}
#: The PCI function AMD's vIOMMU needs beside ``amd-iommu`` (libvirt emits both).
AMD_PCI_COMPANION = "AMDVI-PCI"
#: ``-global`` drivers whose properties reach a vIOMMU: the device itself, the abstract
#: x86-iommu parent (intremap, device-iotlb, pt) and virtio-iommu-pci's inner device.
_GLOBAL_TARGETS = {
    "intel-iommu": ("intel-iommu", "x86-iommu"),
    "amd-iommu": ("amd-iommu", "x86-iommu"),
    "virtio-iommu-pci": ("virtio-iommu-pci", "virtio-iommu-device"),
    "virtio-iommu-device": ("virtio-iommu-device",),
    "arm-smmuv3": ("arm-smmuv3",),
}
VFIO_PCI_DRIVERS = frozenset({"vfio-pci", "vfio-pci-nohotplug"})
#: VFIO devices that are not PCI functions behind a vIOMMU model of ours.
_OTHER_VFIO = frozenset({"vfio-ap", "vfio-ccw", "vfio-platform", "vfio-user-pci", "vfio-amd-xgbe",
                         "vfio-calxeda-xgmac"})
#: Conventional PCI bridges: devices behind one reach the vIOMMU with the bridge's
#: requester ID. i82801b11-bridge is the DMI-to-PCI bridge (libvirt's dmi-to-pci-bridge).
CONVENTIONAL_BRIDGES = frozenset({"pci-bridge", "pci-bridge-seat", "pcie-pci-bridge", "i82801b11-bridge"})
#: Devices that provide a PCI bus named by their id.
_BUS_PROVIDERS = CONVENTIONAL_BRIDGES | frozenset(
    {"pcie-root-port", "ioh3420", "x3130-upstream", "xio3130-downstream", "pxb-pcie", "pxb",
     "pxb-cxl", "cxl-rp"}
)
_EXPANDERS = frozenset({"pxb-pcie", "pxb", "pxb-cxl"})

#: QEMU options that take no argument (qemu-options.hx, HAS_ARG unset), so the next
#: word is the next option.
_NO_ARG = frozenset(
    {"S", "s", "nodefaults", "no-user-config", "nodefconfig", "no-shutdown", "no-reboot",
     "enable-kvm", "daemonize", "nographic", "snapshot", "no-hpet", "no-acpi", "full-screen",
     "only-migratable", "no-fd-bootchk", "win2k-hack", "curses", "usb", "preconfig",
     "enable-sync-profile", "no-quit", "alt-grab", "ctrl-grab", "no-frame", "singlestep",
     "mem-prealloc", "version", "help", "h", "xen-attach", "semihosting", "no-kvm",
     "no-kvm-irqchip", "no-kvm-pit", "no-kvm-pit-reinjection", "old-param", "rtc-td-hack",
     "no-graphic", "portrait"}
)
#: Options whose argument we read: a missing argument is an error here.
_READ = frozenset({"M", "machine", "accel", "cpu", "m", "device", "object", "global", "set",
                   "readconfig"})
def _is_qemu_program(name: str) -> bool:
    """``qemu-system-[\\w.-]+|qemu-kvm|kvm|qemu`` (``\\w`` is ``str.isalnum`` or ``_``)."""
    if name in ("qemu-kvm", "kvm", "qemu"):
        return True
    rest = name[len("qemu-system-") :]
    return name.startswith("qemu-system-") and bool(rest) and all(c.isalnum() or c in "_.-" for c in rest)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_SIZE_UNITS = "bBkKmMgGtTpPeE"


def bdf_parts(text: str) -> tuple[str | None, str, str, str] | None:
    """``(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\\.([0-7])``, fully matched:
    (domain or None, bus, slot, function). By hand: it runs for every device of a check."""
    fields = text.split(":")
    if len(fields) not in (2, 3):
        return None
    domain = fields[0] if len(fields) == 3 else None
    bus, (slot, dot, function) = fields[-2], fields[-1].partition(".")
    if domain is not None and not (len(domain) == 4 and _HEX_DIGITS.issuperset(domain)):
        return None
    if not (len(bus) == 2 and _HEX_DIGITS.issuperset(bus) and len(slot) == 2
            and _HEX_DIGITS.issuperset(slot) and dot and len(function) == 1 and function in "01234567"):
        return None
    return domain, bus, slot, function


def size_parts(text: str) -> tuple[str, str] | None:
    """``\\s*(0[xX][0-9a-fA-F]+|\\d+(?:\\.\\d*)?|\\.\\d+)\\s*([bBkKmMgGtTpPeE]?)\\s*``, fully
    matched: (number, unit). By hand: ``-m`` is read on every start-up."""
    n = len(text)
    i = 0
    while i < n and text[i].isspace():
        i += 1
    start = i
    if text.startswith(("0x", "0X"), i) and i + 2 < n and text[i + 2] in _HEX_DIGITS:
        i += 3
        while i < n and text[i] in _HEX_DIGITS:
            i += 1
    else:
        j = i
        while j < n and text[j].isdecimal():
            j += 1
        if j > i:
            i = j
            if i < n and text[i] == ".":
                i += 1
                while i < n and text[i].isdecimal():
                    i += 1
        elif text.startswith(".", i) and i + 1 < n and text[i + 1].isdecimal():
            i += 2
            while i < n and text[i].isdecimal():
                i += 1
        else:
            return None
    unit = text[i:].strip()
    if len(unit) > 1 or (unit and unit not in _SIZE_UNITS):
        return None
    return text[start:i], unit
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
          "e": 1 << 60}
_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})


def qemu_bool(value: str, *, what: str, where: str) -> bool:
    """QEMU's boolean spelling (qapi/qobject-input-visitor.c); anything else is bad input."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{what}={value!r} is not a boolean (on/off, yes/no, true/false)", where=where)


def parse_size(text: str, *, default_unit: str = "", what: str, where: str) -> int:
    """A QEMU size (``qemu_strtosz``): ``512``, ``4G``, ``1.5G``, ``0x1000``; ``default_unit`` when bare."""
    parts = size_parts(text)
    if parts is None:
        raise InputError(f"{what} {text!r} is not a size like 4096, 512M or 4G", where=where)
    number, unit = parts[0], (parts[1] or default_unit).lower()
    scale = _UNITS[unit]
    if number.lower().startswith("0x"):
        return int(number, 16) * scale
    if "." in number:
        if unit in ("", "b"):
            raise InputError(f"{what} {text!r}: a fraction needs a unit (K, M, G, ...)", where=where)
        return int(float(number) * scale)
    return int(number) * scale


def normalise_bdf(text: str, *, where: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0`` (lower case), as QEMU's ``host=`` accepts both."""
    parts = bdf_parts(text.strip())
    if parts is None:
        raise InputError(f"host={text!r} is not a PCI address like 0000:01:00.0", where=where)
    domain, bus, slot, function = parts
    return f"{domain or '0000'}:{bus}:{slot}.{function}".lower()


def parse_opts(text: str, implied: str) -> dict[str, str]:
    """``q35,accel=kvm`` -> ``{"type": "q35", "accel": "kvm"}``: a bare first part is ``implied``."""
    out: dict[str, str] = {}
    for n, part in enumerate(opt_parts(text)):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            if n == 0:
                key, value = implied, part
            elif key.startswith("no"):
                key, value = key[2:], "off"
            else:
                value = "on"
        out[key] = value
    return out


def format_opts(opts: Mapping[str, str], implied: str) -> str:
    """Inverse of :func:`parse_opts` (the implied key goes first, bare)."""
    parts: list[str] = []
    for key, value in opts.items():
        text = value.replace(",", ",,")
        parts.append(text if key == implied and not parts else f"{key}={text}")
    return ",".join(parts)


def _json_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def parse_device(text: str, *, where: str) -> DeviceSpec:
    """A ``-device`` value: QemuOpts syntax or QEMU's JSON object form."""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"-device JSON does not parse: {exc.msg} at column {exc.colno}",
                             where=where) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("driver"), str):
            raise InputError('-device JSON must be an object with a "driver" string', where=where)
        props = {k: _json_value(v) for k, v in obj.items() if k != "driver"}
        spec = DeviceSpec(obj["driver"], props)
    else:
        spec = DeviceSpec.parse(text, where=where)
    driver = _DRIVER_ALIASES.get(spec.driver, spec.driver)
    return spec if driver == spec.driver else DeviceSpec(driver, spec.props)


def _object_props(text: str, *, where: str) -> dict[str, str]:
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"-object JSON does not parse: {exc.msg} at column {exc.colno}",
                             where=where) from None
        if not isinstance(obj, dict):
            raise InputError("-object JSON must be an object", where=where)
        return {k: _json_value(v) for k, v in obj.items()}
    return parse_opts(text, "qom-type")


#: The index of a device that a -readconfig file defines: it has no words in argv.
_IN_CONFIG_FILE = -1
#: A -readconfig file larger than this is not read (Proxmox's is under 3 KiB).
_CONFIG_MAX = 1 << 20


_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale: what sscanf skips


def _read_config_text(path: str) -> tuple[str | None, str]:
    """(the text of a -readconfig file, "") or (None, why it is not read)."""
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None, "not a regular file"  # a FIFO or /dev/zero
            data = handle.read(_CONFIG_MAX + 1)
    except OSError as exc:
        return None, (exc.strerror or str(exc)).lower()
    if len(data) > _CONFIG_MAX:
        return None, f"larger than {_CONFIG_MAX >> 10} KiB"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def _c_token(text: str, limit: int) -> str:
    """``%<limit>s``: up to ``limit`` characters that are not C white space."""
    end = 0
    while end < len(text) and end < limit and text[end] not in _C_SPACE:
        end += 1
    return text[:end]


def _config_group(line: str) -> tuple[str, str | None] | None:
    """``sscanf(line, "[%63s \"%63[^\"]\"]")`` assigning both, else ``"[%63[^]]]"``:
    (group, id or None); None when neither matches. ``line`` keeps its newline (fgets)."""
    body = line[1:].lstrip(_C_SPACE)
    name = _c_token(body, 63)
    rest = body[len(name):].lstrip(_C_SPACE)
    if name and rest.startswith('"'):
        ident = rest[1:].split('"', 1)[0][:63]
        if ident:
            return name, ident
    head = line[1:].split("]", 1)[0][:63]
    return (head, None) if head else None


def _config_assignment(line: str) -> tuple[str, str] | None:
    """``sscanf(line, " %63s = \"%1023[^\"]\"") == 2 || sscanf(line, " %63s = \"\"") == 1``:
    (key, value). sscanf counts assignments, not literals: once a key is read, a line that
    does not go on with ``= "value"`` still counts, as ``key = ""``. None (QEMU's "parse
    error") only for a line of white space."""
    stripped = line.lstrip(_C_SPACE)
    key = _c_token(stripped, 63)
    if not key:
        return None
    rest = stripped[len(key):].lstrip(_C_SPACE)
    if rest.startswith("="):
        rest = rest[1:].lstrip(_C_SPACE)
        if rest.startswith('"'):
            value = rest[1:].split('"', 1)[0][:1023]
            if value:
                return key, value
    return key, ""


@record
class _Dev:
    """One ``-device`` as read, before ``-set``/``-global`` are applied."""

    spec: DeviceSpec
    index: int  # index of the option word in argv
    where: str
    extra: list[int] = field(default_factory=list)  # folded -global/-set option indices

    @property
    def id(self) -> str | None:
        return self.spec.props.get("id")


class _Reader:
    """One pass over the words; see :func:`parse_words`."""

    def __init__(self, words: Sequence[Word], path: str | None) -> None:
        self.words = words
        self.path = path
        self.unsupported: list[Unsupported] = []
        self.devices: list[_Dev] = []
        self.machine: dict[str, str] = {}
        self.machine_where: dict[str, tuple[int, str]] = {}  # key -> (value index, where)
        self.machine_indices: list[int] = []
        self.accel: str | None = None
        self.irqchip: str | None = None
        self.cpu: dict[str, str] = {}
        self.cpu_where = ""
        self.memory: int | None = None
        self.max_memory: int | None = None
        self.iommufd: list[str] = []
        self.globals: list[tuple[int, str, str, str, str]] = []  # index, driver, prop, value, where
        self.sets: list[tuple[int, str, str, str, str]] = []  # index, id, prop, value, where
        self.readconfig_unread: list[str] = []  # -readconfig files that could not be read here

    def where(self, index: int) -> str:
        if self.path is None:
            return f"argv[{index}]"
        return f"{self.path}:{self.words[index].line}"

    def note(self, what: str, index: int) -> None:
        self.unsupported.append(Unsupported(what, self.where(index)))

    # -- the option loop ------------------------------------------------------------

    def read(self) -> int:
        """Read every option; returns the index of the first option (after env and program)."""
        i = 0
        while i < len(self.words) and is_env_assignment(self.words[i].text):
            i += 1
        if i < len(self.words) and not self.words[i].text.startswith("-"):
            program = os.path.basename(self.words[i].text)
            if not _is_qemu_program(program):
                raise InputError(f"{self.words[i].text!r} is neither a QEMU option nor a QEMU binary "
                                 "(expected qemu-system-*, qemu-kvm or kvm)", where=self.where(i))
            if program in ("kvm", "qemu-kvm"):
                # Debian's /usr/bin/kvm (what Proxmox runs) is "qemu-system-x86_64 -enable-kvm".
                self.accel = "kvm"
            i += 1
        first = i
        while i < len(self.words):
            word = self.words[i].text
            if not word.startswith("-") or word == "-":
                raise InputError(f"{word!r} is not an option (a value without its option?)",
                                 where=self.where(i))
            name = word.lstrip("-")
            if name in _NO_ARG:
                if name == "enable-kvm":
                    self.accel = "kvm"
                i += 1
                continue
            if i + 1 >= len(self.words) or (name in _READ and self.words[i + 1].text.startswith("-")):
                if name in _READ:
                    raise InputError(f"{word} needs a value", where=self.where(i))
                i += 1
                continue
            if name not in _READ and self.words[i + 1].text.startswith("-"):
                # An option we do not know that takes no argument: the next word is an option.
                i += 1
                continue
            self.option(name, i)
            i += 2
        return first

    def option(self, name: str, i: int) -> None:
        value = self.words[i + 1].text
        where = self.where(i + 1)
        if name in ("M", "machine"):
            self.machine_indices.append(i + 1)
            self.machine_opts(parse_opts(value, "type"), i + 1, where)
        elif name == "accel":
            opts = parse_opts(value, "accel")
            self.accel = opts.get("accel", self.accel)
            irq = opts.get("kernel-irqchip") or opts.get("kernel_irqchip")
            if irq is not None:
                self.irqchip = irq
        elif name == "cpu":
            self.cpu = parse_opts(value, "model")
            self.cpu_where = where
        elif name == "m":
            self.memory_opts(parse_opts(value, "size"), "-m", where)
        elif name == "device":
            self.devices.append(_Dev(parse_device(value, where=where), i, where))
        elif name == "object":
            props = _object_props(value, where=where)
            if props.get("qom-type") == "iommufd":
                if "id" not in props:
                    raise InputError("-object iommufd needs an id=", where=where)
                self.iommufd.append(props["id"])
        elif name == "global":
            self.global_option(value, i, where)
        elif name == "set":
            m = re.fullmatch(r"([^.=]+)\.([^.=]+)\.([^=]+)=(.*)", value, re.DOTALL)
            if m is None:
                raise InputError(f"-set {value!r} is not group.id.property=value", where=where)
            if m.group(1) == "device":
                self.sets.append((i, m.group(2), m.group(3), m.group(4), where))
        elif name == "readconfig":
            self.read_config(value, i)

    def read_config(self, path: str, i: int) -> None:
        """``-readconfig FILE`` as ``qemu_config_foreach`` (util/qemu-config.c) reads it: its
        ``[device "id"]``, ``[machine]`` and ``[memory]`` groups count as the options they
        stand for; a file that cannot be read here is reported, not guessed."""
        text, why = _read_config_text(path)
        if text is None:
            self.note(f"-readconfig {path}: {why} here; the devices and buses it defines are not read", i)
            self.readconfig_unread.append(path)
            return
        lines = text.split("\n")
        # fgets: each line keeps its newline (the last one may have none).
        lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        # A group's options carry the location of its last key line, as QEMU blames it (the
        # header line when it has no keys: QEMU then names no line at all).
        group: tuple[str, dict[str, str], str] | None = None
        for lno, line in enumerate(lines, start=1):
            if line.startswith(("\n", "#")):
                continue  # an empty line, a comment
            if line.startswith("["):
                header = _config_group(line)
                if header is not None:
                    if group is not None:
                        self.config_group(*group)
                    name, ident = header
                    group = (name, {} if ident is None else {"id": ident}, f"{path}:{lno}")
                    continue
            key_value = _config_assignment(line)
            if key_value is None:
                raise InputError("parse error (a -readconfig line is [group], [group \"id\"] or "
                                 'key = "value")', where=f"{path}:{lno}")
            if group is None:
                raise InputError("no group defined", where=f"{path}:{lno}")
            group[1][key_value[0]] = key_value[1]
            group = (group[0], group[1], f"{path}:{lno}")
        if group is not None:
            self.config_group(*group)

    def config_group(self, name: str, props: dict[str, str], where: str) -> None:
        """One group of a -readconfig file: the option it stands for."""
        if name == "device":
            driver = props.pop("driver", None)
            if driver is None:
                raise InputError("Parameter 'driver' is missing (a [device] group needs driver = "
                                 '"...")', where=where)
            spec = DeviceSpec(_DRIVER_ALIASES.get(driver, driver), props)
            self.devices.append(_Dev(spec, _IN_CONFIG_FILE, where))
        elif name == "machine":
            self.machine_opts(props, _IN_CONFIG_FILE, where)
        elif name == "memory":
            self.memory_opts(props, "[memory]", where)

    def machine_opts(self, opts: Mapping[str, str], index: int, where: str) -> None:
        """``-machine`` (or a ``[machine]`` group); ``index`` is the value's word in argv."""
        for key, val in opts.items():
            # Machine properties are dashed; QEMU still takes the underscore spellings
            # libvirt and older docs write (kernel_irqchip, default_bus_bypass_iommu).
            key = key.replace("_", "-")
            self.machine[key] = val
            self.machine_where[key] = (index, where)

    def memory_opts(self, opts: Mapping[str, str], what: str, where: str) -> None:
        """``-m`` (or a ``[memory]`` group): size in MiB when bare, maxmem in bytes."""
        if "size" in opts:
            self.memory = parse_size(opts["size"], default_unit="M", what=what, where=where)
        if "maxmem" in opts:
            self.max_memory = parse_size(opts["maxmem"], what=f"{what} maxmem", where=where)

    def global_option(self, value: str, i: int, where: str) -> None:
        if "=" in value.split(",")[0] and value.startswith("driver="):
            opts = parse_opts(value, "driver")
            driver, prop, val = opts.get("driver"), opts.get("property"), opts.get("value")
            if driver is None or prop is None or val is None:
                raise InputError(f"-global {value!r} needs driver=, property= and value=", where=where)
        else:
            m = re.fullmatch(r"([^.=]+)\.([^=]+)=(.*)", value, re.DOTALL)
            if m is None:
                raise InputError(f"-global {value!r} is not driver.property=value", where=where)
            driver, prop, val = m.group(1), m.group(2), m.group(3)
        self.globals.append((i, driver, prop, val, where))
        if driver in VFIO_PCI_DRIVERS:
            self.note(f"-global {driver}.{prop}={val}: vfio-pci defaults are not modelled", i)


def _apply_sets(reader: _Reader) -> None:
    by_id = {d.id: d for d in reader.devices if d.id is not None}
    for index, dev_id, prop, value, where in reader.sets:
        dev = by_id.get(dev_id)
        if dev is None:
            reader.unsupported.append(Unsupported(f"-set device.{dev_id}.{prop}: no -device with id "
                                                  f"{dev_id!r} on the command line", where))
            continue
        props = dict(dev.spec.props)
        props[prop] = value
        dev.spec = DeviceSpec(dev.spec.driver, props)
        dev.extra.append(index)


def _apply_globals(reader: _Reader, dev: _Dev) -> None:
    """Fold ``-global`` defaults into the vIOMMU: explicit ``-device`` properties win."""
    targets = _GLOBAL_TARGETS.get(dev.spec.driver, ())
    props = dict(dev.spec.props)
    for index, driver, prop, value, _where in reader.globals:
        if driver in targets:
            props.setdefault(prop, value)
            dev.extra.append(index)
    dev.spec = DeviceSpec(dev.spec.driver, props)


def parse_words(words: Sequence[Word], *, path: str | None) -> VMConfig:
    """Interpret a QEMU command line (words as split from a file, or argv with ``path=None``)."""
    reader = _Reader(words, path)
    reader.read()
    _apply_sets(reader)
    unsupported = reader.unsupported

    machine_type = reader.machine.get("type")
    accel = reader.machine.get("accel")
    if accel is not None:
        accel = accel.split(":")[0]  # QEMU tries the list in order; the first is what is asked for
    accel = reader.accel or accel
    irqchip = reader.irqchip or reader.machine.get("kernel-irqchip")
    if irqchip is not None and irqchip not in ("on", "off", "split"):
        where = reader.machine_where.get("kernel-irqchip", (0, reader.where(0)))[1]
        raise InputError(f"kernel-irqchip={irqchip!r} is not on, off or split", where=where)

    # -- the vIOMMU ---------------------------------------------------------------------
    viommu: _Dev | None = None
    companions: list[int] = []
    viommu_indices: list[int] = []
    viommu_where = ""
    if "iommu" in reader.machine:
        index, where = reader.machine_where["iommu"]
        if reader.machine["iommu"] == "smmuv3":
            # -M virt,iommu=smmuv3: the machine's own emulated SMMUv3, no accel, no properties.
            viommu = _Dev(DeviceSpec("arm-smmuv3", {}), index - 1, where)
            viommu_indices = [index]
            viommu_where = where
        else:
            unsupported.append(Unsupported(f"-machine iommu={reader.machine['iommu']}", where))
    for dev in reader.devices:
        if dev.spec.driver == AMD_PCI_COMPANION:
            if dev.index != _IN_CONFIG_FILE:
                companions += [dev.index, dev.index + 1]
            continue
        if dev.spec.driver not in VIOMMU_DRIVERS:
            continue
        if viommu is not None:
            if dev.spec.driver == viommu.spec.driver == "arm-smmuv3":
                unsupported.append(Unsupported("a second arm-smmuv3 (one per PCI bus): only the first "
                                               "is modelled", dev.where))
                continue
            raise InputError(f"a second vIOMMU ({dev.spec.driver}; {viommu.spec.driver} is at "
                             f"{viommu.where}): a machine has one", where=dev.where)
        viommu = dev
    viommu_spec: DeviceSpec | None = None
    if viommu is not None:
        if not viommu_indices:
            _apply_globals(reader, viommu)
            # A vIOMMU from a -readconfig file has no words to rewrite (plan says so).
            viommu_indices = [] if viommu.index == _IN_CONFIG_FILE else [viommu.index, viommu.index + 1]
            for extra in viommu.extra:
                viommu_indices += [extra, extra + 1]
            viommu_where = viommu.where
            if viommu.spec.driver == "amd-iommu":
                viommu_indices += companions
        viommu_spec = viommu.spec

    # -- the PCI topology -----------------------------------------------------------------
    is_q35 = machine_type is not None and "q35" in machine_type
    is_virt = machine_type is not None and machine_type.startswith("virt")
    root = "pcie.0" if (is_q35 or is_virt) else "pci.0"
    root_bypass = qemu_bool(reader.machine.get("default-bus-bypass-iommu", "off"),
                            what="default-bus-bypass-iommu",
                            where=reader.machine_where.get("default-bus-bypass-iommu", (0, ""))[1])
    controllers: dict[str, _Dev] = {}
    for dev in reader.devices:
        if dev.spec.driver in _BUS_PROVIDERS and dev.id is not None:
            controllers[dev.id] = dev

    def route(bus: str | None, label: str, where: str) -> tuple[bool, bool]:
        """(behind a conventional bridge, bypasses the vIOMMU) for a device on ``bus``."""
        behind = False
        seen: set[str] = set()
        while bus is not None and bus != root:
            ctrl = controllers.get(bus)
            if ctrl is None:
                origin = " (a -readconfig file may define it)" if reader.readconfig_unread else ""
                unsupported.append(Unsupported(
                    f"{label}: bus {bus!r} is not defined on the command line{origin}; whether a "
                    "PCI bridge or bypass_iommu stands in its path is unknown", where))
                return behind, False
            if bus in seen:
                raise InputError(f"bus {bus!r} loops back on itself", where=ctrl.where)
            seen.add(bus)
            if ctrl.spec.driver in CONVENTIONAL_BRIDGES:
                behind = True
            if ctrl.spec.driver in _EXPANDERS:
                bypass = qemu_bool(ctrl.spec.props.get("bypass_iommu", "off"), what="bypass_iommu",
                                   where=ctrl.where)
                return behind, bypass
            bus = ctrl.spec.props.get("bus")
        return behind, root_bypass

    vfio: list[VfioDev] = []
    for dev in reader.devices:
        driver = dev.spec.driver
        if driver in _OTHER_VFIO:
            unsupported.append(Unsupported(f"-device {driver}: not a PCI function behind a vIOMMU",
                                           dev.where))
            continue
        if driver not in VFIO_PCI_DRIVERS:
            continue
        props = dev.spec.props
        host = props.get("host")
        if host is not None:
            host = normalise_bdf(host, where=dev.where)
        elif "sysfsdev" in props:
            base = os.path.basename(props["sysfsdev"].rstrip("/"))
            if bdf_parts(base) is None:
                unsupported.append(Unsupported(f"vfio-pci sysfsdev={props['sysfsdev']}: not a PCI "
                                               "function (an mdev or vfio-ap UUID?)", dev.where))
                continue
            host = normalise_bdf(base, where=dev.where)
        else:
            raise InputError(f"{driver} needs host= or sysfsdev= (the host PCI device)", where=dev.where)
        iommufd = props.get("iommufd")
        if iommufd is not None and iommufd not in reader.iommufd:
            unsupported.append(Unsupported(f"{driver} iommufd={iommufd}: no -object iommufd,id={iommufd}",
                                           dev.where))
        behind, bypass = route(props.get("bus"), f"vfio-pci {dev.id or host}", dev.where)
        vfio.append(VfioDev(host=host, id=dev.id, iommufd=iommufd, bus=props.get("bus"),
                            addr=props.get("addr"), behind_pci_bridge=behind, bypass_iommu=bypass,
                            where=dev.where))

    # -- the CPU ------------------------------------------------------------------------
    phys_bits = host_limit = None
    host_phys = False
    if "phys-bits" in reader.cpu:
        phys_bits = _int(reader.cpu["phys-bits"], "phys-bits", reader.cpu_where)
    if "host-phys-bits" in reader.cpu:
        host_phys = qemu_bool(reader.cpu["host-phys-bits"], what="host-phys-bits", where=reader.cpu_where)
    elif reader.cpu.get("model") in ("host", "max") and accel == "kvm":
        # host_cpu_max_instance_init (target/i386/host-cpu.c): "Use max host physical address
        # bits if -cpu max option is applied", for host and max under KVM.
        host_phys = True
    if "host-phys-bits-limit" in reader.cpu:
        host_limit = _int(reader.cpu["host-phys-bits-limit"], "host-phys-bits-limit", reader.cpu_where)

    return VMConfig(
        kind="qemu",
        path=path,
        machine=machine_type,
        viommu=viommu_spec,
        viommu_where=viommu_where,
        vfio=tuple(vfio),
        iommufd_objects=tuple(reader.iommufd),
        memory=reader.memory,
        max_memory=reader.max_memory,
        phys_bits=phys_bits,
        host_phys_bits=host_phys,
        host_phys_bits_limit=host_limit,
        accel=accel,
        kernel_irqchip=irqchip,
        unsupported=tuple(unsupported),
        argv=tuple(w.text for w in words),
        viommu_argv=tuple(sorted(set(viommu_indices))),
    )


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(f"{what}={text!r} is not a whole number", where=where) from None


def parse_argv(argv: Sequence[str]) -> VMConfig:
    """A command line given as argv words (``viommu check -- qemu-system-x86_64 ...``)."""
    return parse_words([Word(text, n) for n, text in enumerate(argv)], path=None)
