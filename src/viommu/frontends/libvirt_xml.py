"""A libvirt domain XML to a :class:`~viommu.vm.VMConfig`.

The ``<iommu>`` element is translated to the QEMU ``-device`` libvirt makes of
it, property for property as ``qemuBuildIOMMUCommandLine`` in libvirt's
``src/qemu/qemu_command.c`` does (intel: ``intremap`` on/off, ``caching-mode``,
``eim``, ``device-iotlb``, ``aw-bits``, ``dma-translation``; virtio:
``virtio-iommu`` with ``aw-bits``, ``granule`` and its PCI address; amd:
``amd-iommu`` with ``pci-id`` naming an ``AMDVI-PCI`` function; smmuv3: the
machine's ``iommu=smmuv3``, or ``-device arm-smmuv3,primary-bus=`` with
``pciBus``). libvirt's own test pairs ``tests/qemuxmlconfdata/*iommu*.xml`` /
``.args`` hold this translation to libvirt's output.

The document is parsed with defusedxml: a DTD, entity declarations and
external references are refused. Every element keeps its source line so
that each error names ``FILE:LINE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml
import defusedxml.ElementTree as DET

from viommu.errors import InputError
from viommu.models.base import DeviceSpec
from viommu.record import record
from viommu.vm import Unsupported, VfioDev, VMConfig

#: libvirt model -> QEMU device (virtio-iommu is QEMU's alias of virtio-iommu-pci).
MODEL_DRIVER = {"intel": "intel-iommu", "virtio": "virtio-iommu-pci", "amd": "amd-iommu",
                "smmuv3": "arm-smmuv3"}
#: Per model, ``<driver>`` attribute -> (QEMU property, kind) in libvirt's order;
#: kind ``onoff`` is written on/off (an OnOffAuto property), ``bool`` a QEMU bool, ``int`` a number.
DRIVER_ATTRS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "intel": (("intremap", "intremap", "onoff"), ("caching_mode", "caching-mode", "bool"),
              ("eim", "eim", "onoff"), ("iotlb", "device-iotlb", "bool"),
              ("aw_bits", "aw-bits", "int"), ("dma_translation", "dma-translation", "bool")),
    "virtio": (("aw_bits", "aw-bits", "int"),),
    "amd": (("intremap", "intremap", "onoff"), ("iotlb", "device-iotlb", "bool"),
            ("xtsup", "xtsup", "bool"), ("passthrough", "pt", "bool")),
    "smmuv3": (),
}
#: Every ``<driver>`` attribute libvirt documents for some model (formatdomain.rst "IOMMU devices").
KNOWN_ATTRS = frozenset(a for attrs in DRIVER_ATTRS.values() for a, _, _ in attrs) | {"pciBus"}
#: libvirt's controller models that are conventional PCI bridges (requester-ID aliasing).
CONVENTIONAL_BRIDGE_MODELS = frozenset({"pci-bridge", "pcie-to-pci-bridge", "dmi-to-pci-bridge"})
#: The ``-object iommufd`` libvirt creates for hostdevs with ``<driver iommufd='yes'/>``.
LIBVIRT_IOMMUFD_ID = "iommufd0"
_GRANULE_MODES = frozenset({"host", "4k", "8k", "16k", "64k"})
_UNIT = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
         "mb": 1000**2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40,
         "tb": 1000**4, "p": 1 << 50, "pib": 1 << 50, "pb": 1000**5, "e": 1 << 60, "eib": 1 << 60,
         "eb": 1000**6}
_QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


@record(frozen=True)
class Span:
    """Where an element stands in the document: 1-based line, byte offsets [start, end)."""

    line: int
    start: int
    end: int


class _Builder(TreeBuilder):
    """A tree builder that records each element's line and byte span from expat."""

    def __init__(self) -> None:
        super().__init__()
        self.expat: Any = None
        self.source = b""
        self.spans: dict[int, Span] = {}
        self._open: list[tuple[Element, int, int]] = []

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        elem = super().start(tag, attrs)
        self._open.append((elem, self.expat.CurrentLineNumber, self.expat.CurrentByteIndex))
        return elem

    def end(self, tag: str) -> Element:
        elem = super().end(tag)
        opened, line, start = self._open.pop()
        at = self.expat.CurrentByteIndex
        tag_end = _tag_end(self.source, start)
        # expat reports the end of <x/> after its tag, the end of <x>..</x> at "</x".
        end = tag_end if at <= tag_end else self.source.index(b">", at) + 1
        self.spans[id(opened)] = Span(line, start, end)
        return elem


_TAG = re.compile(rb"<(?:[^>'\"]|'[^']*'|\"[^\"]*\")*>")


def _tag_end(data: bytes, start: int) -> int:
    m = _TAG.match(data, start)
    return m.end() if m else start


@record
class Document:
    """A parsed domain: the root element and every element's span."""

    root: Element
    spans: dict[int, Span]
    data: bytes
    path: str

    def line(self, elem: Element) -> int:
        return self.spans[id(elem)].line

    def where(self, elem: Element) -> str:
        return f"{self.path}:{self.line(elem)}"


def parse_document(text: str, *, path: str) -> Document:
    """Parse with defusedxml; DTDs, entities and external references are refused."""
    data = text.encode("utf-8")
    builder = _Builder()
    builder.source = data
    parser = DET.DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True,
                                  forbid_external=True)
    builder.expat = parser.parser
    try:
        parser.feed(data)
        root = parser.close()
    except ParseError as exc:
        line = exc.position[0] if exc.position else 0
        msg = str(exc).split(":")[0]
        raise InputError(f"XML does not parse: {msg}", where=f"{path}:{line}") from None
    except defusedxml.DTDForbidden:
        raise InputError("XML document type declarations (DTD) are not allowed: entities are not "
                         "allowed either", where=f"{path}:{parser.parser.CurrentLineNumber}") from None
    except defusedxml.EntitiesForbidden as exc:
        raise InputError(f"XML entity {exc.name!r} declared: XML entities are not allowed",
                         where=f"{path}:{parser.parser.CurrentLineNumber}") from None
    except defusedxml.ExternalReferenceForbidden:
        raise InputError("XML external references are not allowed (entities are not allowed)",
                         where=f"{path}:{parser.parser.CurrentLineNumber}") from None
    except defusedxml.DefusedXmlException as exc:
        raise InputError(f"XML is not allowed: {exc}",
                         where=f"{path}:{parser.parser.CurrentLineNumber}") from None
    if root.tag != "domain":
        raise InputError(f"the root element is <{root.tag}>, not a libvirt <domain>",
                         where=f"{path}:{builder.spans[id(root)].line}")
    return Document(root, builder.spans, data, path)


def _number(text: str | None, what: str, where: str) -> int:
    if text is None:
        raise InputError(f"{what} is missing", where=where)
    t = text.strip().lower()
    try:
        return int(t, 16) if t.startswith("0x") else int(t, 10)
    except ValueError:
        raise InputError(f"{what}={text!r} is not a number", where=where) from None


def _scaled(elem: Element, doc: Document, what: str) -> int:
    """A libvirt scaled integer (``<memory unit='KiB'>``; the default unit is KiB)."""
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _UNIT:
        raise InputError(f"<{what} unit={elem.get('unit')!r}> is not a libvirt unit",
                         where=doc.where(elem))
    return _number(elem.text, f"<{what}>", doc.where(elem)) * _UNIT[unit]


def _onoff(value: str, attr: str, where: str) -> str:
    if value not in ("on", "off"):
        raise InputError(f"{attr}={value!r}: libvirt takes on or off", where=where)
    return value


def bus_alias(index: int, *, q35: bool) -> str:
    """The QEMU bus id libvirt gives PCI controller ``index`` (pcie.0 / pci.0 is the root)."""
    if index == 0:
        return "pcie.0" if q35 else "pci.0"
    return f"pci.{index}"


def _pci_address(elem: Element, doc: Document) -> tuple[int, int, int]:
    where = doc.where(elem)
    bus = _number(elem.get("bus", "0"), "bus", where)
    slot = _number(elem.get("slot", "0"), "slot", where)
    function = _number(elem.get("function", "0"), "function", where)
    return bus, slot, function


def qemu_addr(slot: int, function: int) -> str:
    """libvirt's ``addr=`` text: ``0x1``, or ``0x1.0x2`` when the function is not 0."""
    return f"{slot:#x}" + (f".{function:#x}" if function else "")


def _iter_iommu(doc: Document) -> Iterator[Element]:
    devices = doc.root.find("devices")
    if devices is not None:
        yield from devices.findall("iommu")


def iommu_spec(elem: Element, doc: Document, *, q35: bool, index: int,
               unsupported: list[Unsupported]) -> DeviceSpec | None:
    """The QEMU ``-device`` libvirt makes of one ``<iommu>`` (None: not modelled)."""
    where = doc.where(elem)
    model = elem.get("model")
    if model not in MODEL_DRIVER:
        unsupported.append(Unsupported(f"<iommu model={model!r}>: not a model libvirt documents", where))
        return None
    alias_elem = elem.find("alias")
    alias = alias_elem.get("name") if alias_elem is not None else None
    alias = alias or f"iommu{index}"
    props: dict[str, str] = {}
    driver = elem.find("driver")
    attrs = dict(driver.attrib) if driver is not None else {}
    dwhere = doc.where(driver) if driver is not None else where
    if model == "amd":
        props["pci-id"] = alias
    elif model != "smmuv3":
        props["id"] = alias
    for attr, prop, kind in DRIVER_ATTRS[model]:
        value = attrs.pop(attr, None)
        if value is None:
            continue
        if kind == "int":
            props[prop] = str(_number(value, attr, dwhere))
        else:
            props[prop] = _onoff(value, attr, dwhere)
    if model == "smmuv3" and "pciBus" in attrs:
        props["primary-bus"] = bus_alias(_number(attrs.pop("pciBus"), "pciBus", dwhere), q35=q35)
        props["id"] = alias
    for attr in attrs:
        why = ("does not apply to model " + repr(model) + " (libvirt refuses it)"
               if attr in KNOWN_ATTRS else "is not an attribute libvirt documents")
        unsupported.append(Unsupported(f"<iommu><driver {attr}=...> {why}", dwhere))
    if driver is not None:
        for child in driver:
            if child.tag == "granule" and model == "virtio":
                props["granule"] = _granule(child, doc)
            else:
                unsupported.append(Unsupported(f"<iommu><driver><{child.tag}> for model {model!r}",
                                               doc.where(child)))
    address = elem.find("address")
    if address is not None and model == "virtio" and address.get("type", "pci") == "pci":
        bus, slot, function = _pci_address(address, doc)
        props["bus"] = bus_alias(bus, q35=q35)
        props["addr"] = qemu_addr(slot, function)
    return DeviceSpec(MODEL_DRIVER[model], props)


def _granule(elem: Element, doc: Document) -> str:
    """``<granule mode='host'/>`` or ``<granule size='64' unit='KiB'/>`` -> QEMU's granule value."""
    where = doc.where(elem)
    if elem.get("mode") is not None:
        mode = elem.get("mode", "")
        if mode not in _GRANULE_MODES:
            raise InputError(f"<granule mode={mode!r}> is not host, 4k, 8k, 16k or 64k", where=where)
        return mode
    size = _number(elem.get("size"), "<granule size>", where)
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _UNIT:
        raise InputError(f"<granule unit={elem.get('unit')!r}> is not a libvirt unit", where=where)
    value = f"{size * _UNIT[unit] // 1024}k"
    if value not in _GRANULE_MODES:
        raise InputError(f"<granule size={elem.get('size')!r}> is not 4, 8, 16 or 64 KiB", where=where)
    return value


def parse_libvirt(text: str, *, path: str) -> VMConfig:
    """Interpret a libvirt domain XML."""
    doc = parse_document(text, path=path)
    root = doc.root
    unsupported: list[Unsupported] = []

    virt = root.get("type")
    accel = {"kvm": "kvm", "qemu": "tcg"}.get(virt or "", virt)
    os_type = root.find("os/type")
    machine = os_type.get("machine") if os_type is not None else None
    q35 = machine is not None and "q35" in machine

    memory = max_memory = None
    for tag in ("memory", "currentMemory"):
        elem = root.find(tag)
        if elem is not None and memory is None:
            memory = _scaled(elem, doc, tag)
    mm = root.find("maxMemory")
    if mm is not None:
        max_memory = _scaled(mm, doc, "maxMemory")

    phys_bits = limit = None
    # host-passthrough and maximum become -cpu host and -cpu max, which turn host-phys-bits
    # on under KVM (host_cpu_max_instance_init); <maxphysaddr mode='emulate'> only adds
    # phys-bits=, which QEMU then overrides with the host's width.
    cpu = root.find("cpu")
    cpu_mode = cpu.get("mode") if cpu is not None else None
    host_phys = accel == "kvm" and cpu_mode in ("host-passthrough", "maximum")
    maxphys = root.find("cpu/maxphysaddr")
    if maxphys is not None:
        where = doc.where(maxphys)
        mode = maxphys.get("mode")
        if mode == "emulate":
            phys_bits = _number(maxphys.get("bits"), "<maxphysaddr bits>", where)
        elif mode == "passthrough":
            host_phys = True
            if maxphys.get("limit") is not None:
                limit = _number(maxphys.get("limit"), "<maxphysaddr limit>", where)
        else:
            raise InputError(f"<maxphysaddr mode={mode!r}> is not emulate or passthrough", where=where)

    irqchip = None
    ioapic = root.find("features/ioapic")
    if ioapic is not None:
        driver = ioapic.get("driver")
        if driver not in ("qemu", "kvm"):
            raise InputError(f"<ioapic driver={driver!r}> is not qemu or kvm", where=doc.where(ioapic))
        irqchip = "split" if driver == "qemu" else "on"

    viommu: DeviceSpec | None = None
    viommu_where = ""
    for n, elem in enumerate(_iter_iommu(doc)):
        spec = iommu_spec(elem, doc, q35=q35, index=n, unsupported=unsupported)
        if spec is None:
            continue
        if viommu is not None:
            if spec.driver == viommu.driver == "arm-smmuv3":
                unsupported.append(Unsupported("a second <iommu model='smmuv3'> (one per PCI bus): only "
                                               "the first is modelled", doc.where(elem)))
                continue
            raise InputError(f"a second <iommu> (the first is at {viommu_where}): libvirt allows one "
                             "except for smmuv3 per PCI bus", where=doc.where(elem))
        viommu, viommu_where = spec, doc.where(elem)

    devices = root.find("devices")
    controllers: dict[int, Element] = {}
    hostdevs: list[Element] = []
    if devices is not None:
        for elem in devices:
            if elem.tag == "controller" and elem.get("type") == "pci":
                idx = _number(elem.get("index", "0"), "<controller index>", doc.where(elem))
                controllers[idx] = elem
            elif elem.tag == "hostdev" or (elem.tag == "interface" and elem.get("type") == "hostdev"):
                hostdevs.append(elem)
    for elem in root.iter():
        if isinstance(elem.tag, str) and elem.tag.startswith(_QEMU_NS) and elem.tag.endswith("commandline"):
            unsupported.append(Unsupported("<qemu:commandline> passes QEMU arguments libvirt does not "
                                           "see; they are not read", doc.where(elem)))

    def behind_bridge(bus: int, where: str) -> bool:
        seen: set[int] = set()
        while bus != 0:
            if bus in seen:
                raise InputError(f"PCI controller {bus} loops back on itself", where=where)
            seen.add(bus)
            ctrl = controllers.get(bus)
            if ctrl is None:
                unsupported.append(Unsupported(f"PCI bus {bus} has no <controller type='pci' "
                                               f"index='{bus}'>", where))
                return False
            if ctrl.get("model") in CONVENTIONAL_BRIDGE_MODELS:
                return True
            addr = ctrl.find("address")
            bus = _pci_address(addr, doc)[0] if addr is not None else 0
        return False

    vfio: list[VfioDev] = []
    iommufd_used = False
    for elem in hostdevs:
        where = doc.where(elem)
        is_iface = elem.tag == "interface"
        if not is_iface and (elem.get("mode") != "subsystem" or elem.get("type") != "pci"):
            if elem.get("type") == "mdev":
                unsupported.append(Unsupported("<hostdev type='mdev'>: a mediated device, not modelled",
                                               where))
            continue
        src = elem.find("source/address")
        if src is None:
            raise InputError("<hostdev> has no <source><address domain bus slot function/>", where=where)
        swhere = doc.where(src)
        host = (f"{_number(src.get('domain', '0'), 'domain', swhere):04x}:"
                f"{_number(src.get('bus'), 'bus', swhere):02x}:"
                f"{_number(src.get('slot'), 'slot', swhere):02x}."
                f"{_number(src.get('function', '0'), 'function', swhere):x}")
        drv = elem.find("driver")
        iommufd = None
        if drv is not None:
            name = drv.get("name", "vfio")
            if name != "vfio" and not is_iface:
                unsupported.append(Unsupported(f"<hostdev><driver name={name!r}>: only vfio is modelled",
                                               doc.where(drv)))
            if drv.get("iommufd") == "yes":
                iommufd = LIBVIRT_IOMMUFD_ID
                iommufd_used = True
        alias_elem = elem.find("alias")
        bus = addr = None
        behind = False
        guest = elem.find("address")
        if guest is not None and guest.get("type", "pci") == "pci":
            b, slot, function = _pci_address(guest, doc)
            bus, addr = bus_alias(b, q35=q35), qemu_addr(slot, function)
            behind = behind_bridge(b, where)
        vfio.append(VfioDev(host=host, id=alias_elem.get("name") if alias_elem is not None else None,
                            iommufd=iommufd, bus=bus, addr=addr, behind_pci_bridge=behind, where=where))
    domain_iommufd = root.find("iommufd")
    if domain_iommufd is not None and domain_iommufd.get("enabled") == "yes":
        iommufd_used = True
    # The domain-level <iommufd enabled='yes'/> only creates the object; each hostdev
    # opts in with <driver iommufd='yes'/>.
    iommufd_objects = (LIBVIRT_IOMMUFD_ID,) if iommufd_used else ()

    return VMConfig(
        kind="libvirt", path=path, machine=machine, viommu=viommu, viommu_where=viommu_where,
        vfio=tuple(vfio), iommufd_objects=iommufd_objects, memory=memory, max_memory=max_memory,
        phys_bits=phys_bits, host_phys_bits=host_phys, host_phys_bits_limit=limit, accel=accel,
        kernel_irqchip=irqchip, unsupported=tuple(unsupported), text=text,
    )


def iommu_spans(text: str, *, path: str) -> tuple[list[Span], Span | None]:
    """Byte spans of the ``<iommu>`` elements and of ``<devices>`` (for the emitter)."""
    doc = parse_document(text, path=path)
    devices = doc.root.find("devices")
    spans = [doc.spans[id(e)] for e in _iter_iommu(doc)]
    return spans, (doc.spans[id(devices)] if devices is not None else None)
