"""What every vIOMMU model offers the machine.

A model is built from a QEMU ``-device`` property set and a QEMU version
profile. Its guest-visible state is a pure function of those properties
(QEMU upstream, the ``check`` policy), except where QEMU itself lets
cold-plugged devices narrow it (virtio-iommu's page-size mask, SMMUv3
``auto`` properties). ``set_iommu_device`` runs QEMU's checks in QEMU's order
and raises :class:`~viommu.errors.Refusal` with a stable code and QEMU's
text (without the ``vfio <name>: Failed to set vIOMMU: `` prefix, which the
machine adds per version).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from functools import total_ordering

from viommu.errors import InputError
from viommu.host.device import HostIOMMUDevice
from viommu.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.dma import GuestView


@total_ordering
@record(frozen=True)
class QemuVersion:
    """A QEMU release as ``major.minor[.micro]``; profiles exist for 9.1, 9.2, 10.0, 10.2, 11.0."""

    major: int
    minor: int
    micro: int = 0

    @classmethod
    def parse(cls, text: str, *, where: str | None = "--qemu-version") -> QemuVersion:
        parts = text.strip().split(".")
        # (\d+)\.(\d+)(?:\.(\d+))?, without a regular expression (this runs on every start-up)
        if not 2 <= len(parts) <= 3 or not all(p.isdecimal() for p in parts):
            raise InputError(f"{text!r} is not a QEMU version like 10.0", where=where)
        return cls(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, QemuVersion):
            return NotImplemented
        return (self.major, self.minor, self.micro) < (other.major, other.minor, other.micro)

    def at_least(self, major: int, minor: int, micro: int = 0) -> bool:
        return (self.major, self.minor, self.micro) >= (major, minor, micro)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + (f".{self.micro}" if self.micro else "")


DEFAULT_QEMU_VERSION = QemuVersion(10, 0)


@record(frozen=True, order=True)
class PciAddr:
    """A guest PCI address: bus number and devfn (slot << 3 | function)."""

    bus: int
    devfn: int

    @property
    def slot(self) -> int:
        return self.devfn >> 3

    @property
    def function(self) -> int:
        return self.devfn & 7

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.slot:02x}.{self.function}"


def opt_parts(text: str) -> list[str]:
    """Split a QemuOpts string at commas, ``,,`` being a literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while True:
        comma = text.find(",", i)
        if comma < 0:
            current.append(text[i:])
            break
        current.append(text[i:comma])
        if text.startswith(",", comma + 1):  # ",," is a literal comma
            current.append(",")
            i = comma + 2
        else:
            parts.append("".join(current))
            current = []
            i = comma + 1
    parts.append("".join(current))
    return parts


@record(frozen=True)
class DeviceSpec:
    """A parsed ``-device DRIVER,key=value,...`` string."""

    driver: str
    props: Mapping[str, str]

    @classmethod
    def parse(cls, text: str, *, where: str | None = None) -> DeviceSpec:
        """Split a QEMU option string; ``,,`` escapes a comma as in QEMU's option parser."""
        parts = opt_parts(text)
        driver = parts[0].strip()
        if driver.startswith("driver="):
            driver = driver[len("driver=") :]
        if not driver:
            raise InputError(f"{text!r} names no device driver", where=where)
        props: dict[str, str] = {}
        for part in parts[1:]:
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                # QEMU's short-form booleans (deprecated, still accepted in 10.0):
                # a bare "flag" is flag=on and "noflag" is flag=off.
                if key.startswith("no"):
                    key, value = key[2:], "off"
                else:
                    value = "on"
            props[key] = value
        return cls(driver, props)

    def __str__(self) -> str:
        rest = "".join(f",{k}={v.replace(',', ',,')}" for k, v in self.props.items())
        return f"{self.driver}{rest}"


class VIOMMU(abc.ABC):
    """One vIOMMU instance in a machine."""

    #: The QEMU device name, e.g. ``intel-iommu``.
    model: str
    #: The ``-device`` driver names the model accepts (default: ``model`` alone).
    drivers: tuple[str, ...] = ()

    def __init__(self, spec: DeviceSpec, version: QemuVersion, *, where: str | None = None) -> None:
        """``where`` names the option in messages (default ``-device SPEC``); a driver the
        model does not implement is refused there."""
        self.spec = spec
        self.version = version
        self.where = where if where is not None else f"-device {spec}"
        if spec.driver not in (self.drivers or (self.model,)):
            raise InputError(f"'{spec.driver}' is not {self.model}", where=self.where)

    @abc.abstractmethod
    def set_iommu_device(
        self, addr: PciAddr, hiod: HostIOMMUDevice, *, hotplug: bool, alias: PciAddr | None = None
    ) -> None:
        """Accept the host IOMMU device of a VFIO device at ``addr`` or raise Refusal.

        ``addr`` is the device's own guest (bus, devfn); ``alias`` its requester-ID
        alias in the guest topology (behind a PCIe-to-PCI bridge: the secondary
        bus, devfn 0), None when it has none.
        """

    @abc.abstractmethod
    def unset_iommu_device(self, addr: PciAddr) -> None:
        """Forget the device at ``addr`` (unplug or failed realize)."""

    def pre_plug(self, *, hotplug: bool) -> None:
        """The machine's own check of a VFIO device before it is realized (a hotplug
        handler, not ``set_iommu_device``): its refusals carry no ``vfio NAME:`` prefix,
        and they ran in QEMU before 9.1 too. None by default."""
        return

    @abc.abstractmethod
    def machine_done(self, *, vfio_devices: Collection[PciAddr] = ()) -> None:
        """The machine-init-done notifier: freeze what QEMU freezes; may raise Refusal.

        ``vfio_devices`` are the machine's VFIO devices, registered here or not (an
        mdev, or any device when nothing called ``set_iommu_device``)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """System reset: recompute what QEMU recomputes."""

    @abc.abstractmethod
    def guest_state(self) -> dict[str, Any]:
        """The guest-visible state (registers or config space), JSON-ready and deterministic."""

    @abc.abstractmethod
    def guest_view(self, addr: PciAddr) -> GuestView:
        """What the guest may map for the endpoint at ``addr``: width, reserved regions, page sizes."""

    def narrowed(self, hiod: HostIOMMUDevice) -> dict[str, str]:
        """Property values (``-device`` text) that would make this vIOMMU fit ``hiod``.

        The ``sync`` policy applies them for each cold-plugged device before
        machine-done, ``plan`` folds them over every device of every pool host.
        Only caps are narrowed, each as little as the property's values allow;
        an empty result means either the device fits already or no property
        value can make it fit (the check then refuses it).
        """
        return {}

    def widest(self) -> dict[str, str]:
        """Cap properties at the widest value the model offers (``plan`` starts from these
        for properties the user left to their defaults)."""
        return {}

    def required(self, *, has_vfio: bool) -> dict[str, tuple[str, str]]:
        """Property values VFIO devices need whatever the host (name -> (value, why))."""
        return {}

    def explicit(self) -> dict[str, str]:
        """The resolved values of the guest-visible properties, to write them out explicitly."""
        return {}

    def compare(self, hiod: HostIOMMUDevice) -> list[dict[str, Any]]:
        """Field by field: ``{"field", "viommu", "host", "ok"}`` for what ``set_iommu_device`` checks."""
        return []
