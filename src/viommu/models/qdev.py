"""How QEMU turns ``-M TYPE -device DRIVER,k=v,...`` into device property values.

The path (QEMU 10.0; each step checked against the binary by
``tests/test_intel_differential.py``):

1. QemuOpts parses the option string and rejects a malformed ``id``;
2. the machine type is resolved (``unsupported machine type``);
3. ``qdev_device_add`` checks that the machine takes the device (q35 takes
   dynamic sysbus devices, i440fx and microvm do not) and resolves ``bus=``;
4. every other key is set through a keyval QObject input visitor. The keys
   come out of a QDict, i.e. in hash-bucket order rather than command-line
   order, and the first error stops the device: with two bad values QEMU
   names the one whose key hashes first (:func:`qdict_order`).

Values parse as QEMU parses them: booleans accept on/yes/true/y and
off/no/false/n (case-sensitive); OnOffAuto exactly on/off/auto; unsigned
integers go through ``qemu_strtou64`` with base 0 (``0x30`` and ``060`` are 48,
leading white space and a sign are allowed, a negative value wraps) and are
then range-checked against the property's width.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from functools import cache

from viommu.errors import InputError
from viommu.lazyre import Pattern
from viommu.models.base import QemuVersion
from viommu.reasons import register
from viommu.record import record

UNKNOWN_PROPERTY = register(
    "unknown-property",
    "The -device string names a property the device does not have in this QEMU version "
    "(QEMU: \"Property 'DRIVER.NAME' not found\"). Property names are exact and some were renamed "
    "across releases (x-scalable-mode became scalable-mode, x-flts became flts).",
)
READ_ONLY_PROPERTY = register(
    "read-only-property",
    "The property exists on every QEMU device (type, parent_bus, hotplugged, hotpluggable) but "
    "cannot be set from the command line (QEMU: \"Property 'DRIVER.NAME' is not writable\").",
)
INVALID_PROPERTY = register(
    "invalid-property",
    "A property value does not parse as its type: booleans take on/off (also yes/no, true/false, "
    "y/n), OnOffAuto takes on/off/auto, integers must be whole numbers within the property's width "
    "(QEMU: \"Parameter 'NAME' expects ...\").",
)
INVALID_ID = register(
    "invalid-id",
    "The device id= must start with a letter and contain only letters, digits, '-', '.' and '_' "
    "(QEMU: \"Parameter 'id' expects an identifier\").",
)
UNSUPPORTED_MACHINE = register(
    "unsupported-machine",
    "The machine type does not exist in this QEMU version (for instance a pc-q35 version newer "
    "than the QEMU release).",
)
MACHINE_REJECTS_DEVICE = register(
    "machine-rejects-device",
    "The machine type does not take this device: intel-iommu is a dynamic sysbus device that only "
    "q35 machines accept (QEMU: \"Parameter 'driver' expects a dynamic sysbus device type for the "
    "machine\").",
)
BAD_BUS = register(
    "bad-bus",
    "bus= names a bus that does not exist or whose type the device cannot sit on; a sysbus "
    "device such as intel-iommu can only go on main-system-bus.",
)
QEMU_ASSERTION = register(
    "qemu-assertion",
    "The option makes QEMU abort on an internal assertion instead of reporting an error "
    "(realized=on on the command line realizes the device before it is plugged).",
)


class DeviceConfigError(InputError):
    """QEMU refuses the device configuration: bad input (exit 2) with a reason code.

    ``message`` is QEMU's text; ``where`` is the option QEMU blames
    (``-device intel-iommu,x-flts=on``), or None for machine-level errors.
    """

    def __init__(self, code: str, message: str, *, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.code = code


class OnOffAuto(enum.Enum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"


class PropKind(enum.Enum):
    BOOL = "bool"
    ON_OFF_AUTO = "OnOffAuto"
    UINT8 = "uint8"
    UINT32 = "uint32"
    INT32 = "int32"
    #: A QAPI enum (virtio-iommu's GranuleMode): one of ``PropSpec.choices``, exactly.
    ENUM = "enum"
    #: Free text (romfile, failover_pair_id): any value parses.
    STR = "str"
    #: qemu_strtosz: a number with an optional B/K/M/G/T/P/E suffix.
    SIZE = "size"
    #: A PCI ``slot[.function]`` in hex (``addr=``).
    PCI_DEVFN = "pci-devfn"
    #: A link to another object, named by id or path; ``choices`` are the names that resolve.
    LINK = "link"
    #: An array property: a key=value string can never set it (only JSON ``-device`` can).
    ARRAY = "array"


PropValue = bool | int | str | OnOffAuto


@record(frozen=True)
class PropSpec:
    """One qdev property: its name, type and default (before machine compat)."""

    name: str
    kind: PropKind
    default: PropValue
    choices: tuple[str, ...] = ()


_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")
_UINT_BITS = {PropKind.UINT8: 8, PropKind.UINT32: 32}
_U64_MAX = (1 << 64) - 1
#: strtoull with base 0: C-locale white space, a sign, then hex (0x), octal (0) or decimal.
_C_SPACE = " \t\n\v\f\r"
_OCTAL = frozenset("01234567")
_DECIMAL = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


def strtou64_parts(text: str) -> tuple[str, str] | None:
    """``[ \\t\\n\\v\\f\\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)``, fully matched:
    (sign, digits). By hand: every integer property of every vIOMMU goes through it."""
    body = text.lstrip(_C_SPACE)
    sign = body[:1] if body[:1] in ("+", "-") else ""
    digits = body[len(sign) :]
    if not digits:
        return None
    if digits[0] == "0":
        if digits[1:2] in ("x", "X"):
            ok = len(digits) > 2 and _HEX.issuperset(digits[2:])
        else:
            ok = _OCTAL.issuperset(digits[1:])
    else:
        ok = digits[0] in _DECIMAL and _DECIMAL.issuperset(digits[1:])
    return (sign, digits) if ok else None
_IDENT = Pattern(r"[A-Za-z][A-Za-z0-9._-]*")

#: Properties every device inherits from TYPE_DEVICE that have no setter.
READ_ONLY = frozenset({"type", "parent_bus", "hotplugged", "hotpluggable"})
#: Keys qdev_device_add consumes itself; they never reach the property setters.
CONSUMED = frozenset({"driver", "bus", "id"})


def parse_bool(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects 'on' or 'off'")


def parse_on_off_auto(name: str, text: str) -> OnOffAuto:
    for member in OnOffAuto:
        if text == member.value:
            return member
    raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' does not accept value '{text}'")


def strtou64(text: str) -> int | None:
    """``qemu_strtou64(text, NULL, 0, ...)``: the value, or None where QEMU reports an error."""
    parts = strtou64_parts(text)
    if parts is None:
        # Nothing parsed, or characters left over.
        return None
    sign, digits = parts
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits[:1] == "0":
        value = int(digits, 8)
    else:
        value = int(digits, 10)
    if value > _U64_MAX:
        return None  # ERANGE
    # Like strtoull, a negative number wraps around.
    return (-value) & _U64_MAX if sign == "-" else value


def parse_uint(name: str, text: str, bits: int) -> int:
    value = strtou64(text)
    if value is None:
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects integer")
    if value >> bits:
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects uint{bits}_t")
    return value


def parse_int32(name: str, text: str) -> int:
    """``qemu_strtoi64`` (base 0) then the int32 range check."""
    parts = strtou64_parts(text)
    magnitude = strtou64(text.replace("-", "", 1)) if parts is not None else None
    if parts is None or magnitude is None:
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects integer")
    value = -magnitude if parts[0] == "-" else magnitude
    if not -(1 << 63) <= value < (1 << 63):
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects integer")
    if not -(1 << 31) <= value < (1 << 31):
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects int32_t")
    return value


_SIZE = Pattern(r"(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]+)?)([bBkKmMgGtTpPeE]?)")
_SIZE_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(name: str, text: str) -> int:
    """``qemu_strtosz``: decimal (fractions allowed with a suffix) or hex bytes, K = 1024."""
    m = _SIZE.fullmatch(text)
    if m is None or (m.group(1)[:2].lower() == "0x" and m.group(2)):
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects size")
    number, suffix = m.groups()
    shift = _SIZE_SHIFT[suffix.lower()]
    if number[:2].lower() == "0x":
        value = int(number, 16)
    elif "." in number:
        if not suffix:
            raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects size")
        whole, frac = number.split(".")
        value = int(whole) << shift
        value += (int(frac) << shift) // 10 ** len(frac)
        shift = 0
    else:
        value = int(number)
    value <<= shift
    if value > _U64_MAX:
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{name}' expects size")
    return value


_DEVFN = Pattern(r"((?:0[xX])?[0-9a-fA-F]+)(?:\.((?:0[xX])?[0-9a-fA-F]+))?")


def parse_pci_devfn(driver: str, name: str, text: str) -> int:
    """``set_pci_devfn``: ``slot[.fn]`` in hex, slot <= 0x1f, fn <= 7 (sscanf ``%x.%x``)."""
    m = _DEVFN.fullmatch(text)
    if m is not None:
        slot = int(m.group(1), 16)
        fn = int(m.group(2), 16) if m.group(2) is not None else 0
        if slot <= 0x1F and fn <= 7:
            return slot << 3 | fn
    raise DeviceConfigError(INVALID_PROPERTY, f"Property '{driver}.{name}' doesn't take value '{text}'")


def prop_text(value: PropValue) -> str | int:
    """A property value as QEMU's ``-device`` syntax writes it (booleans as on/off)."""
    if isinstance(value, OnOffAuto):
        return value.value
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def parse_value(spec: PropSpec, text: str, *, driver: str = "") -> PropValue:
    if spec.kind is PropKind.BOOL:
        return parse_bool(spec.name, text)
    if spec.kind is PropKind.ON_OFF_AUTO:
        return parse_on_off_auto(spec.name, text)
    if spec.kind is PropKind.ENUM:
        if text in spec.choices:
            return text
        raise DeviceConfigError(INVALID_PROPERTY, f"Parameter '{spec.name}' does not accept value '{text}'")
    if spec.kind is PropKind.STR:
        return text
    if spec.kind is PropKind.INT32:
        return parse_int32(spec.name, text)
    if spec.kind is PropKind.SIZE:
        return parse_size(spec.name, text)
    if spec.kind is PropKind.PCI_DEVFN:
        return parse_pci_devfn(driver, spec.name, text)
    if spec.kind is PropKind.LINK:
        if text in spec.choices:
            return text
        raise DeviceConfigError(INVALID_PROPERTY, f"Device '{text}' not found")
    if spec.kind is PropKind.ARRAY:
        raise DeviceConfigError(
            INVALID_PROPERTY, f"Invalid parameter type for '{spec.name}', expected: array"
        )
    return parse_uint(spec.name, text, _UINT_BITS[spec.kind])


def _tdb_hash(key: str) -> int:
    """QDict's bucket hash (tdb_hash from gdbm), on 32-bit unsigned arithmetic."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


_QDICT_BUCKETS = 512


def qdict_order(keys: Iterable[str]) -> list[str]:
    """The order ``qdict_first``/``qdict_next`` visit ``keys`` (given in command-line order).

    Buckets are walked in index order. qdev clones the option QDict before
    setting properties, which turns each bucket's head-inserted list back
    into insertion order; ``sorted`` is stable, so ties keep ``keys``' order.
    """
    return sorted(keys, key=lambda k: _tdb_hash(k) % _QDICT_BUCKETS)


def check_id(props: Mapping[str, str], *, where: str | None) -> None:
    ident = props.get("id")
    if ident is not None and not _IDENT.fullmatch(ident):
        raise DeviceConfigError(INVALID_ID, "Parameter 'id' expects an identifier", where=where)


def set_properties(
    driver: str,
    schema: Mapping[str, PropSpec],
    defaults: Mapping[str, PropValue],
    props: Mapping[str, str],
    *,
    where: str | None,
    read_only: Mapping[str, str] | None = None,
    realized_crash: str | None = None,
) -> dict[str, PropValue]:
    """Apply ``props`` over ``defaults`` the way qdev does; the first error raises.

    ``read_only`` maps further unsettable properties to the type that owns
    them (a virtio proxy forwards its backend's: ``virtio-iommu-device``);
    ``realized_crash`` is the text for ``realized=on`` when QEMU does not
    abort on the intel-style assertion.
    """
    values = dict(defaults)
    extra_ro = read_only or {}
    for key in qdict_order(k for k in props if k not in CONSUMED):
        text = props[key]
        if key in READ_ONLY or key in extra_ro:
            owner = extra_ro.get(key, driver)
            raise DeviceConfigError(
                READ_ONLY_PROPERTY, f"Property '{owner}.{key}' is not writable", where=where
            )
        if key == "realized":
            if parse_bool_at(key, text, where=where):
                raise DeviceConfigError(
                    QEMU_ASSERTION,
                    realized_crash
                    or "hw/core/qdev.c:266: qdev_realize: "
                    "Assertion `!dev->realized && !dev->parent_bus' failed.",
                    where=None,
                )
            continue
        spec = schema.get(key)
        if spec is None:
            raise DeviceConfigError(UNKNOWN_PROPERTY, f"Property '{driver}.{key}' not found", where=where)
        try:
            values[key] = parse_value(spec, text, driver=driver)
        except DeviceConfigError as exc:
            raise DeviceConfigError(exc.code, exc.message, where=where) from None
    return values


def parse_bool_at(name: str, text: str, *, where: str | None) -> bool:
    try:
        return parse_bool(name, text)
    except DeviceConfigError as exc:
        raise DeviceConfigError(exc.code, exc.message, where=where) from None


# --- machine types ---------------------------------------------------------------------------

#: The minor releases of each QEMU major that produced machine types (x86: from 2.4 on).
_MINORS = {2: range(4, 13), 3: range(2), 4: range(3), 5: range(3), 6: range(3), 7: range(3),
           8: range(3), 9: range(3), 10: range(3), 11: range(1)}
#: pc-q35-4.0.1 is the one machine type with a micro version.
_EXTRA = ((4, 0, 1),)

#: Buses of a ``-nodefaults`` q35 machine and the type name QEMU prints for them;
#: None marks the one a sysbus device may use.
Q35_BUSES: Mapping[str, str | None] = {
    "main-system-bus": None,
    "pcie.0": "PCIE",
    "isa.0": "ISA",
    **{f"ide.{i}": "IDE" for i in range(6)},
    "i2c": "i2c-bus",
}


@record(frozen=True)
class MachineType:
    """A resolved ``-M`` value: ``family`` is q35, i440fx or microvm; ``version`` its compat level."""

    name: str
    family: str
    version: tuple[int, int, int] | None

    def older_or_equal(self, major: int, minor: int) -> bool:
        """Whether the ``pc_compat_MAJOR_MINOR`` properties apply (True for the oldest types)."""
        return self.version is not None and self.version[:2] <= (major, minor)


@cache
def machine_versions(qemu: QemuVersion) -> tuple[tuple[int, int, int], ...]:
    """Machine-type versions a QEMU release knows, oldest first, up to its own major.minor."""
    out = [(major, minor, 0) for major, minors in _MINORS.items() for minor in minors]
    out += list(_EXTRA)
    return tuple(sorted(v for v in out if v[:2] <= (qemu.major, qemu.minor)))


@cache  # a machine is resolved for every vIOMMU a check builds (a refusal is not cached)
def resolve_machine(text: str | None, qemu: QemuVersion) -> MachineType:
    """``-M TEXT`` for ``qemu`` (default q35); unknown types raise QEMU's error."""
    name = (text or "q35").split(",", 1)[0]
    latest = machine_versions(qemu)[-1]
    if name in ("q35", "pc"):
        family = "q35" if name == "q35" else "i440fx"
        prefix = "pc-q35" if name == "q35" else "pc-i440fx"
        return MachineType(f"{prefix}-{_fmt(latest)}", family, latest)
    if name == "microvm":
        return MachineType(name, "microvm", None)
    m = re.fullmatch(r"pc-(q35|i440fx)-(\d+)\.(\d+)(?:\.(\d+))?", name)
    if m is not None:
        version = (int(m.group(2)), int(m.group(3)), int(m.group(4) or 0))
        if version in machine_versions(qemu):
            return MachineType(name, m.group(1), version)
    raise DeviceConfigError(UNSUPPORTED_MACHINE, f'unsupported machine type: "{name}"')


def _fmt(version: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in (version if version[2] else version[:2]))


def check_sysbus_placement(
    driver: str, machine: MachineType, props: Mapping[str, str], *, where: str | None
) -> None:
    """``qdev_device_add``'s checks for a dynamic sysbus device: machine, then ``bus=``."""
    if machine.family != "q35":
        raise DeviceConfigError(
            MACHINE_REJECTS_DEVICE,
            "Parameter 'driver' expects a dynamic sysbus device type for the machine",
            where=where,
        )
    bus = props.get("bus")
    if bus is None:
        return
    if bus not in Q35_BUSES:
        raise DeviceConfigError(BAD_BUS, f"Bus '{bus}' not found", where=where)
    kind = Q35_BUSES[bus]
    if kind is not None:
        raise DeviceConfigError(BAD_BUS, f"Device '{driver}' can't go on {kind} bus", where=where)
