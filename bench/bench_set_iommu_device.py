"""Cost of a vIOMMU's set_iommu_device (plus the matching unset), per call.

Target: under 20 µs per set_iommu_device. Run: ``python bench/bench_set_iommu_device.py``.
Three cases: an accepted device (aw-bits check passes), a refused one
(aw-bits 48 over a 39-bit host: the Refusal path), and 11.0's x-flts checks
on an iommufd VT-d host (the longest accept path); virtio-iommu's range and
page-size path after machine-done (host reserved ranges computed, frozen
granule checked); arm-smmuv3 accel's field-by-field IDR comparison on the
Grace profile with 16K granules added.
"""

from __future__ import annotations

import contextlib
import timeit
from collections.abc import Callable

from viommu.errors import Refusal
from viommu.host.caps import HostIOMMUCaps, IommuType, IovaRange
from viommu.host.device import HiodKind, HostIOMMUDevice
from viommu.models.base import DeviceSpec, PciAddr, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.models.registry import create

ADDR = PciAddr(1, 0)
ROUNDS = 20_000


def _host(aw: int, kind: HiodKind = HiodKind.LEGACY_VFIO) -> HostIOMMUDevice:
    caps = HostIOMMUCaps(
        IommuType.INTEL_VTD,
        {"cap": 1 << 56, "ecap": 0},
        (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << aw) - 1)),
        (),
        0x40201000,
    )
    return HostIOMMUDevice("0000:3b:00.0", caps, kind)


def _per_call_us(stmt: Callable[[], object]) -> float:
    best = min(timeit.repeat(stmt, number=ROUNDS, repeat=5))
    return best / ROUNDS * 1e6


def main() -> None:
    accept = IntelIOMMU(DeviceSpec.parse("intel-iommu,caching-mode=on"), QemuVersion(10, 0))
    host48 = _host(48)

    def set_unset() -> None:
        accept.set_iommu_device(ADDR, host48, hotplug=True)
        accept.unset_iommu_device(ADDR)

    refuse = IntelIOMMU(DeviceSpec.parse("intel-iommu,caching-mode=on"), QemuVersion(10, 0))
    host39 = _host(39)

    def refused() -> None:
        with contextlib.suppress(Refusal):
            refuse.set_iommu_device(ADDR, host39, hotplug=True)

    accel = IntelIOMMU(
        DeviceSpec.parse("intel-iommu,caching-mode=on,scalable-mode=on,flts=on"), QemuVersion(11, 0)
    )
    iommufd = _host(48, HiodKind.IOMMUFD)

    def accel_set_unset() -> None:
        accel.set_iommu_device(ADDR, iommufd, hotplug=True)
        accel.unset_iommu_device(ADDR)

    virtio = create(DeviceSpec.parse("virtio-iommu-pci"), QemuVersion(10, 0))
    virtio.machine_done()

    def virtio_set_unset() -> None:
        virtio.set_iommu_device(ADDR, host48, hotplug=True)
        virtio.unset_iommu_device(ADDR)

    from viommu import record
    from viommu.host.profiles import load_profile
    from viommu.regs.smmuv3 import IDR5

    grace = load_profile("arm-nvidia-grace").devices[1]
    regs = dict(grace.caps.registers)
    regs["idr5"] = IDR5.encode({**IDR5.decode(regs["idr5"]).fields, "GRAN16K": 1})
    smmu_host = HostIOMMUDevice(grace.name, record.replace(grace.caps, registers=regs), HiodKind.IOMMUFD)
    smmu = create(DeviceSpec.parse("arm-smmuv3,accel=on"), QemuVersion(11, 0))

    def smmu_set_unset() -> None:
        smmu.set_iommu_device(ADDR, smmu_host, hotplug=True)
        smmu.unset_iommu_device(ADDR)

    for label, fn in (
        ("intel: accept (10.0, aw check) + unset", set_unset),
        ("intel: refuse (aw-bits 48 > host 39)", refused),
        ("intel: accept (11.0 x-flts accel checks) + unset", accel_set_unset),
        ("virtio: accept after machine-done + unset", virtio_set_unset),
        ("smmuv3 accel: accept (IDR comparison) + unset", smmu_set_unset),
    ):
        print(f"{label:<50} {_per_call_us(fn):6.2f} µs per call")


if __name__ == "__main__":
    main()
