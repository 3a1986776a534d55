"""What discovery found on one host: units, groups, devices, and how it was found.

Every backend (sysfs, legacy VFIO, iommufd, snapshot, bundled profile) returns
a :class:`HostInventory`. Its JSON form is the snapshot format
(``"schema": "viommu-snapshot/1"``, see :mod:`viommu.host.snapshot`), and
:meth:`HostInventory.from_json` reads it back losslessly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from viommu.errors import InputError
from viommu.host.caps import HostIOMMUCaps, IommuType, ReservedRegion, ResvType
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.record import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

SCHEMA = "viommu-snapshot/1"


def natural_key(name: str) -> tuple[Any, ...]:
    """``dmar2`` sorts before ``dmar10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


@record(frozen=True)
class Machine:
    """The identity of the host a discovery describes (None: not readable)."""

    hostname: str | None = None
    product: str | None = None
    cpu: str | None = None
    kernel: str | None = None
    #: ISO 8601 UTC time of the capture; set when a snapshot is written.
    captured_at: str | None = None
    #: The CPU's physical address width (x86 ``/proc/cpuinfo`` "address sizes"): what a guest
    #: with host-phys-bits gets. None: not known (profiles built from kernel logs lack it).
    cpu_phys_bits: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "product": self.product,
            "cpu": self.cpu,
            "kernel": self.kernel,
            "captured_at": self.captured_at,
            "cpu_phys_bits": self.cpu_phys_bits,
        }


@record(frozen=True)
class ScalableMode:
    """Whether the kernel runs VT-d units in scalable mode, and how that was decided.

    The registers cannot show it (ECAP.SMTS only says the hardware could):
    it is the ``intel_iommu=sm_on|sm_off`` boot option or the kernel's build
    default.
    """

    enabled: bool
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "source": self.source}


@record(frozen=True)
class IommuUnit:
    """One hardware IOMMU (``/sys/class/iommu/<name>``) and what Linux derives from it."""

    name: str
    iommu_type: IommuType
    #: Raw registers by lower-case name (``cap``/``ecap``/``ver``, ``efr``/``efr2``, ``idr0``...).
    registers: Mapping[str, int]
    #: Register base (VT-d DRHD address), when known.
    address: int | None = None
    #: N such that a paging domain's aperture is [0, 2^N - 1]; None when unknown.
    aperture_bits: int | None = None
    #: Page sizes of a paging domain (bit n => 2^n bytes); None when unknown.
    page_size_mask: int | None = None
    #: VT-d: whether this unit runs in scalable mode (boot option and ECAP.SMTS).
    scalable_mode: bool | None = None
    nesting: bool | None = None
    dirty_tracking: bool | None = None
    pasid_bits: int | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "iommu_type": self.iommu_type.value,
            "registers": {k: f"0x{v:x}" for k, v in sorted(self.registers.items())},
            "address": _hex_or_none(self.address),
            "aperture_bits": self.aperture_bits,
            "page_size_mask": _hex_or_none(self.page_size_mask),
            "scalable_mode": self.scalable_mode,
            "nesting": self.nesting,
            "dirty_tracking": self.dirty_tracking,
            "pasid_bits": self.pasid_bits,
            "notes": list(self.notes),
        }


@record(frozen=True)
class IommuGroup:
    """One IOMMU group (``/sys/kernel/iommu_groups/<number>``)."""

    number: int
    #: Default-domain type (``DMA``, ``DMA-FQ``, ``identity``...); None before Linux 5.11.
    type: str | None
    #: Every member, PCI or not, bridges included, as the kernel names them.
    devices: tuple[str, ...]
    #: The group's reserved regions (inclusive ends), as the kernel merged them.
    reserved_regions: tuple[ReservedRegion, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "type": self.type,
            "devices": list(self.devices),
            "reserved_regions": [r.to_json() for r in self.reserved_regions],
        }


@record(frozen=True)
class PciInfo:
    """Identity of one PCI function (None: not readable)."""

    vendor: int | None = None
    device: int | None = None
    class_code: int | None = None
    driver: str | None = None
    pcie: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "vendor": None if self.vendor is None else f"0x{self.vendor:04x}",
            "device": None if self.device is None else f"0x{self.device:04x}",
            "class": None if self.class_code is None else f"0x{self.class_code:06x}",
            "driver": self.driver,
            "pcie": self.pcie,
        }


@record(frozen=True)
class HostInventory:
    """Everything one discovery found, and which backend found it and why."""

    #: The backend that produced this: sysfs, vfio, iommufd, snapshot or profile.
    backend: str
    #: Why that backend was used.
    reason: str
    #: Backends tried first and why each was not used, in the order tried.
    skipped: tuple[tuple[str, str], ...]
    machine: Machine
    scalable_mode: ScalableMode
    units: tuple[IommuUnit, ...]
    groups: tuple[IommuGroup, ...]
    #: One per assignable PCI device (bridges excluded), sorted by address.
    devices: tuple[HostIOMMUDevice, ...]
    pci: Mapping[str, PciInfo] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: Where a snapshot or profile came from (free-form, JSON-ready); empty for live discovery.
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pci", MappingProxyType(dict(self.pci)))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))

    def device(self, bdf: str) -> HostIOMMUDevice:
        for dev in self.devices:
            if dev.name == bdf:
                return dev
        known = ", ".join(d.name for d in self.devices) or "none"
        raise InputError(f"no assignable device {bdf} on this host (devices: {known})")

    def unit(self, name: str) -> IommuUnit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise InputError(f"no IOMMU unit {name!r} on this host")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "machine": self.machine.to_json(),
            "provenance": dict(self.provenance),
            "discovery": {
                "backend": self.backend,
                "reason": self.reason,
                "skipped": [[b, why] for b, why in self.skipped],
                "scalable_mode": self.scalable_mode.to_json(),
            },
            "units": [u.to_json() for u in self.units],
            "groups": [g.to_json() for g in self.groups],
            "devices": [
                {
                    "bdf": d.name,
                    "kind": d.kind.value,
                    "pci": self.pci.get(d.name, PciInfo()).to_json(),
                    "caps": d.caps.to_json(),
                }
                for d in self.devices
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> HostInventory:
        """Inverse of :meth:`to_json`; anything malformed is one :class:`InputError` naming the key."""
        reader = _Reader(where)
        top = reader.obj(data, "")
        schema = reader.get(top, "schema", "", str)
        if schema != SCHEMA:
            raise InputError(f"schema {schema!r} is not supported: this viommu reads {SCHEMA!r}", where=where)
        machine = reader.obj(reader.get(top, "machine", ""), "machine")
        disc = reader.obj(reader.get(top, "discovery", ""), "discovery")
        sm = reader.obj(reader.get(disc, "scalable_mode", "discovery"), "discovery.scalable_mode")
        devices: list[HostIOMMUDevice] = []
        pci: dict[str, PciInfo] = {}
        for i, raw in enumerate(reader.get(top, "devices", "", list)):
            path = f"devices[{i}]"
            entry = reader.obj(raw, path)
            bdf = reader.get(entry, "bdf", path, str)
            kind = reader.enum(HiodKind, reader.get(entry, "kind", path, str), f"{path}.kind")
            caps = HostIOMMUCaps.from_json(
                reader.obj(reader.get(entry, "caps", path), f"{path}.caps"), where=f"{where}: {path}.caps"
            )
            devices.append(HostIOMMUDevice(bdf, caps, kind))
            pci[bdf] = reader.pci(reader.obj(reader.get(entry, "pci", path), f"{path}.pci"), f"{path}.pci")
        return cls(
            backend=reader.get(disc, "backend", "discovery", str),
            reason=reader.get(disc, "reason", "discovery", str),
            skipped=tuple(
                reader.pair(p, f"discovery.skipped[{i}]")
                for i, p in enumerate(reader.get(disc, "skipped", "discovery", list))
            ),
            machine=Machine(
                **{k: reader.get(machine, k, "machine", (str, type(None))) for k in _MACHINE_KEYS},
                # Added after the schema's first release: a snapshot without it is still read.
                cpu_phys_bits=(reader.optional_int(machine, "cpu_phys_bits", "machine")
                               if "cpu_phys_bits" in machine else None),
            ),
            scalable_mode=ScalableMode(
                enabled=reader.get(sm, "enabled", "discovery.scalable_mode", bool),
                source=reader.get(sm, "source", "discovery.scalable_mode", str),
            ),
            units=tuple(
                reader.unit(u, f"units[{i}]") for i, u in enumerate(reader.get(top, "units", "", list))
            ),
            groups=tuple(
                reader.group(g, f"groups[{i}]") for i, g in enumerate(reader.get(top, "groups", "", list))
            ),
            devices=tuple(devices),
            pci=pci,
            notes=tuple(reader.strings(reader.get(top, "notes", "", list), "notes")),
            provenance=reader.obj(reader.get(top, "provenance", ""), "provenance"),
        )


_MACHINE_KEYS = ("hostname", "product", "cpu", "kernel", "captured_at")


_LOWER_HEX = frozenset("0123456789abcdef")


def _is_hex(text: str) -> bool:
    """``0x[0-9a-f]+``, the snapshot's spelling of a register value."""
    return text.startswith("0x") and len(text) > 2 and _LOWER_HEX.issuperset(text[2:])


def _hex_or_none(value: int | None) -> str | None:
    return None if value is None else f"0x{value:x}"


class _Reader:
    """Typed access to parsed JSON; every failure names the key path and the file."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, what: str) -> InputError:
        return InputError(f"{path or 'top level'}: {what}", where=self.where)

    def obj(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, found {type(value).__name__}")
        return value

    def get(self, obj: Mapping[str, Any], key: str, path: str, kind: Any = object) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in obj:
            raise self.fail(full, "missing")
        value = obj[key]
        # bool is an int in Python; a JSON true where a number belongs is still wrong.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(full, f"unexpected {type(value).__name__} {value!r}")
        return value

    def optional_int(self, obj: Mapping[str, Any], key: str, path: str) -> int | None:
        value = self.get(obj, key, path, (int, type(None)))
        if isinstance(value, bool):
            raise self.fail(f"{path}.{key}", f"unexpected bool {value!r}")
        return value  # type: ignore[no-any-return]

    def optional_hex(self, obj: Mapping[str, Any], key: str, path: str) -> int | None:
        value = self.get(obj, key, path, (str, type(None)))
        return None if value is None else self.hex(value, f"{path}.{key}")

    def optional_bool(self, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
        return self.get(obj, key, path, (bool, type(None)))  # type: ignore[no-any-return]

    def hex(self, value: Any, path: str) -> int:
        if not isinstance(value, str) or not _is_hex(value):
            raise self.fail(path, f"expected a hex string like 0x1f, found {value!r}")
        return int(value, 16)

    def enum(self, kind: Any, value: str, path: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            known = ", ".join(m.value for m in kind)
            raise self.fail(path, f"unknown value {value!r} (known: {known})") from None

    def pair(self, value: Any, path: str) -> tuple[str, str]:
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise self.fail(path, f"expected [backend, reason], found {value!r}")
        return value[0], value[1]

    def unit(self, raw: Any, path: str) -> IommuUnit:
        u = self.obj(raw, path)
        regs = self.obj(self.get(u, "registers", path), f"{path}.registers")
        return IommuUnit(
            name=self.get(u, "name", path, str),
            iommu_type=self.enum(IommuType, self.get(u, "iommu_type", path, str), f"{path}.iommu_type"),
            registers={k: self.hex(v, f"{path}.registers.{k}") for k, v in regs.items()},
            address=self.optional_hex(u, "address", path),
            aperture_bits=self.optional_int(u, "aperture_bits", path),
            page_size_mask=self.optional_hex(u, "page_size_mask", path),
            scalable_mode=self.optional_bool(u, "scalable_mode", path),
            nesting=self.optional_bool(u, "nesting", path),
            dirty_tracking=self.optional_bool(u, "dirty_tracking", path),
            pasid_bits=self.optional_int(u, "pasid_bits", path),
            notes=tuple(self.strings(self.get(u, "notes", path, list), f"{path}.notes")),
        )

    def group(self, raw: Any, path: str) -> IommuGroup:
        g = self.obj(raw, path)
        regions = []
        for i, r in enumerate(self.get(g, "reserved_regions", path, list)):
            rpath = f"{path}.reserved_regions[{i}]"
            region = self.obj(r, rpath)
            start = self.hex(self.get(region, "start", rpath), f"{rpath}.start")
            last = self.hex(self.get(region, "last", rpath), f"{rpath}.last")
            if start > last:
                raise self.fail(rpath, f"start 0x{start:x} is above last 0x{last:x}")
            kind = self.enum(ResvType, self.get(region, "type", rpath, str), f"{rpath}.type")
            regions.append(ReservedRegion(start, last, kind))
        return IommuGroup(
            number=self.get(g, "number", path, int),
            type=self.get(g, "type", path, (str, type(None))),
            devices=tuple(self.strings(self.get(g, "devices", path, list), f"{path}.devices")),
            reserved_regions=tuple(sorted(regions)),
        )

    def pci(self, p: Mapping[str, Any], path: str) -> PciInfo:
        return PciInfo(
            vendor=self.optional_hex(p, "vendor", path),
            device=self.optional_hex(p, "device", path),
            class_code=self.optional_hex(p, "class", path),
            driver=self.get(p, "driver", path, (str, type(None))),
            pcie=self.optional_bool(p, "pcie", path),
        )

    def strings(self, values: list[Any], path: str) -> list[str]:
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise self.fail(f"{path}[{i}]", f"expected a string, found {v!r}")
        return values
