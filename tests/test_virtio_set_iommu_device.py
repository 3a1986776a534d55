"""virtio-iommu's host-device path (brief §4.2): reserved ranges, page-size mask, aliases.

Expected masks and texts are the brief's worked example (§4.2: "4 KiB host,
granule=host ... 0x40201000 ... 0x10000 ... 0xFFFFFFFFFFFF0000") and its
quoted QEMU format strings.
"""

from __future__ import annotations

import pytest

from viommu.errors import Refusal
from viommu.host.caps import U64_MAX, HostIOMMUCaps, IommuType, IovaRange
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.models.base import DeviceSpec, PciAddr, QemuVersion
from viommu.models.registry import create
from viommu.models.virtio import VirtioIOMMU
from viommu.reasons import REASONS

ADDR = PciAddr(1, 0)
OTHER = PciAddr(2, 0)
BRIDGE_A = PciAddr(5, 0x08)
BRIDGE_B = PciAddr(5, 0x10)
ALIAS = PciAddr(5, 0)
#: x86 host: usable below and above the MSI window, up to 2^48 - 1.
X86_RANGES = (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1))


def host(mask: int, *, ranges: tuple[IovaRange, ...] = X86_RANGES, name: str = "0000:3b:00.0",
         kind: HiodKind = HiodKind.LEGACY_VFIO) -> HostIOMMUDevice:
    caps = HostIOMMUCaps(
        iommu_type=IommuType.INTEL_VTD, registers={}, iova_ranges=ranges, reserved_regions=(),
        page_size_mask=mask, iova_alignment=mask,
    )
    return HostIOMMUDevice(name, caps, kind)


def viommu(device: str = "virtio-iommu-pci", machine: str | None = None) -> VirtioIOMMU:
    return VirtioIOMMU(DeviceSpec.parse(device), QemuVersion(10, 0), machine=machine)


def refusal(dev: VirtioIOMMU, hiod: HostIOMMUDevice, addr: PciAddr = ADDR, **kw: object) -> Refusal:
    with pytest.raises(Refusal) as info:
        dev.set_iommu_device(addr, hiod, hotplug=True, **kw)  # type: ignore[arg-type]
    assert info.value.code in REASONS
    return info.value


def test_worked_example_narrow_then_refuse() -> None:
    dev = viommu()
    assert dev.guest_state()["page_size_mask"] == "0xfffffffffffff000"  # granule=host, 4 KiB
    dev.set_iommu_device(ADDR, host(0x40201000), hotplug=False)
    assert dev.page_size_mask == 0x40201000
    dev.machine_done()
    r = refusal(dev, host(0x10000, name="0000:3c:00.0"), OTHER)
    assert r.code == "page-size-incompatible"
    assert r.message == ("0000:3c:00.0: virtio-iommu reports a page size mask 0x10000 incompatible "
                         "with currently supported mask 0x40201000")
    # A third slot: the refused device's host ranges stay recorded at OTHER (see below).
    r = refusal(dev, host(0xFFFFFFFFFFFF0000, name="0000:3d:00.0"), PciAddr(3, 0))
    assert (r.code, r.message) == ("frozen-granule-unsupported",
                                   "0000:3d:00.0: virtio-iommu does not support frozen granule 0x1000")


def test_before_machine_done_a_coarser_host_narrows_the_granule() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0xFFFFFFFFFFFF0000), hotplug=False)
    assert dev.page_size_mask == 0xFFFFFFFFFFFF0000
    assert dev.guest_view(ADDR).page_sizes == 0xFFFFFFFFFFFF0000


def test_after_machine_done_the_mask_no_longer_narrows() -> None:
    dev = viommu()
    dev.machine_done()
    dev.set_iommu_device(ADDR, host(0x40201000), hotplug=True)
    assert dev.page_size_mask == 0xFFFFFFFFFFFFF000


def test_unplug_frees_ranges_but_does_not_widen_the_mask() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0x40201000), hotplug=False)
    assert dev.host_reserved(ADDR)
    dev.unset_iommu_device(ADDR)
    assert dev.host_reserved(ADDR) == ()
    assert dev.page_size_mask == 0x40201000
    # Only the property region (the x86 MSI window, type MSI = 1) is left.
    assert dev.reserved_regions(ADDR) == ((0xFEE00000, 0xFEEFFFFF, 1),)


def test_host_reserved_ranges_are_the_complement_of_the_usable_ones() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0x1000), hotplug=False)
    assert dev.host_reserved(ADDR) == (IovaRange(0xFEE00000, 0xFEEFFFFF), IovaRange(1 << 48, U64_MAX))
    # PROBE: host ranges typed RESERVED (0) merged with the property's MSI region (1).
    assert dev.reserved_regions(ADDR) == (
        (0xFEE00000, 0xFEEFFFFF, 0), (0xFEE00000, 0xFEEFFFFF, 1), (1 << 48, U64_MAX, 0),
    )
    view = dev.guest_view(ADDR)
    assert view.width_bits == 39  # q35 machine compat: aw-bits 39
    assert not view.legal(1 << 48, 0x1000, 0x1000)
    assert view.legal(0x10000, 0x1000, 0x1000)


def test_empty_ranges_skip_registration_and_the_mask_check() -> None:
    dev = viommu()
    dev.machine_done()
    dev.set_iommu_device(ADDR, host(0x10000, ranges=()), hotplug=True)
    assert ADDR not in dev.devices
    assert dev.page_size_mask == 0xFFFFFFFFFFFFF000
    # Not registered, so a second set at the same address is not a duplicate.
    dev.set_iommu_device(ADDR, host(0x10000, ranges=()), hotplug=True)


def test_iommufd_never_reports_empty_ranges() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0x1000, ranges=(), kind=HiodKind.IOMMUFD), hotplug=False)
    assert ADDR in dev.devices
    assert dev.host_reserved(ADDR) == ()  # QEMU's fallback range [0, UINT64_MAX]


def test_duplicate_own_address() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0x1000), hotplug=False)
    r = refusal(dev, host(0x1000))
    assert (r.code, r.message) == ("duplicate-host-iommu-device", "Host IOMMU device already exists")


def test_second_device_behind_one_alias_is_refused() -> None:
    dev = viommu()
    dev.set_iommu_device(BRIDGE_A, host(0x1000), hotplug=False, alias=ALIAS)
    assert dev.host_reserved(ALIAS) and dev.host_reserved(BRIDGE_A) == ()
    r = refusal(dev, host(0x1000), BRIDGE_B, alias=ALIAS)
    assert (r.code, r.message) == (
        "aliased-bdf-unsupported",
        "virtio_iommu_set_host_iova_ranges virtio-iommu does not support aliased BDF",
    )
    # The guest sees the alias's ranges for the device behind the bridge.
    assert dev.guest_view(BRIDGE_A).reserved == dev.guest_view(ALIAS).reserved
    dev.unset_iommu_device(BRIDGE_A)
    dev.set_iommu_device(BRIDGE_B, host(0x1000), hotplug=True, alias=ALIAS)


def test_failed_mask_check_leaves_the_alias_ranges_set() -> None:
    # QEMU sets the host ranges before the mask check and the failed device never
    # reaches the table, so its unset cannot free them (virtio-iommu.c, 9.1 fixes).
    dev = viommu()
    dev.machine_done()
    refusal(dev, host(0x10000), BRIDGE_A, alias=ALIAS)
    dev.unset_iommu_device(BRIDGE_A)
    r = refusal(dev, host(0x1000), BRIDGE_B, alias=ALIAS)
    assert r.code == "aliased-bdf-unsupported"


def test_granule_and_aw_bits_properties_shape_the_config() -> None:
    dev = viommu("virtio-iommu-pci,granule=64k,aw-bits=48,boot-bypass=off")
    state = dev.guest_state()
    assert state["page_size_mask"] == "0xffffffffffff0000"
    assert state["input_range"] == {"start": "0x0", "end": "0xffffffffffff"}
    assert state["domain_range"] == {"start": 0, "end": 0xFFFFFFFF}
    assert (state["probe_size"], state["bypass"]) == (512, 0)
    assert viommu("virtio-iommu-pci,aw-bits=64").guest_state()["input_range"]["end"] == "0xffffffffffffffff"


def test_reset_keeps_mask_and_restores_bypass() -> None:
    dev = viommu()
    dev.set_iommu_device(ADDR, host(0x40201000), hotplug=False)
    dev.machine_done()
    before = dev.guest_state()
    dev.bypass = False  # the guest wrote config.bypass
    dev.reset()
    assert dev.guest_state() == before


def test_narrowed_lowers_aw_bits_to_the_host_but_not_below_32() -> None:
    dev = viommu("virtio-iommu-pci,aw-bits=64")
    assert dev.narrowed(host(0x1000)) == {"aw-bits": "48"}
    assert viommu().narrowed(host(0x1000)) == {}  # 39 <= 48
    narrow = host(0x1000, ranges=(IovaRange(0, (1 << 31) - 1),))
    assert dev.narrowed(narrow) == {}


def test_registry_builds_it() -> None:
    dev = create(DeviceSpec.parse("virtio-iommu-pci,aw-bits=48"), QemuVersion(10, 0))
    assert isinstance(dev, VirtioIOMMU) and dev.config.aw_bits == 48
