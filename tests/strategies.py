"""Hypothesis strategies for the invariant tests, and the scenario runner they share.

A :class:`Scenario` is plain data (it round-trips through JSON, so a scenario
can be re-run in another process): QEMU version, policy, machine type and
vIOMMU properties; the hosts (``hosts[0]`` is the one the VM runs on, the
others are migration destinations); the VM's VFIO devices with their guest
topology and VFIO backend; which of them are cold-plugged; and the events
after machine-done (hotplug, unplug, reset, DMA maps, migrations).

Hosts come from real register values only: the bundled profiles (generated
from the corpus) or units built here from a corpus row
(``src/viommu/data/hw-iommu-corpus.csv``) with ``vtd_unit`` / ``amd_unit``
and ``usable_ranges``, as Linux would size their domains, with reserved
regions of the shapes real machines have (the x86 MSI window always, AMD's
HyperTransport hole where the EFR says Linux reserves it, RMRRs harvested
from the profiles or of the same shape at random places).
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from hypothesis import strategies as st

from viommu.dma import X86_INTERRUPT_WINDOW
from viommu.errors import InputError, Refusal
from viommu.host import units as unitmod
from viommu.host.caps import IommuType, PciAlias, ReservedRegion, ResvType
from viommu.host.device import HostIOMMUDevice
from viommu.host.inventory import HostInventory, IommuGroup, ScalableMode
from viommu.host.inventory import Machine as HostMachine
from viommu.host.profiles import load_profile, profile_names
from viommu.host.sysfs import device_caps
from viommu.machine import Decision, Machine, Policy
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.vm import VfioDev

# --- real data -------------------------------------------------------------------------------

#: intel-iommu version profiles (models/intel.py), 11.0.3 being the PT-bit fix.
VERSIONS = ("9.1", "9.2", "10.0", "10.1", "10.2", "11.0", "11.0.3")
#: q35 (the release's newest) and two compat machine types: <= 9.1 keeps aw-bits 39.
MACHINE_TYPES = (None, "pc-q35-9.1", "pc-q35-10.0")


def machine_types(version: str) -> tuple[str | None, ...]:
    """The machine types of MACHINE_TYPES that QEMU ``version`` has."""
    v = QemuVersion.parse(version)
    return tuple(t for t in MACHINE_TYPES if t != "pc-q35-10.0" or v.at_least(10, 0))
MSI_X86 = ReservedRegion(X86_INTERRUPT_WINDOW.start, X86_INTERRUPT_WINDOW.last, ResvType.MSI)
#: The device addresses of a corpus-built host (every such host has the same three).
CORPUS_BDFS = ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0")
#: A Linux kernel new enough to size AMD v1 domains from EFR.HATS.
AMD_KERNEL = (6, 12)


@functools.cache
def corpus_rows() -> tuple[dict[str, str], ...]:
    text = resources.files("viommu").joinpath("data/hw-iommu-corpus.csv").read_text(encoding="utf-8")
    return tuple(csv.DictReader(text.splitlines()))


def corpus_unit(index: int, name: str, *, scalable_mode: bool) -> Any:
    """The IommuUnit Linux would make of corpus row ``index`` (None when it has no DMA domain)."""
    row = corpus_rows()[index]
    if row["vendor"] == "Intel":
        regs = {"cap": int(row["cap"], 16), "ecap": int(row["ecap_or_efr"], 16)}
        unit = unitmod.vtd_unit(name, regs, address=None, scalable_mode=scalable_mode)
    else:
        values = [int(v, 16) for v in row["ecap_or_efr"].split(",")]
        regs = {"efr": values[0]} | ({"efr2": values[1]} if len(values) > 1 else {})
        unit = unitmod.amd_unit(name, regs, kernel=AMD_KERNEL)
    return unit if unit.aperture_bits is not None else None


@functools.cache
def usable_corpus_rows() -> dict[str, tuple[int, ...]]:
    """Corpus rows, by vendor, whose unit Linux uses for DMA translation (a VFIO device behind
    a unit without a usable SAGAW/HATS has no DMA domain at all, so it is no test case)."""
    out: dict[str, list[int]] = {"Intel": [], "AMD": []}
    for i, row in enumerate(corpus_rows()):
        if row["vendor"] == "Intel" and row["cap"] and row["ecap_or_efr"]:
            if corpus_unit(i, "u", scalable_mode=False) and corpus_unit(i, "u", scalable_mode=True):
                out["Intel"].append(i)
        elif row["vendor"] == "AMD" and row["ecap_or_efr"] and corpus_unit(i, "u", scalable_mode=False):
            out["AMD"].append(i)
    return {k: tuple(v) for k, v in out.items()}


@functools.cache
def x86_profiles() -> tuple[str, ...]:
    """Bundled profiles of x86 machines (an x86 guest with intel-iommu runs on these)."""
    return tuple(n for n in profile_names() if not n.startswith("arm-"))


@functools.cache
def profile_regions() -> tuple[ReservedRegion, ...]:
    """Every reserved region other than the MSI window that a bundled profile's device has."""
    found = {
        r
        for name in profile_names()
        for dev in load_profile(name).devices
        for r in dev.caps.reserved_regions
        if r.type is not ResvType.MSI and r != unitmod.AMD_HT_HOLE
    }
    return tuple(sorted(found))


# --- hosts -----------------------------------------------------------------------------------

Region = tuple[int, int, str]


@dataclass(frozen=True)
class HostRecipe:
    """How to build one host: a bundled profile, or corpus units with drawn regions."""

    name: str
    #: ``profile`` (``name`` is the profile) or ``corpus``.
    kind: str = "profile"
    #: Corpus row per unit; device i sits behind unit ``i % len(rows)``.
    rows: tuple[int, ...] = ()
    scalable_mode: bool = False
    #: Extra reserved regions per device (start, last, type), beside the MSI window.
    regions: tuple[tuple[Region, ...], ...] = ((), (), ())
    #: Per device: behind a PCIe-to-PCI bridge on the host (requester-ID alias).
    aliased: tuple[bool, ...] = (False, False, False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostRecipe:
        return cls(
            name=data["name"], kind=data["kind"], rows=tuple(data["rows"]),
            scalable_mode=data["scalable_mode"],
            regions=tuple(tuple((a, b, c) for a, b, c in dev) for dev in data["regions"]),
            aliased=tuple(data["aliased"]),
        )


@functools.cache
def build_host(recipe: HostRecipe) -> HostInventory:
    if recipe.kind == "profile":
        return load_profile(recipe.name)
    units = tuple(
        corpus_unit(row, f"unit{j}", scalable_mode=recipe.scalable_mode) for j, row in enumerate(recipe.rows)
    )
    devices, groups = [], []
    for i, bdf in enumerate(CORPUS_BDFS):
        unit = units[i % len(units)]
        regions = {MSI_X86} | {ReservedRegion(a, b, ResvType(t)) for a, b, t in recipe.regions[i]}
        if unit.iommu_type is IommuType.AMD and unitmod.amd_ht_hole_applies(unit.registers):
            regions.add(unitmod.AMD_HT_HOLE)
        group = IommuGroup(i + 1, "DMA-FQ", (bdf,), tuple(sorted(regions)))
        alias = PciAlias("0000:00:1e.0", f"0000:{5 + i:02x}:00.0") if recipe.aliased[i] else PciAlias()
        groups.append(group)
        devices.append(HostIOMMUDevice(bdf, device_caps(unit, group, alias=alias, backend="snapshot")))
    return HostInventory(
        backend="snapshot",
        reason="built by tests/strategies.py from corpus rows",
        skipped=(),
        machine=HostMachine(hostname=recipe.name, kernel="6.12"),
        scalable_mode=ScalableMode(recipe.scalable_mode, "test"),
        units=units,
        groups=tuple(groups),
        devices=tuple(devices),
    )


page_aligned = st.integers(0x1000, 0xF000_0000 >> 12).map(lambda n: n << 12)


@st.composite
def rmrr(draw: st.DrawFn) -> Region:
    """An RMRR as firmware writes them: real ones, or one of that shape (page-aligned, below
    4 GiB, 4 KiB to 64 MiB) at a random place; relaxable (USB, iGPU) or not (direct)."""
    real = profile_regions()
    if draw(st.booleans()):
        r = draw(st.sampled_from(real))
        return (r.start, r.last, r.type.value)
    start = draw(page_aligned)
    size = draw(st.sampled_from((0x1000, 0x3000, 0x20000, 0x400000, 0x4000000)))
    kind = draw(st.sampled_from((ResvType.DIRECT_RELAXABLE, ResvType.DIRECT)))
    return (start, min(start + size, 0xFFFF_FFFF + 1) - 1, kind.value)


def aperture(row: int, scalable_mode: bool) -> int:
    return int(corpus_unit(row, "u", scalable_mode=scalable_mode).aperture_bits)


@st.composite
def corpus_host(draw: st.DrawFn, name: str, *, mixed: bool = False) -> HostRecipe:
    """A host of one or two corpus units; ``mixed``: two VT-d units of different widths (the
    devices of one VM then see different host address widths)."""
    vendor = "Intel" if mixed else draw(st.sampled_from(("Intel", "Intel", "AMD")))
    count = 2 if mixed else draw(st.sampled_from((1, 2)))
    sm = vendor == "Intel" and draw(st.booleans())
    choices = st.sampled_from(usable_corpus_rows()[vendor])
    rows = tuple(draw(st.lists(choices, min_size=count, max_size=count)))
    if mixed:
        rows = (rows[0], draw(choices.filter(lambda r: aperture(r, sm) != aperture(rows[0], sm))))
    return HostRecipe(
        name=name,
        kind="corpus",
        rows=rows,
        scalable_mode=sm,
        # One region per range: the kernel keeps one type for an RMRR range.
        regions=tuple(
            tuple(draw(st.lists(rmrr(), max_size=2, unique_by=lambda r: (r[0], r[1])))) for _ in CORPUS_BDFS
        ),
        aliased=tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3))),
    )


def hosts(name: str) -> st.SearchStrategy[HostRecipe]:
    return st.one_of(
        st.sampled_from(x86_profiles()).map(lambda p: HostRecipe(name=p)),
        corpus_host(name),
        corpus_host(name, mixed=True),
    )


def mixed_hosts(name: str) -> st.SearchStrategy[HostRecipe]:
    return corpus_host(name, mixed=True)


def host_bdfs(recipe: HostRecipe) -> tuple[str, ...]:
    return tuple(d.name for d in build_host(recipe).devices)


# --- the VM ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmDevice:
    """One vfio-pci device: which host device (index, modulo the host's count), its VFIO
    backend and where it sits in the guest: the root bus, a root port, or behind a
    PCIe-to-PCI bridge."""

    slot: int
    iommufd: bool = False
    topology: str = "root"

    def vfio(self, index: int, host: HostRecipe) -> VfioDev:
        bdfs = host_bdfs(host)
        bus = {"root": None, "port0": "rp0", "port1": "rp1", "bridge": "pcibr0"}[self.topology]
        return VfioDev(
            host=bdfs[self.slot % len(bdfs)],
            id=f"hostdev{index}",
            iommufd="iommufd0" if self.iommufd else None,
            bus=bus,
            behind_pci_bridge=self.topology == "bridge",
        )


vm_devices = st.builds(
    VmDevice,
    slot=st.integers(0, 9),
    iommufd=st.booleans(),
    topology=st.sampled_from(("root", "root", "port0", "port1", "bridge")),
)


@st.composite
def intel_props(draw: st.DrawFn, version: str) -> dict[str, str]:
    """intel-iommu properties QEMU ``version`` realizes (its refusals are not what these tests
    are about): aw-bits, caching-mode, scalable mode, first-stage, fs1gp, PASID, device-IOTLB,
    interrupt remapping, DMA translation."""
    v = QemuVersion.parse(version)
    renamed = v.at_least(11, 0)
    props: dict[str, str] = {}

    def maybe(name: str, values: Sequence[str | None]) -> None:
        value = draw(st.sampled_from(values))
        if value is not None:
            props[name] = value

    maybe("caching-mode", ("on", "on", "on", "on", "on", "on", "off", None))
    scalable = draw(st.booleans())
    if scalable:
        props["scalable-mode" if renamed else "x-scalable-mode"] = "on"
    flts = v.at_least(10, 0) and scalable and draw(st.integers(0, 3)) == 0
    if flts:
        props["flts" if renamed else "x-flts"] = "on"
        maybe("aw-bits", ("48", None))
    else:
        maybe("aw-bits", ("39", "48", "48", None))
    if v.at_least(10, 0):
        maybe("fs1gp", ("on", "off", None))
    pasid = scalable and draw(st.integers(0, 3)) == 0
    if pasid:
        props["x-pasid-mode"] = "on"
    if renamed or not pasid:
        maybe("device-iotlb", ("on", None, None))
    maybe("intremap", ("on", "off", None))
    maybe("dma-translation", ("on", None, None, None, None, "off"))
    return props


#: virtio-iommu-pci machine types: q35 (aw-bits 39 from pc-q35-9.0), 8.2 (aw-bits 64, granule 4k).
VIRTIO_MACHINE_TYPES = (None, "pc-q35-8.2", "pc-q35-9.1")


@st.composite
def virtio_props(draw: st.DrawFn, version: str) -> dict[str, str]:
    """virtio-iommu-pci properties: aw-bits (32-64), granule, boot-bypass."""
    props: dict[str, str] = {}
    aw = draw(st.sampled_from((None, None, "32", "39", "40", "48", "52", "64")))
    if aw is not None:
        props["aw-bits"] = aw
    granule = draw(st.sampled_from((None, None, "host", "4k", "8k", "16k", "64k")))
    if granule is not None:
        props["granule"] = granule
    if draw(st.booleans()):
        props["boot-bypass"] = draw(st.sampled_from(("on", "off")))
    return props


DRIVER_PROPS = {"intel-iommu": intel_props, "virtio-iommu-pci": virtio_props}


@dataclass(frozen=True)
class Scenario:
    """One VM's life, as plain data."""

    policy: str
    version: str
    machine_type: str | None
    props: tuple[tuple[str, str], ...]
    hosts: tuple[HostRecipe, ...]
    devices: tuple[VmDevice, ...]
    cold: tuple[int, ...]
    #: After machine-done: ("hotplug", i), ("unplug", i), ("reset",),
    #: ("dma", i, anchor, pages_off, npages, page_index), ("migrate", host, version|None).
    events: tuple[tuple[Any, ...], ...] = ()
    driver: str = "intel-iommu"

    @property
    def spec(self) -> DeviceSpec:
        return DeviceSpec(self.driver, dict(self.props))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        return cls(
            policy=data["policy"], version=data["version"], machine_type=data["machine_type"],
            props=tuple((k, v) for k, v in data["props"]),
            hosts=tuple(HostRecipe.from_json(h) for h in data["hosts"]),
            devices=tuple(VmDevice(**d) for d in data["devices"]),
            cold=tuple(data["cold"]), events=tuple(tuple(e) for e in data["events"]),
            driver=data["driver"],
        )


ANCHORS = ("top", "bit39", "bit48", "msi_lo", "msi_hi", "resv_lo", "resv_hi", "zero", "mid")


def events(n_devices: int, n_hosts: int) -> st.SearchStrategy[tuple[Any, ...]]:
    dev = st.integers(0, n_devices - 1)
    choices: list[st.SearchStrategy[tuple[Any, ...]]] = [
        st.tuples(st.just("hotplug"), dev),
        st.tuples(st.just("unplug"), dev),
        st.just(("reset",)),
    ]
    dma = st.tuples(st.just("dma"), dev, st.sampled_from(ANCHORS), st.integers(-2, 1), st.integers(1, 2),
                    st.integers(0, 2))
    choices += [dma, dma, dma]
    if n_hosts > 1:
        choices.append(
            st.tuples(st.just("migrate"), st.integers(1, n_hosts - 1),
                      st.sampled_from((None, None, None, *VERSIONS)))
        )
    return st.one_of(choices)


@st.composite
def scenarios(
    draw: st.DrawFn,
    policies: Sequence[str] = ("check", "sync", "plan"),
    *,
    host_strategy: Callable[[str], st.SearchStrategy[HostRecipe]] = hosts,
    max_events: int = 8,
    drivers: Sequence[str] = ("intel-iommu",),
) -> Scenario:
    policy = draw(st.sampled_from(policies))
    driver = draw(st.sampled_from(drivers))
    version = draw(st.sampled_from(VERSIONS))
    n_hosts = draw(st.integers(1, 3))
    recipes = tuple(draw(host_strategy(f"host{i}")) for i in range(n_hosts))
    devices = tuple(draw(st.lists(vm_devices, min_size=1, max_size=4)))
    # At least one cold-plugged device: a VM started without any is the hotplug-only corner.
    cold = tuple(sorted(draw(st.sets(st.integers(0, len(devices) - 1), min_size=1))))
    return Scenario(
        policy=policy,
        version=version,
        machine_type=draw(st.sampled_from(
            machine_types(version) if driver == "intel-iommu" else VIRTIO_MACHINE_TYPES
        )),
        props=tuple(sorted(draw(DRIVER_PROPS[driver](version)).items())),
        hosts=recipes,
        devices=devices,
        cold=cold,
        events=tuple(draw(st.lists(events(len(devices), n_hosts), min_size=min(2, max_events),
                                   max_size=max_events))),
        driver=driver,
    )


# --- running a scenario ------------------------------------------------------------------------


def page_sizes(mask: int) -> list[int]:
    return [1 << b for b in range(64) if mask >> b & 1]


def anchor_iova(anchor: str, width: int, hiod: HostIOMMUDevice) -> int:
    """Where a drawn DMA map is aimed: the guest's top, the 39/48-bit edges, the MSI window,
    a host reserved region's edges, zero, or the middle of the guest space."""
    regions = hiod.caps.reserved_regions or (MSI_X86,)
    top = regions[-1]
    return {
        "top": 1 << width,
        "bit39": 1 << 39,
        "bit48": 1 << 48,
        "msi_lo": X86_INTERRUPT_WINDOW.start,
        "msi_hi": X86_INTERRUPT_WINDOW.last + 1,
        "resv_lo": top.start,
        "resv_hi": top.last + 1,
        "zero": 0,
        "mid": 1 << (width - 1),
    }[anchor]


@dataclass
class Run:
    """What running a scenario produced."""

    scenario: Scenario
    machine: Machine | None = None
    #: A Refusal raised while building the machine (plan: no-fitting-plan).
    plan_refusal: Refusal | None = None
    #: (event, decision, guest state right after it), in order.
    steps: list[tuple[tuple[Any, ...], Decision]] = field(default_factory=list)
    #: guest_state() right after machine-done.
    frozen_state: dict[str, Any] | None = None

    def trace_json(self) -> str:
        assert self.machine is not None
        return json.dumps([d.to_json() for d in self.machine.trace], indent=None)


def pool_of(s: Scenario) -> list[tuple[VfioDev, HostInventory]]:
    """Every (device, host) the VM may meet: its devices on its host and, moved to the
    same-numbered device, on every migration destination."""
    pool = [(d.vfio(i, s.hosts[0]), build_host(s.hosts[0])) for i, d in enumerate(s.devices)]
    for recipe in s.hosts[1:]:
        pool += [(d.vfio(i, recipe), build_host(recipe)) for i, d in enumerate(s.devices)]
    return pool


def run(
    s: Scenario,
    *,
    machine_cls: type[Machine] = Machine,
    on_step: Callable[[Run, tuple[Any, ...], Decision], None] | None = None,
) -> Run:
    """Play the scenario. Raises InputError when QEMU would not realize the vIOMMU at all."""
    result = Run(s)
    source = build_host(s.hosts[0])
    vm = [d.vfio(i, s.hosts[0]) for i, d in enumerate(s.devices)]
    try:
        m = machine_cls(
            s.spec, version=QemuVersion.parse(s.version), policy=Policy(s.policy),
            machine_type=s.machine_type, pool=pool_of(s) if s.policy == "plan" else (),
        )
    except Refusal as exc:
        result.plan_refusal = exc
        return result
    result.machine = m

    def step(event: tuple[Any, ...], decision: Decision) -> None:
        result.steps.append((event, decision))
        if on_step is not None:
            on_step(result, event, decision)

    for i in s.cold:
        step(("cold-plug", i), m.cold_plug(vm[i], source))
    step(("machine-done",), m.machine_done())
    result.frozen_state = m.guest_state()
    for event in s.events:
        kind = event[0]
        if kind == "hotplug":
            step(event, m.hotplug(vm[event[1]], source))
        elif kind == "unplug":
            step(event, m.unplug(vm[event[1]].label))
        elif kind == "reset":
            step(event, m.reset())
        elif kind == "dma":
            _, i, anchor, off, npages, page_index = event
            plugged = m.devices.get(vm[i].label)
            if plugged is None:
                continue
            view = m.model.guest_view(plugged.alias or plugged.addr)
            sizes = page_sizes(view.page_sizes) or [4096]
            page = sizes[page_index % len(sizes)]
            base = anchor_iova(anchor, view.width_bits, plugged.hiod)
            iova = max(0, base - base % page + off * page)
            decision = m.dma_map(vm[i].label, iova, npages * page, page)
            step(event, decision)
            if decision.accepted:
                m.dma_unmap(vm[i].label, iova, npages * page)
        elif kind == "migrate":
            _, h, version = event
            recipe = s.hosts[h]
            moved = {vm[j].label: d.vfio(j, recipe).host for j, d in enumerate(s.devices)}
            dest_version = QemuVersion.parse(version) if version else None
            step(event, m.migrate(build_host(recipe), version=dest_version, devices=moved))
        else:
            raise AssertionError(f"unknown event {event!r}")
    return result


def edge_mappings(width: int, page_mask: int, hiod: HostIOMMUDevice) -> Iterator[tuple[int, int, int]]:
    """(iova, size, page) near every edge that matters: the guest's top, 2^39 and 2^48, the
    MSI window, each host reserved region and usable window, and zero; one and two pages,
    from two pages below to one page above each edge."""
    anchors = {0, 1 << width, 1 << 39, 1 << 48, X86_INTERRUPT_WINDOW.start, X86_INTERRUPT_WINDOW.last + 1}
    for r in hiod.caps.reserved_regions:
        anchors |= {r.start, r.last + 1}
    for w in hiod.get_iova_ranges():
        anchors |= {w.start, w.last + 1}
    sizes = page_sizes(page_mask)
    # The three smallest (4K, 8K, 16K under a wide virtio mask) and the superpages.
    for page in sorted(set(sizes[:3]) | {p for p in sizes if p in (1 << 21, 1 << 30)}):
        for a in sorted(anchors):
            base = a - a % page
            for k in (-2, -1, 0, 1):
                iova = base + k * page
                if iova >= 0:
                    yield iova, page, page
                    yield iova, 2 * page, page


def main() -> int:
    """``python tests/strategies.py [--broken NAME]``: read scenarios (a JSON list) on stdin,
    print each trace's JSON, one a line (the cross-process determinism test runs this)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    machine_cls: type[Machine] = Machine
    if len(sys.argv) == 3 and sys.argv[1] == "--broken":
        import test_invariants

        machine_cls = getattr(test_invariants, sys.argv[2])
    for data in json.load(sys.stdin):
        try:
            print(run(Scenario.from_json(data), machine_cls=machine_cls).trace_json())
        except InputError as exc:
            print(json.dumps({"input-error": str(exc)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
