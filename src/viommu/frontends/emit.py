"""Emitters: a vIOMMU spec back into the VM's own language.

:func:`rewrite_argv` replaces the vIOMMU of a QEMU command line and leaves
every other word as it was; :func:`libvirt_iommu` writes the ``<iommu>``
element libvirt turns into that ``-device`` (the inverse of
:mod:`viommu.frontends.libvirt_xml`), and :func:`libvirt_replace` splices it
into the domain text, every other byte unchanged, with a unified diff.
Round trip: parsing the emitted output gives back the same vIOMMU spec.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Sequence

from viommu.errors import InputError
from viommu.frontends.qemu_argv import VIOMMU_DRIVERS, format_opts, parse_opts
from viommu.frontends.words import is_env_assignment
from viommu.models.base import DeviceSpec
from viommu.vm import VMConfig

__all__ = ["NotExpressible", "libvirt_iommu", "libvirt_replace", "rewrite_argv", "shell_join"]

_DRIVER_MODEL = {"intel-iommu": "intel", "virtio-iommu-pci": "virtio", "virtio-iommu": "virtio",
                 "amd-iommu": "amd", "arm-smmuv3": "smmuv3"}
_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})
_ROOT_BUSES = frozenset({"pcie.0", "pci.0"})


class NotExpressible(InputError):
    """libvirt has no attribute for some QEMU properties; ``props`` names them."""

    def __init__(self, driver: str, props: Sequence[str]) -> None:
        self.props = tuple(props)
        super().__init__(f"libvirt's <iommu> cannot express {driver} "
                         f"propert{'y' if len(props) == 1 else 'ies'} {', '.join(props)}")


# -- QEMU command lines --------------------------------------------------------------------


def _machine_index(argv: Sequence[str]) -> int | None:
    """Index of the value of the last -M/-machine option."""
    found = None
    for i, word in enumerate(argv[:-1]):
        if word.lstrip("-") in ("M", "machine") and word.startswith("-"):
            found = i + 1
    return found


def _first_option(argv: Sequence[str]) -> int:
    i = 0
    while i < len(argv) and is_env_assignment(argv[i]):
        i += 1
    if i < len(argv) and not argv[i].startswith("-"):
        i += 1
    return i


def rewrite_argv(vm: VMConfig, viommu: DeviceSpec) -> list[str]:
    """``vm.argv`` with its vIOMMU replaced by ``viommu`` (or inserted after ``-machine``)."""
    if vm.kind != "qemu":
        raise InputError(f"rewrite_argv needs a QEMU command line, not a {vm.kind} VM", where=vm.path)
    if viommu.driver not in VIOMMU_DRIVERS:
        raise InputError(f"{viommu.driver} is not a vIOMMU device", where="viommu")
    if vm.viommu is not None and not vm.viommu_argv:
        raise InputError(f"the vIOMMU is defined in a -readconfig file ({vm.viommu_where}): plan "
                         "rewrites command lines, not config files; change it there", where=vm.path)
    argv = list(vm.argv)
    new_device = ["-device", str(viommu)]
    drop = set(vm.viommu_argv)
    insert_at: int | None = None
    if drop:
        first = min(drop)
        if argv[first - 1].lstrip("-") in ("M", "machine") and vm.viommu is not None and \
                len(drop) == 1:
            # -M virt,iommu=smmuv3: take iommu= out of the machine, add the -device after it.
            if vm.viommu == viommu:
                return argv
            opts = parse_opts(argv[first], "type")
            opts.pop("iommu", None)
            argv[first] = format_opts(opts, "type")
            return argv[: first + 1] + new_device + argv[first + 1 :]
        main = _main_device(argv, drop, vm)
        if main is not None and vm.viommu is not None and vm.viommu.driver == viommu.driver:
            # Same model: keep a companion (AMDVI-PCI) and replace the device in place.
            argv[main + 1] = str(viommu)
            keep = {main, main + 1} | _companions(argv, drop)
            return [w for i, w in enumerate(argv) if i not in drop or i in keep]
        insert_at = main if main is not None else first
    out: list[str] = []
    if insert_at is None:
        machine = _machine_index(argv)
        insert_at = machine + 1 if machine is not None else _first_option(argv)
    for i, word in enumerate(argv):
        if i == insert_at:
            out += new_device
        if i not in drop:
            out.append(word)
    if insert_at >= len(argv):
        out += new_device
    return out


def _main_device(argv: Sequence[str], drop: set[int], vm: VMConfig) -> int | None:
    """Index of the ``-device`` word of the vIOMMU itself (not a companion or -global)."""
    for i in sorted(drop):
        if argv[i] in ("-device", "--device") and i + 1 in drop:
            value = argv[i + 1]
            if vm.viommu is not None and (vm.viommu.driver in value) and "AMDVI-PCI" not in value:
                return i
    return None


def _companions(argv: Sequence[str], drop: set[int]) -> set[int]:
    keep: set[int] = set()
    for i in drop:
        if argv[i] in ("-device", "--device") and "AMDVI-PCI" in argv[i + 1]:
            keep |= {i, i + 1}
    return keep


def shell_join(argv: Sequence[str]) -> str:
    """Shell text for ``argv``, one option (with its value) per line, lines joined by ``\\``."""
    lines: list[list[str]] = []
    options = False  # env assignments and the program name come before the first option
    for word in argv:
        options = options or word.startswith("-")
        if not lines or word.startswith("-") or not options or len(lines[-1]) >= 2:
            lines.append([word])
        else:
            lines[-1].append(word)
    return " \\\n".join(" ".join(shlex.quote(w) for w in line) for line in lines) + "\n"


# -- libvirt --------------------------------------------------------------------------------


def _bool_attr(value: str, prop: str) -> str:
    if value in _TRUE:
        return "on"
    if value in _FALSE:
        return "off"
    raise InputError(f"{prop}={value!r} is not on or off", where="viommu")


def _bus_index(bus: str) -> int | None:
    if bus in _ROOT_BUSES:
        return 0
    m = re.fullmatch(r"pci\.(\d+)", bus)
    return int(m.group(1)) if m else None


def _slot_function(addr: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|[0-9a-fA-F]+)(?:\.(0[xX][0-7]|[0-7]))?", addr)
    if m is None:
        return None
    slot = int(m.group(1), 16)
    function = int(m.group(2), 16) if m.group(2) else 0
    return slot, function


def libvirt_iommu(viommu: DeviceSpec, model: str | None = None, *, indent: str = "") -> str:
    """The ``<iommu>`` element libvirt turns into ``viommu``.

    ``model`` (intel, virtio, amd, smmuv3) must agree with the driver when given.
    ``id``/``pci-id`` are libvirt's to choose (``iommu0``) and are not written.
    Properties libvirt has no attribute for raise :class:`NotExpressible`.
    """
    from viommu.frontends.libvirt_xml import DRIVER_ATTRS

    derived = _DRIVER_MODEL.get(viommu.driver)
    if derived is None:
        raise InputError(f"{viommu.driver} has no libvirt <iommu> model", where="viommu")
    if model is not None and model != derived:
        raise InputError(f"model {model!r} does not match {viommu.driver} (libvirt model {derived!r})",
                         where="viommu")
    by_prop = {prop: (attr, kind) for attr, prop, kind in DRIVER_ATTRS[derived]}
    attrs: list[tuple[str, str]] = []
    granule: str | None = None
    address: str | None = None
    bad: list[str] = []
    props = dict(viommu.props)
    props.pop("pci-id" if derived == "amd" else "id", None)
    if derived == "smmuv3":
        props.pop("id", None)
    for prop, value in props.items():
        if prop in by_prop:
            attr, kind = by_prop[prop]
            if kind == "int":
                try:
                    attrs.append((attr, str(int(value, 0))))
                except ValueError:
                    raise InputError(f"{prop}={value!r} is not a number", where="viommu") from None
            elif kind == "onoff" and value == "auto":
                continue  # libvirt leaves the attribute out; QEMU's default is auto
            else:
                attrs.append((attr, _bool_attr(value, prop)))
        elif derived == "virtio" and prop == "granule":
            granule = value
        elif derived == "smmuv3" and prop == "primary-bus" and _bus_index(value) is not None:
            attrs.append(("pciBus", str(_bus_index(value))))
        elif derived == "virtio" and prop == "bus" and _bus_index(value) is not None:
            continue  # written with addr below
        elif derived == "virtio" and prop == "addr" and _slot_function(value) is not None:
            continue
        else:
            bad.append(prop)
    if derived == "virtio" and ("bus" in props or "addr" in props):
        bus = _bus_index(props.get("bus", "pcie.0"))
        sf = _slot_function(props.get("addr", "")) if "addr" in props else None
        if bus is None or sf is None:
            bad += [p for p in ("bus", "addr") if p in props and p not in bad]
        else:
            address = (f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{sf[0]:#04x}' "
                       f"function='{sf[1]:#x}'/>")
    if bad:
        raise NotExpressible(viommu.driver, bad)
    order = [attr for attr, _, _ in DRIVER_ATTRS[derived]] + ["pciBus"]
    attrs.sort(key=lambda a: order.index(a[0]))
    inner: list[str] = []
    if attrs or granule is not None:
        text = "".join(f" {a}='{v}'" for a, v in attrs)
        if granule is None:
            inner.append(f"<driver{text}/>")
        else:
            g = f"<granule mode='{granule}'/>" if granule == "host" else \
                f"<granule size='{_granule_kib(granule)}' unit='KiB'/>"
            inner += [f"<driver{text}>", f"  {g}", "</driver>"]
    if address is not None:
        inner.append(address)
    if not inner:
        return f"{indent}<iommu model='{derived}'/>"
    body = "".join(f"{indent}  {line}\n" for line in inner)
    return f"{indent}<iommu model='{derived}'>\n{body}{indent}</iommu>"


def _granule_kib(granule: str) -> int:
    m = re.fullmatch(r"(\d+)[kK]", granule)
    if m is None:
        raise NotExpressible("virtio-iommu-pci", [f"granule={granule}"])
    return int(m.group(1))


def libvirt_replace(vm: VMConfig, viommu: DeviceSpec) -> tuple[str, str]:
    """(the domain XML with only its ``<iommu>`` replaced or inserted, a unified diff)."""
    from viommu.frontends.libvirt_xml import iommu_spans

    if vm.kind != "libvirt":
        raise InputError(f"libvirt_replace needs a libvirt domain, not a {vm.kind} VM", where=vm.path)
    path = vm.path or "domain.xml"
    data = vm.text.encode("utf-8")
    spans, devices = iommu_spans(vm.text, path=path)
    if spans:
        span = spans[0]
        line_start = data.rfind(b"\n", 0, span.start) + 1
        indent = data[line_start : span.start].decode()
        indent = indent if indent.strip() == "" else ""
        element = libvirt_iommu(viommu).replace("\n", "\n" + indent)
        new = data[: span.start] + element.encode() + data[span.end :]
    elif devices is not None:
        close = data.rindex(b"</devices>", devices.start, devices.end)
        line_start = data.rfind(b"\n", 0, close) + 1
        outer = data[line_start:close].decode()
        if outer.strip() == "":
            # </devices> on its own line: the new element goes on the line before it.
            element = libvirt_iommu(viommu, indent=outer + "  ") + "\n"
            new = data[:line_start] + element.encode() + data[line_start:]
        else:
            new = data[:close] + libvirt_iommu(viommu).encode() + data[close:]
    else:
        raise InputError("the domain has no <devices> element to put an <iommu> in", where=path)
    text = new.decode("utf-8")
    name = os.path.basename(path)
    diff = "".join(difflib.unified_diff(vm.text.splitlines(keepends=True), text.splitlines(keepends=True),
                                        fromfile=f"a/{name}", tofile=f"b/{name}"))
    return text, diff

