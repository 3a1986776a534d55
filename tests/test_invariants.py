"""Property tests of DESIGN.md's invariants, for the check, sync and plan policies.

Scenarios (``tests/strategies.py``) draw hosts from real register values (the
bundled profiles, or corpus rows turned into units and usable ranges as Linux
would, with real reserved-region shapes), the VM's VFIO devices (legacy or
iommufd backend; root bus, root port, or behind a PCIe-to-PCI bridge),
intel-iommu (QEMU 9.1-11.0) or virtio-iommu-pci (aw-bits 32-64, every granule,
boot-bypass; q35 and its 8.2/9.1 compat types) properties, and event sequences: cold plugs,
machine-done, hotplug, unplug, reset, DMA maps, migration to another drawn
host (and QEMU version). Each invariant, in terms of the machine API:

Safety
    After every event, for every accepted device ``p`` (``machine.devices``),
    with ``view = machine.model.guest_view(p.alias or p.addr)``: every
    ``(iova, size, page)`` that ``view.legal`` allows succeeds on a fresh
    ``HostDomain.of(p.hiod)`` (``why_not`` is None), and no ``dma-map``
    decision fails with ``host-map-failed``. Mappings are drawn near every
    edge (just below and above 2^aw-bits, 2^39, 2^48, the MSI window, each
    host reserved region and usable window, zero), at every guest page size,
    one and two pages long.

    Domain. intel-iommu's check compares only the address width (brief
    §5.3 item 3), and its guest sees no reserved region but the x86
    interrupt window. So for ``check`` (and ``sync``/``plan``, which end in
    the same check) Safety is claimed exactly for host devices whose every
    non-relaxable reserved region (msi, reserved, direct) either lies inside
    0xFEE00000-0xFEEFFFFF or starts above the guest's last IOVA, and whose
    smallest IOMMU page is at most 4 KiB (:func:`in_safety_domain`). Outside
    it (AMD's HyperTransport hole under aw-bits 48, a non-relaxable RMRR) the
    guest can map IOVAs the host cannot: :func:`test_safety_gap_amd_ht_hole`
    shows it on a real profile. virtio-iommu's guest learns every host
    reserved range (the complement of the usable ranges, the aperture's end
    included) by PROBE and a hotplugged host must support the frozen granule,
    so there Safety is claimed for every host device that reports usable
    ranges (one that reports none is not registered at all, brief §5.3 item
    4; no drawn host does). Policy ``none`` (QEMU before 9.1) breaks Safety
    inside the domain, for both models.

Stability
    ``guest_state()`` right after machine-done equals ``Decision.state`` of
    every later event and ``guest_state()`` at the end, through hotplug,
    unplug, reset and migration. A migration is accepted exactly when the
    destination (the same command line, the planned one under plan, realized
    on the destination and given the VM's devices) accepts every device and
    exposes the same state; when that state differs it is refused with
    ``migration-state-mismatch`` and every differing field named.

Maximality (sync, plan)
    No cap the model narrows could be one step wider: for intel-iommu,
    aw-bits 39 -> 48 (not in first-stage mode, where 48 is the only value)
    and fs1gp off -> on (first-stage, 11.0). Widening must either exceed the
    request (sync: the requested properties with the release's defaults;
    plan: the user's explicit values, else the widest the model offers: 48,
    fs1gp on) or make some device refuse by :func:`intel_refuses` (sync: the
    accepted cold-plugged devices at machine-done; plan: every pool device).
    Nor may the result exceed the request. virtio-iommu: aw-bits -> aw-bits + 1
    must exceed the request (plan: the user's value, else 64) or some device's
    host width (the sync rule; hosts under 32 bits cannot be met), and the
    page-size mask at machine-done must be exactly the granule's mask cut by
    every accepted cold-plugged device's host mask (no bit they all support
    dropped).

No false refusals
    A cold plug or hotplug whose device :func:`intel_refuses` accepts under
    the vIOMMU's properties at that moment (``machine.spec``) is accepted;
    a plan is refused (``no-fitting-plan``) only when no value of the
    properties plan may set fits every pool device. :func:`intel_refuses` and
    :func:`virtio_refuses` (against the mask the guest saw just before, the
    frozen flag, and the aliases holding host ranges: registered devices' and
    those a failed page-size check left behind) are written from the brief's
    rules (qemu-framework §2.2, §3.1, §4.1, §4.2), not from the models.

Determinism
    The same scenario gives byte-identical JSON of the trace, in one process
    and across processes with different ``PYTHONHASHSEED``.

Each invariant's check is shown to find a counterexample on a deliberately
broken variant (``test_broken_*``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, find, given, reject, settings
from hypothesis import strategies as st

from strategies import (
    HostRecipe,
    Run,
    Scenario,
    VmDevice,
    build_host,
    edge_mappings,
    pool_of,
    run,
    scenarios,
)
from viommu.dma import HOST_MAP_FAILED, X86_INTERRUPT_WINDOW, GuestView, HostDomain, lowest_page
from viommu.errors import InputError, Refusal
from viommu.host.caps import HostIOMMUCaps, IommuType, ResvType
from viommu.host.device import HostIOMMUDevice
from viommu.host.profiles import load_profile
from viommu.machine import Decision, Machine, Plan, Policy, plan_properties
from viommu.models import registry
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.models.virtio import VirtioIOMMU
from viommu.vm import VfioDev

#: CI-stable: the same examples every run, no example database, no deadline.
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: For hunting a counterexample on a broken variant: the first one found (no shrinking).
FIND = settings(max_examples=300, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

POLICIES = ("check", "sync", "plan")
INTEL, VIRTIO = "intel-iommu", "virtio-iommu-pci"
DRIVERS = pytest.mark.parametrize("driver", [INTEL, VIRTIO])


def note_event(text: str) -> None:
    """Count ``text`` for pytest --hypothesis-show-statistics (only inside a Hypothesis test)."""
    if currently_in_test_context():
        event(text)
Event = tuple[Any, ...]
StepCheck = Callable[[Run, Event, Decision], list[str]]


def play(s: Scenario, check: StepCheck, *, machine_cls: type[Machine] = Machine,
         final: Callable[[Run], list[str]] | None = None) -> list[str]:
    """Run ``s`` calling ``check`` after every event; the violations found."""
    found: list[str] = []
    try:
        r = run(s, machine_cls=machine_cls, on_step=lambda r, e, d: found.extend(check(r, e, d)))
    except InputError:
        reject()  # QEMU does not realize this vIOMMU: no machine to hold to anything
    if final is not None:
        found += final(r)
    # Coverage, shown by pytest --hypothesis-show-statistics.
    note_event(f"policy {s.policy}")
    if r.machine is None:
        note_event("plan refused")
    else:
        plugs = [d for _, d in r.steps if d.event in ("cold-plug", "hotplug")]
        note_event(f"accepted plugs: {sum(d.accepted for d in plugs)}")
        note_event(f"refused plugs: {sum(not d.accepted for d in plugs)}")
        decisions = [d for _, d in r.steps]
        if any(d.event == "migrate" for d in decisions):
            note_event("migrated" if any(d.accepted for d in decisions if d.event == "migrate")
                  else "migration refused")
    return found


# --- the independent compatibility predicate ------------------------------------------------


def _flag(props: Mapping[str, str], name: str, default: bool) -> bool:
    value = props.get(name)
    return default if value is None else value in ("on", "true", "yes")


def intel_aw_bits(props: Mapping[str, str], version: QemuVersion, machine_type: str | None) -> int:
    """aw-bits as QEMU resolves it: 48 by default from 10.0, 39 before and on machine types
    pc-q35-9.1 and older (pc_compat_9_1; brief §3.1)."""
    if "aw-bits" in props:
        return int(props["aw-bits"])
    old_machine = machine_type is not None and machine_type.startswith("pc-q35-") and tuple(
        int(x) for x in machine_type[len("pc-q35-"):].split(".")[:2]
    ) <= (9, 1)
    return 48 if version.at_least(10, 0) and not old_machine else 39


def host_aw_bits(caps: HostIOMMUCaps) -> int:
    """vfio_device_get_aw_bits (brief §2.3): index of the top bit of the last usable range's end,
    plus one; 64 without ranges (iommufd falls back to [0, UINT64_MAX])."""
    ranges = caps.iova_ranges
    if not ranges:
        return 64
    return max(r.last for r in ranges).bit_length()


def intel_refuses(
    props: Mapping[str, str],
    version: QemuVersion,
    machine_type: str | None,
    caps: HostIOMMUCaps,
    *,
    iommufd: bool,
    behind_bridge: bool,
    hotplug: bool,
) -> str | None:
    """Which of QEMU's rules (brief §4.1) refuses this device, or None when it is accepted.

    caching-mode (set_iommu_device from 10.2; before, the hotplug hook), host aw-bits,
    first-stage: refused 10.0-10.2, needs iommufd, a VT-d host, FL1GP (host CAP bit 56)
    when fs1gp is on, and no PCI bridge in between.
    """
    renamed = version.at_least(11, 0)
    if not _flag(props, "caching-mode", False) and (hotplug or version.at_least(10, 2)):
        return "caching-mode"
    if intel_aw_bits(props, version, machine_type) > host_aw_bits(caps):
        return "aw-bits"
    if not version.at_least(10, 0) or not _flag(props, "flts" if renamed else "x-flts", False):
        return None
    if not renamed:
        return "flts"
    if not iommufd:
        return "flts-backend"
    if caps.iommu_type is not IommuType.INTEL_VTD:
        return "flts-type"
    if _flag(props, "fs1gp", True) and not caps.registers.get("cap", 0) >> 56 & 1:
        return "fs1gp"
    if behind_bridge or caps.alias.aliased:
        return "flts-bridge"
    return None


def virtio_aw_bits(props: Mapping[str, str], machine_type: str | None) -> int:
    """virtio-iommu's aw-bits: 64 by class default, 39 from the q35 9.0 machine compat on
    (brief §4.2; read from the 10.0 binary, models/virtio.py)."""
    if "aw-bits" in props:
        return int(props["aw-bits"])
    old = machine_type is not None and tuple(int(x) for x in machine_type.split("-")[-1].split(".")) <= (8, 2)
    return 64 if old else 39


def virtio_initial_mask(props: Mapping[str, str], machine_type: str | None) -> int:
    """-granule as a mask (brief §4.2): host is the x86 page size, 4 KiB; default host
    (hw_compat_8_2: 4k)."""
    sizes = {"4k": 1 << 12, "8k": 1 << 13, "16k": 1 << 14, "64k": 1 << 16, "host": 1 << 12}
    return ((1 << 64) - 1) & -sizes[props.get("granule", "host")]


def virtio_host_mask(caps: HostIOMMUCaps, *, iommufd: bool) -> int:
    """get_page_size_mask (brief §2.2): the container's iova_pgsizes, or the IOAS alignment
    under iommufd; the host page size when unknown."""
    return (caps.iova_alignment if iommufd else caps.page_size_mask) or 4096


def virtio_refuses(caps: HostIOMMUCaps, *, iommufd: bool, key: str, mask: int, frozen: bool,
                   taken: set[str]) -> str | None:
    """virtio_iommu_set_iommu_device's rules (brief §4.2) against the current mask: no ranges
    accepts; an alias (or address) that already holds host ranges refuses; then the masks must
    intersect and, once frozen, the host must support the granule."""
    if not caps.iova_ranges and not iommufd:
        return None
    if key in taken:
        return "aliased-bdf"
    new = virtio_host_mask(caps, iommufd=iommufd)
    if not mask & new:
        return "page-size"
    if frozen and not new & (mask & -mask):
        return "frozen-granule"
    return None


# --- Safety -----------------------------------------------------------------------------------


def in_safety_domain(hiod: HostIOMMUDevice, view: GuestView, model: str = INTEL) -> bool:
    """Whether this host device is one the vIOMMU's check makes safe (module docstring).

    virtio-iommu: every host device with usable ranges (its guest learns each host reserved
    range by PROBE, and the frozen granule is checked on hotplug). intel-iommu: see above.
    """
    if model == VIRTIO:
        return bool(hiod.get_iova_ranges())
    for r in hiod.caps.reserved_regions:
        if r.type is ResvType.DIRECT_RELAXABLE or r.start > view.last_iova:
            continue
        if X86_INTERRUPT_WINDOW.start <= r.start and r.last <= X86_INTERRUPT_WINDOW.last:
            continue
        return False
    return lowest_page(hiod.get_page_size_mask()) <= 4096


def safety_step(r: Run, event: Event, decision: Decision) -> list[str]:
    m = r.machine
    assert m is not None
    out: list[str] = []
    for label, p in m.devices.items():
        view = m.model.guest_view(p.alias or p.addr)
        if not in_safety_domain(p.hiod, view, m.model.model):
            note_event("a device outside the safety domain")
            continue
        note_event(f"in the safety domain: guest {view.width_bits} bits, host {p.hiod.caps.aw_bits}")
        if decision.code == HOST_MAP_FAILED and decision.target == label:
            out.append(f"after {event}: {label}: a legal guest map failed on the host: {decision.message}")
        domain = HostDomain.of(p.hiod)
        for iova, size, page in edge_mappings(view.width_bits, view.page_sizes, p.hiod):
            error = view.legal(iova, size, page) and domain.why_not(iova, size)
            if error:
                out.append(f"after {event}: {label} may map 0x{iova:x}+0x{size:x} (page 0x{page:x}) "
                           f"through the vIOMMU, the host says: {error}")
                break
    return out


@DRIVERS
@SETTINGS
@given(data=st.data())
def test_safety(driver: str, data: st.DataObject) -> None:
    s = data.draw(scenarios(POLICIES, drivers=(driver,)))
    assert play(s, safety_step) == []


SEED_SPEC = "intel-iommu,aw-bits=48,caching-mode=on"
#: The default profile: a real 39-bit VT-d laptop (Comet Lake-U, Dell XPS 13 7390).
SEED_HOST = "intel-cometlake-u-xps13-7390"


def _seed_machine(policy: Policy) -> tuple[Machine, Decision, Decision]:
    host = load_profile(SEED_HOST)
    m = Machine(DeviceSpec.parse(SEED_SPEC), version=QemuVersion(10, 0), policy=policy)
    cold = m.cold_plug(VfioDev(host="0000:01:00.0", id="hostdev0"), host)
    m.machine_done()
    hot = m.hotplug(VfioDev(host="0000:02:00.0", id="hostdev1", bus="rp0"), host)
    return m, cold, hot


def test_none_violates_safety_on_the_seed_case() -> None:
    # The seed series' case: aw-bits 48 over a 39-bit host; cold plug, then hotplug after boot.
    m, cold, hot = _seed_machine(Policy.NONE)
    assert cold.accepted and hot.accepted
    found = []
    for label, p in m.devices.items():
        view = m.model.guest_view(p.addr)
        assert in_safety_domain(p.hiod, view)
        assert view.legal(1 << 39, 4096, 4096)  # the first IOVA a 39-bit host cannot map
        d = m.dma_map(label, 1 << 39, 4096)
        assert (d.accepted, d.code, d.detail["stage"]) == (False, HOST_MAP_FAILED, "host")
        found.append(label)
    assert found == ["hostdev0", "hostdev1"]


def test_check_refuses_the_seed_case() -> None:
    _, cold, hot = _seed_machine(Policy.CHECK)
    # QEMU's text: brief §4.1 ("aw-bits %d > host aw-bits %d") after vfio's 10.0 prefix.
    assert cold.message == "vfio 0000:01:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39"
    assert hot.message == "vfio 0000:02:00.0: Failed to set vIOMMU: aw-bits 48 > host aw-bits 39"
    assert cold.code == hot.code == "aw-bits-exceeds-host"


def test_none_violates_safety_found_by_search() -> None:
    s = find(scenarios(("none",)), lambda s: bool(play(s, safety_step)), settings=FIND)
    assert any("the host says" in v or "failed on the host" in v for v in play(s, safety_step))


def test_safety_gap_amd_ht_hole() -> None:
    """A QEMU limitation (brief §5.3 item 3), not a model bug: on an AMD host Linux reserves the
    HyperTransport window 0xFD_0000_0000-0xFF_FFFF_FFFF (linux-uapi brief §4.1), inside a 48-bit
    guest space, but the host's last usable range ends at 2^64-1, so aw-bits 48 passes the check
    and the guest may map IOVAs there that the host refuses."""
    host = load_profile("amd-epyc-genoa")
    m = Machine(DeviceSpec.parse("intel-iommu,aw-bits=48,caching-mode=on"), policy=Policy.CHECK)
    assert m.cold_plug(VfioDev(host="0000:01:00.0", id="nic"), host).accepted
    m.machine_done()
    p = m.devices["nic"]
    view = m.model.guest_view(p.addr)
    assert not in_safety_domain(p.hiod, view)
    assert view.legal(0xFD_0000_0000, 4096, 4096)
    d = m.dma_map("nic", 0xFD_0000_0000, 4096)
    assert (d.accepted, d.code) == (False, HOST_MAP_FAILED)
    # With aw-bits 39 the hole lies above the guest's space: inside the domain, and safe.
    m39 = Machine(DeviceSpec.parse("intel-iommu,aw-bits=39,caching-mode=on"), policy=Policy.CHECK)
    assert m39.cold_plug(VfioDev(host="0000:01:00.0", id="nic"), host).accepted
    p39 = m39.devices["nic"]
    assert in_safety_domain(p39.hiod, m39.model.guest_view(p39.addr))
    idle = Run(Scenario("check", "10.0", None, (), (), (), ()), m39)
    assert safety_step(idle, ("cold-plug", 0), m39.trace[-1]) == []


def test_safety_gap_direct_rmrr() -> None:
    # A non-relaxable RMRR (intel-skylake-sp-2s 0000:18:00.0: 0x7a7e1000-0x7a7e3fff, 'direct'),
    # invisible to the guest. Linux refuses to attach such a device to a VFIO (non-identity)
    # domain at all (the profile's note says so), so this gap is theoretical on real kernels.
    host = load_profile("intel-skylake-sp-2s")
    m = Machine(DeviceSpec.parse("intel-iommu,caching-mode=on"), policy=Policy.CHECK)
    assert m.cold_plug(VfioDev(host="0000:18:00.0", id="nic"), host).accepted
    p = m.devices["nic"]
    assert not in_safety_domain(p.hiod, m.model.guest_view(p.addr))
    d = m.dma_map("nic", 0x7A7E1000, 4096)
    assert (d.accepted, d.code) == (False, HOST_MAP_FAILED)


class _NoAwCheck(IntelIOMMU):
    """Broken: set_iommu_device skips the aw-bits check."""

    def _check_hiod(self, hiod: HostIOMMUDevice, *, behind_bridge: bool) -> None:
        if self.config.flts:
            super()._check_hiod(hiod, behind_bridge=behind_bridge)


@contextmanager
def viommu_class(cls: type[IntelIOMMU] | type[VirtioIOMMU]) -> Iterator[None]:
    """Make the machine build ``cls`` for every vIOMMU."""
    def create(spec: DeviceSpec, version: QemuVersion, *, machine: str | None = None,
               irqchip: object = None, where: str | None = None) -> IntelIOMMU | VirtioIOMMU:
        return cls(spec, version, machine=machine, where=where)

    with mock.patch.object(registry, "create", create):
        yield


def test_none_violates_safety_virtio_found_by_search() -> None:
    # Without set_iommu_device the guest never learns the host's reserved ranges.
    s = find(scenarios(("none",), drivers=(VIRTIO,)), lambda s: bool(play(s, safety_step)), settings=FIND)
    assert play(s, safety_step)


class _NoHostRanges(VirtioIOMMU):
    """Broken: virtio-iommu keeps no host reserved ranges (nothing reaches the guest's PROBE)."""

    def set_iommu_device(self, addr: Any, hiod: HostIOMMUDevice, *, hotplug: bool, alias: Any = None) -> None:
        super().set_iommu_device(addr, hiod, hotplug=hotplug, alias=alias)
        self._host_resv[alias if alias is not None else addr] = ()


def test_broken_virtio_without_host_ranges_violates_safety() -> None:
    with viommu_class(_NoHostRanges):
        s = find(scenarios(("check",), drivers=(VIRTIO,)), lambda s: bool(play(s, safety_step)),
                 settings=FIND)
        assert any("the host says" in v for v in play(s, safety_step))


def test_broken_no_aw_check_violates_safety() -> None:
    with viommu_class(_NoAwCheck):
        s = find(scenarios(("check",)), lambda s: bool(play(s, safety_step)), settings=FIND)
        assert play(s, safety_step)


# --- Stability --------------------------------------------------------------------------------


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested guest state as dotted paths (virtio's input_range.end)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    fa, fb = flatten(a), flatten(b)
    return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


def expected_migration(r: Run, event: Event) -> tuple[str, set[str]]:
    """What the destination does, from DESIGN.md: ("refused", {}), ("mismatch", fields) or
    ("accepted", {})."""
    m = r.machine
    assert m is not None
    s = r.scenario
    _, h, version = event
    recipe = s.hosts[h]
    dest = build_host(recipe)
    policy = Policy(s.policy)
    spec = m.plan.spec if m.plan is not None else s.spec
    try:
        other = Machine(spec, version=QemuVersion.parse(version) if version else m.version,
                        policy=Policy.CHECK if policy is Policy.PLAN else policy,
                        machine_type=s.machine_type)
    except InputError:
        return "refused", set()
    index = {f"hostdev{i}": i for i in range(len(s.devices))}
    ok = True
    for label in sorted(m.devices):
        i = index[label]
        moved = s.devices[i].vfio(i, recipe)
        ok &= other.cold_plug(moved, dest).accepted
    ok &= other.machine_done().accepted
    if not ok:
        return "refused", set()
    fields = flat_diff(m.guest_state(), other.guest_state())
    return ("mismatch", fields) if fields else ("accepted", set())


def stability_step(r: Run, event: Event, decision: Decision) -> list[str]:
    if r.frozen_state is None:
        return []  # before machine-done caps may still change (sync)
    m = r.machine
    assert m is not None
    out = []
    for what, state in (("decision", decision.state), ("guest_state()", m.guest_state())):
        changed = flat_diff(r.frozen_state, state)
        if changed:
            out.append(f"after {event}: {what} changed {sorted(changed)} since machine-done")
    if event[0] == "migrate":
        kind, fields = expected_migration(r, event)
        if kind == "accepted" and not decision.accepted:
            out.append(f"{event}: refused ({decision.code}) though the destination fits and matches")
        if kind != "accepted" and decision.accepted:
            out.append(f"{event}: accepted though the destination {kind} {sorted(fields)}")
        if kind == "mismatch" and decision.code == "migration-state-mismatch":
            named = {d["field"] for d in decision.detail["differences"]}
            if named != fields or not all(f in (decision.message or "") for f in fields):
                out.append(f"{event}: names {sorted(named)}, the states differ in {sorted(fields)}")
        elif kind == "mismatch":
            out.append(f"{event}: destination state differs in {sorted(fields)}, code {decision.code}")
    return out


@DRIVERS
@SETTINGS
@given(data=st.data())
def test_stability(driver: str, data: st.DataObject) -> None:
    s = data.draw(scenarios(POLICIES, drivers=(driver,)))
    assert play(s, stability_step) == []


def test_migration_mismatch_names_the_fields() -> None:
    # check, no explicit aw-bits: 9.2 defaults to 39, 10.0 to 48 (brief §3.1), so CAP differs.
    host = load_profile("intel-icelake-sp")
    m = Machine(DeviceSpec.parse("intel-iommu,caching-mode=on"), version=QemuVersion(9, 2))
    m.cold_plug(VfioDev(host="0000:18:00.0", id="nic"), host)
    m.machine_done()
    before = m.guest_state()
    d = m.migrate(host, version=QemuVersion(10, 0))
    assert (d.accepted, d.code) == (False, "migration-state-mismatch")
    assert "cap" in d.message and {x["field"] for x in d.detail["differences"]} >= {"cap"}
    assert m.guest_state() == before == d.state


class _NarrowsAfterDone(Machine):
    """Broken: sync keeps narrowing after machine-done (on hotplug)."""

    def _plug(self, dev: VfioDev, host: Any, *, hotplug: bool) -> Decision:
        frozen, self.frozen = self.frozen, False
        try:
            return super()._plug(dev, host, hotplug=hotplug)
        finally:
            self.frozen = frozen


def test_broken_sync_narrowing_after_done_violates_stability() -> None:
    s = find(scenarios(("sync",)), lambda s: bool(play(s, stability_step, machine_cls=_NarrowsAfterDone)),
             settings=FIND)
    assert any("changed" in v for v in play(s, stability_step, machine_cls=_NarrowsAfterDone))


class _MaskNarrowsAfterDone(VirtioIOMMU):
    """Broken: the page-size mask keeps narrowing after machine-done (how QEMU before 9.1 synced
    it, when VFIO registered its notifier, after the guest had read the config; brief §4.2)."""

    def set_iommu_device(self, addr: Any, hiod: HostIOMMUDevice, *, hotplug: bool, alias: Any = None) -> None:
        super().set_iommu_device(addr, hiod, hotplug=hotplug, alias=alias)
        self.page_size_mask &= hiod.get_page_size_mask()


def test_broken_virtio_mask_after_done_violates_stability() -> None:
    with viommu_class(_MaskNarrowsAfterDone):
        s = find(scenarios(("check",), drivers=(VIRTIO,)), lambda s: bool(play(s, stability_step)),
                 settings=FIND)
        assert any("page_size_mask" in v for v in play(s, stability_step))


# --- Maximality -------------------------------------------------------------------------------


def widenings(props: Mapping[str, str], version: QemuVersion, machine_type: str | None) -> dict[str, str]:
    """The next wider value of each cap intel-iommu's narrowing touches, where there is one."""
    renamed = version.at_least(11, 0)
    flts = version.at_least(10, 0) and _flag(props, "flts" if renamed else "x-flts", False)
    out = {}
    if not flts and intel_aw_bits(props, version, machine_type) == 39:
        out["aw-bits"] = "48"
    if flts and version.at_least(10, 0) and not _flag(props, "fs1gp", True):
        out["fs1gp"] = "on"
    return out


def _bound_ok(name: str, value: str, bound: Mapping[str, str], version: QemuVersion,
              machine_type: str | None) -> bool:
    """Whether ``name=value`` stays within the request ``bound``."""
    if name == "aw-bits":
        return int(value) <= intel_aw_bits(bound, version, machine_type)
    return _flag(bound, name, True) or value == "off"


Device = tuple[HostIOMMUCaps, bool, bool]  # caps, iommufd, behind a guest PCI bridge


def maximality_violations(props: Mapping[str, str], bound: Mapping[str, str], version: QemuVersion,
                          machine_type: str | None, devices: list[Device], what: str) -> list[str]:
    out = []
    for name, value in widenings(props, version, machine_type).items():
        if not _bound_ok(name, value, bound, version, machine_type):
            continue
        wider = {**props, name: value}
        if all(intel_refuses(wider, version, machine_type, caps, iommufd=fd, behind_bridge=br,
                             hotplug=False) is None for caps, fd, br in devices):
            out.append(f"{what}: {name}={props.get(name)} could be {value}: every device still fits")
    for name in ("aw-bits", "fs1gp"):
        if name in props and not _bound_ok(name, props[name], bound, version, machine_type):
            out.append(f"{what}: {name}={props[name]} exceeds the request {dict(bound)}")
    return out


def plan_bound(s: Scenario) -> dict[str, str]:
    """plan's upper bounds: the user's values, else the widest intel-iommu offers (aw-bits 48:
    'Supported values for aw-bits are: 39, 48'; fs1gp on)."""
    return {"aw-bits": "48", "fs1gp": "on", **dict(s.props)}


def pool_devices(s: Scenario) -> list[Device]:
    return [(host.device(dev.host).caps, dev.iommufd is not None, dev.behind_pci_bridge)
            for dev, host in pool_of(s)]


def virtio_maximality(props: Mapping[str, str], bound: Mapping[str, str], machine_type: str | None,
                      devices: list[Device], cold: list[Device], mask: int, what: str) -> list[str]:
    """aw-bits: within the request, and not below it unless aw-bits + 1 exceeds some device's
    host width (the sync rule: the guest never gets IOVAs the host cannot map; hosts below 32
    bits cannot be met). Page-size mask: exactly the granule's mask cut by every cold-plugged
    device's host mask, as QEMU narrows it: no bit the devices all support is dropped."""
    out = []
    aw, top = virtio_aw_bits(props, machine_type), virtio_aw_bits(bound, machine_type)
    if aw > top:
        out.append(f"{what}: aw-bits={aw} exceeds the request {top}")
    elif aw < top and all(host_aw_bits(c) >= aw + 1 for c, _, _ in devices if host_aw_bits(c) >= 32):
        out.append(f"{what}: aw-bits={aw} could be {aw + 1}: every device's host is at least that wide")
    expected = virtio_initial_mask(props, machine_type)
    for caps, fd, _ in cold:
        if caps.iova_ranges or fd:
            expected &= virtio_host_mask(caps, iommufd=fd)
    if mask != expected:
        out.append(f"{what}: page_size_mask 0x{mask:x}, the granule and the cold-plugged hosts allow "
                   f"0x{expected:x}")
    return out


def maximality_step(r: Run, event: Event, decision: Decision) -> list[str]:
    m = r.machine
    assert m is not None
    s = r.scenario
    if event[0] != "machine-done":
        return []
    if s.driver == VIRTIO:
        cold = [(p.hiod.caps, p.hiod.kind.is_iommufd, p.dev.behind_pci_bridge) for p in m.devices.values()]
        mask = int(m.guest_state()["page_size_mask"], 16)
        if s.policy == "plan":
            # plan's bound for a default cap is the widest the model offers: aw-bits 64
            # ("aw-bits must be within [32,64]").
            return virtio_maximality(m.spec.props, {"aw-bits": "64", **dict(s.props)}, s.machine_type,
                                     pool_devices(s), cold, mask, "plan")
        return virtio_maximality(m.spec.props, dict(s.props), s.machine_type, cold, cold, mask, s.policy)
    if s.policy == "plan":
        assert m.plan is not None
        return maximality_violations(m.plan.spec.props, plan_bound(s), m.version, s.machine_type,
                                     pool_devices(s), "plan")
    if s.policy == "sync":
        plugged = [(p.hiod.caps, p.hiod.kind.is_iommufd, p.dev.behind_pci_bridge) for p in m.devices.values()]
        return maximality_violations(m.spec.props, dict(s.props), m.version, s.machine_type, plugged, "sync")
    return []


@DRIVERS
@settings(SETTINGS, max_examples=300)  # no events after machine-done: cheap, so more hosts
@given(data=st.data())
def test_maximality(driver: str, data: st.DataObject) -> None:
    s = data.draw(scenarios(("sync", "plan"), max_events=0, drivers=(driver,)))
    assert play(s, maximality_step) == []


def test_sync_refused_device_leaves_no_narrowing() -> None:
    # Regression (found by test_maximality): under sync a cold-plugged device that narrowed
    # aw-bits to 39 and was then refused (no caching-mode, checked in set_iommu_device from
    # 10.2) left the vIOMMU narrowed, though it never became part of the machine.
    host = load_profile(SEED_HOST)
    spec = DeviceSpec.parse("intel-iommu,caching-mode=off")
    m = Machine(spec, version=QemuVersion(10, 2), policy=Policy.SYNC)
    before = m.guest_state()
    d = m.cold_plug(VfioDev(host="0000:01:00.0", id="a"), host)
    assert (d.accepted, d.code) == (False, "caching-mode-required")
    assert "narrowed" not in d.detail
    assert m.spec == spec and m.guest_state() == before == d.state
    assert maximality_step(Run(Scenario("sync", "10.2", None, (), (), (), ()), m), ("machine-done",), d) == []


def _plan_pins_39(spec: DeviceSpec, version: QemuVersion, pool: Any, **kw: Any) -> Plan:
    """Broken: a plan that always picks aw-bits 39."""
    plan = plan_properties(spec, version, pool, **kw)
    return Plan(DeviceSpec(plan.spec.driver, {**plan.spec.props, "aw-bits": "39"}), plan.choices)


def test_broken_plan_always_39_violates_maximality() -> None:
    with mock.patch("viommu.machine.plan_properties", _plan_pins_39):
        s = find(scenarios(("plan",), max_events=0), lambda s: bool(play(s, maximality_step)), settings=FIND)
        assert any("aw-bits=39 could be 48" in v for v in play(s, maximality_step))


class _NarrowsTo39(IntelIOMMU):
    """Broken: sync narrows aw-bits to 39 for any host below 64 bits."""

    def narrowed(self, hiod: HostIOMMUDevice) -> dict[str, str]:
        if self.config.flts or hiod.get_cap(1) >= 64:
            return super().narrowed(hiod)
        return {"aw-bits": "39"}


def test_broken_sync_overnarrowing_violates_maximality() -> None:
    with viommu_class(_NarrowsTo39):
        s = find(scenarios(("sync",), max_events=0), lambda s: bool(play(s, maximality_step)), settings=FIND)
        assert any("could be 48" in v for v in play(s, maximality_step))


# --- No false refusals ------------------------------------------------------------------------


def plan_has_a_fit(s: Scenario) -> bool:
    """Whether some value of what plan may set (aw-bits, fs1gp, caching-mode=on, x-flts=off before
    11.0) fits every pool device by :func:`intel_refuses`."""
    version = QemuVersion.parse(s.version)
    bound = plan_bound(s)
    base = {**dict(s.props), "caching-mode": "on"}
    if not version.at_least(11, 0):
        base.pop("x-flts", None)
    for aw in ("48", "39"):
        for fs1gp in ("on", "off"):
            props = {**base, "aw-bits": aw, "fs1gp": fs1gp}
            if not (_bound_ok("aw-bits", aw, bound, version, s.machine_type)
                    and _bound_ok("fs1gp", fs1gp, bound, version, s.machine_type)):
                continue
            if all(intel_refuses(props, version, s.machine_type, caps, iommufd=fd, behind_bridge=br,
                                 hotplug=False) is None for caps, fd, br in pool_devices(s)):
                return True
    return False


def false_refusal_step(r: Run, event: Event, decision: Decision) -> list[str]:
    m = r.machine
    assert m is not None
    s = r.scenario
    if event[0] not in ("cold-plug", "hotplug") or decision.accepted or decision.code == "device-exists":
        return []
    i = event[1]
    dev = s.devices[i].vfio(i, s.hosts[0])
    caps = build_host(s.hosts[0]).device(dev.host).caps
    if s.driver == VIRTIO:
        key = decision.detail.get("alias") or decision.detail["guest_addr"]
        # Host ranges stay with an alias whose device failed the page-size checks (brief §4.2:
        # set before those checks, freed only by unset).
        stale = {d.detail.get("alias") or d.detail.get("guest_addr") for _, d in r.steps[:-1]
                 if d.code in ("page-size-incompatible", "frozen-granule-unsupported")}
        taken = {str(p.alias or p.addr) for p in m.devices.values()} | {k for k in stale if k}
        why = virtio_refuses(caps, iommufd=dev.iommufd is not None, key=key, taken=taken,
                             mask=int(m.trace[-2].state["page_size_mask"], 16),
                             frozen=r.frozen_state is not None)
        if why is None:
            return [f"{event}: {dev.label} ({dev.host}) fits {m.spec} but was refused: {decision.code}"]
        return []
    why = intel_refuses(m.spec.props, m.version, s.machine_type, caps, iommufd=dev.iommufd is not None,
                        behind_bridge=dev.behind_pci_bridge, hotplug=event[0] == "hotplug")
    if why is None:
        return [f"{event}: {dev.label} ({dev.host}) fits {m.spec} but was refused: {decision.code}"]
    return []


def virtio_plan_has_a_fit(s: Scenario) -> bool:
    """plan sets only aw-bits for virtio-iommu, which no check reads: a fit exists when every pool
    device fits a freshly realized device."""
    mask = virtio_initial_mask(dict(s.props), s.machine_type)
    return all(virtio_refuses(caps, iommufd=fd, key="k", mask=mask, frozen=False, taken=set()) is None
               for caps, fd, _ in pool_devices(s))


def plan_refusal_final(r: Run) -> list[str]:
    fits = virtio_plan_has_a_fit if r.scenario.driver == VIRTIO else plan_has_a_fit
    if r.plan_refusal is not None and fits(r.scenario):
        return [f"plan refused ({r.plan_refusal.code}) though a fitting value exists"]
    return []


@DRIVERS
@SETTINGS
@given(data=st.data())
def test_no_false_refusals(driver: str, data: st.DataObject) -> None:
    s = data.draw(scenarios(POLICIES, drivers=(driver,)))
    assert play(s, false_refusal_step, final=plan_refusal_final) == []


class _RefusesOddBuses(IntelIOMMU):
    """Broken: refuses every device on an odd guest bus number."""

    def set_iommu_device(self, addr: Any, hiod: HostIOMMUDevice, *, hotplug: bool, alias: Any = None) -> None:
        if addr.bus % 2:
            raise Refusal("aw-bits-exceeds-host", f"aw-bits {self.config.aw_bits} > host aw-bits 39")
        super().set_iommu_device(addr, hiod, hotplug=hotplug, alias=alias)


def test_broken_odd_buses_violates_no_false_refusals() -> None:
    with viommu_class(_RefusesOddBuses):
        s = find(scenarios(POLICIES), lambda s: bool(play(s, false_refusal_step)), settings=FIND)
        assert any("but was refused" in v for v in play(s, false_refusal_step))


# --- Determinism ------------------------------------------------------------------------------


def traces(s: Scenario, machine_cls: type[Machine] = Machine) -> tuple[str, str]:
    out = []
    for _ in range(2):
        try:
            r = run(s, machine_cls=machine_cls)
        except InputError:
            reject()
        plan = r.machine.plan.to_json() if r.machine and r.machine.plan else None
        refusal = r.plan_refusal and (r.plan_refusal.code, r.plan_refusal.message)
        out.append(json.dumps([r.trace_json() if r.machine else None, plan, refusal]))
    return out[0], out[1]


@SETTINGS
@given(scenarios(POLICIES, drivers=(INTEL, VIRTIO)))
def test_determinism(s: Scenario) -> None:
    first, second = traces(s)
    assert first == second


class _Timestamped(Machine):
    """Broken: every decision carries the time it was made."""

    def _record(self, event: str, target: str | None, accepted: bool, **kw: Any) -> Decision:
        kw["detail"] = {**(kw.get("detail") or {}), "at_ns": time.perf_counter_ns()}
        return super()._record(event, target, accepted, **kw)


class _SetOrdered(Machine):
    """Broken: every decision lists the plugged devices in a set's iteration order."""

    def _record(self, event: str, target: str | None, accepted: bool, **kw: Any) -> Decision:
        kw["detail"] = {**(kw.get("detail") or {}), "devices": list(set(self.devices))}
        return super()._record(event, target, accepted, **kw)


def test_broken_timestamp_violates_determinism() -> None:
    def differs(s: Scenario) -> bool:
        a, b = traces(s, _Timestamped)
        return a != b

    find(scenarios(POLICIES), differs, settings=FIND)


def _in_processes(scenario_list: list[Scenario], *args: str) -> list[str]:
    """The traces printed by ``tests/strategies.py`` run under two hash seeds."""
    here = Path(__file__).parent
    payload = json.dumps([s.to_json() for s in scenario_list])
    outs = []
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
        done = subprocess.run([sys.executable, str(here / "strategies.py"), *args], input=payload,
                              capture_output=True, text=True, env=env, check=True, timeout=120)
        outs.append(done.stdout)
    return outs


@pytest.fixture(scope="module")
def busy_scenarios() -> list[Scenario]:
    """One scenario per policy with three cold-plugged devices (root bus, root port, behind a
    bridge) on a 39-bit laptop, a migration to a 48-bit server, hotplug, unplug, reset, DMA."""
    laptop, server = HostRecipe(name="intel-cometlake-u-xps13-7390"), HostRecipe(name="intel-icelake-sp")
    devices = (VmDevice(2), VmDevice(7, iommufd=True, topology="port0"), VmDevice(8, topology="bridge"),
               VmDevice(9))
    events = (("dma", 0, "top", -1, 1, 0), ("hotplug", 3), ("unplug", 1), ("reset",), ("migrate", 1, None),
              ("hotplug", 1), ("dma", 2, "msi_lo", -1, 2, 0), ("migrate", 1, "10.2"))
    hosts, cold = (laptop, server), (0, 1, 2)
    intel = [Scenario(p, "10.0", None, (("caching-mode", "on"),), hosts, devices, cold, events)
             for p in POLICIES]
    virtio = [Scenario(p, "10.0", None, (("granule", "host"),), hosts, devices, cold, events, driver=VIRTIO)
              for p in POLICIES]
    return intel + virtio


def test_determinism_across_processes(busy_scenarios: list[Scenario]) -> None:
    first, second = _in_processes(busy_scenarios)
    traces = [json.loads(line) for line in first.splitlines()]
    assert len(traces) == len(busy_scenarios)
    assert all(isinstance(t, list) for t in traces)  # every one ran (no input error)
    assert {d["event"] for t in traces for d in t} >= {"cold-plug", "hotplug", "unplug", "reset", "dma-map",
                                                         "migrate"}
    assert first == second


def test_broken_set_order_violates_determinism_across_processes(busy_scenarios: list[Scenario]) -> None:
    first, second = _in_processes(busy_scenarios, "--broken", "_SetOrdered")
    assert first != second

