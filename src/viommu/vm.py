"""The VM a front end describes: what every check, plan and simulation reads.

Every front end (a QEMU command line, a libvirt domain XML, a scenario TOML)
produces one :class:`VMConfig`. Nothing in it is interpreted yet: the vIOMMU
is the ``-device`` string as written, devices name their host BDF and VFIO
backend, and every part the front end could not take is listed in
``unsupported`` with where it stood, never dropped silently.
"""

from __future__ import annotations

from viommu.models.base import DeviceSpec
from viommu.record import field, record

#: VFIO backends of a vfio-pci device: a legacy VFIO container, or ``iommufd=ID``.
LEGACY = "legacy"
IOMMUFD = "iommufd"


@record(frozen=True)
class VfioDev:
    """One ``vfio-pci`` device (or libvirt ``<hostdev>``) of the VM."""

    #: Host PCI address, always in full form: ``0000:01:00.0``.
    host: str
    #: The QEMU device id (``id=``), or libvirt's alias; None when absent.
    id: str | None = None
    #: The ``-object iommufd`` id the device uses; None means the legacy container.
    iommufd: str | None = None
    #: The guest bus id the device is plugged into, as written (None: the root bus).
    bus: str | None = None
    #: The guest slot/function as written (``0x4.0``, ``04.0``), None when left to QEMU.
    addr: str | None = None
    #: A conventional PCI bridge (pci-bridge, pcie-pci-bridge) stands between the device
    #: and the root complex: the vIOMMU sees the bridge's requester ID (an alias).
    behind_pci_bridge: bool = False
    #: Plugged after machine-done (a scenario's hot device); front ends of a VM definition
    #: describe cold-plugged devices.
    hotplug: bool = False
    #: The device sits under a root bus with ``bypass_iommu`` (``pxb-pcie,bypass_iommu=on``
    #: or ``-M ...,default_bus_bypass_iommu=on``): its DMA does not go through the vIOMMU.
    bypass_iommu: bool = False
    #: Where the device was written: ``FILE:LINE``, ``argv[N]`` or a scenario key.
    where: str = ""

    @property
    def backend(self) -> str:
        return IOMMUFD if self.iommufd is not None else LEGACY

    @property
    def label(self) -> str:
        """What messages call the device: its id, else its host address."""
        return self.id or self.host


@record(frozen=True)
class Unsupported:
    """A part of the input that was read but is not modelled (reported, never dropped)."""

    what: str
    where: str


@record(frozen=True)
class VMConfig:
    """A VM as far as the vIOMMU framework cares."""

    #: ``qemu`` (a command line), ``libvirt`` (domain XML) or ``scenario``.
    kind: str
    #: The file it came from (None for argv given after ``--``).
    path: str | None = None
    #: ``-M`` / ``<os><type machine=…>``, e.g. ``q35`` or ``pc-q35-9.1``; None: QEMU's default.
    machine: str | None = None
    #: The vIOMMU as a QEMU ``-device`` string (libvirt's ``<iommu>`` translated), or None.
    viommu: DeviceSpec | None = None
    #: Where the vIOMMU was written.
    viommu_where: str = ""
    vfio: tuple[VfioDev, ...] = ()
    #: ids of ``-object iommufd`` objects (libvirt: one implicit object when any hostdev uses it).
    iommufd_objects: tuple[str, ...] = ()
    #: Guest RAM in bytes (``-m``, ``<memory>``), None when not given.
    memory: int | None = None
    #: Guest physical address bits (``-cpu ...,phys-bits=N`` or ``host-phys-bits``; libvirt
    #: ``<maxphysaddr mode='emulate' bits='N'/>``); None when not given.
    phys_bits: int | None = None
    #: ``host-phys-bits=on`` / ``<maxphysaddr mode='passthrough'/>``: the guest takes the host's.
    host_phys_bits: bool = False
    #: ``host-phys-bits-limit=N`` / ``<maxphysaddr mode='passthrough' limit='N'/>``; None: no limit.
    host_phys_bits_limit: int | None = None
    #: ``-m ...,maxmem=`` / ``<maxMemory>`` in bytes (memory hotplug ceiling); None when not given.
    max_memory: int | None = None
    #: ``-accel`` (tcg, kvm); None: not given.
    accel: str | None = None
    #: ``kernel-irqchip=`` (on, split, off); None: not given (QEMU's default for the accel).
    kernel_irqchip: str | None = None
    unsupported: tuple[Unsupported, ...] = ()
    #: The original command line (qemu kind), so plan can rewrite it: every word as written,
    #: environment assignments and the program name included.
    argv: tuple[str, ...] = field(default=(), compare=False)
    #: Indices into ``argv`` of the words that make up the vIOMMU: the ``-device`` option and
    #: its value, an ``AMDVI-PCI`` companion, folded ``-global``/``-set`` options, or the
    #: ``-machine`` value carrying ``iommu=smmuv3``. The emitter replaces exactly these.
    viommu_argv: tuple[int, ...] = field(default=(), compare=False)
    #: The original document (libvirt kind), so plan can diff it.
    text: str = field(default="", compare=False)

    @property
    def irqchip(self) -> str:
        """The effective ``kernel-irqchip`` mode: ``off`` under TCG (no in-kernel irqchip);
        under KVM what was given, else ``on`` (q35's ``default_kernel_irqchip_split`` is false)."""
        if self.accel == "kvm":
            return self.kernel_irqchip or "on"
        return "off"
