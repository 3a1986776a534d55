"""The lab's L1 boots and, for each, the L2 QEMU cases run inside it.

Each L1 boot is one host configuration (L0's vIOMMU plays the host IOMMU);
each L2 case asks the real QEMU 10.0 whether it accepts a vIOMMU and a
vfio-pci device on that host, which the tests compare with
:class:`viommu.machine.Machine`'s decision on the same configuration.
"""

from __future__ import annotations

from harness import EDU_BRIDGE, EDU_PORT, EDU_ROOT, L1Config, L2Case  # type: ignore[import-not-found]

#: L2 vIOMMUs: name -> -device string.
L2_VIOMMUS = {
    "intel48cm": "intel-iommu,aw-bits=48,caching-mode=on",
    "intel39cm": "intel-iommu,aw-bits=39,caching-mode=on",
    "intel48": "intel-iommu,aw-bits=48,caching-mode=off",
    "intel39": "intel-iommu,aw-bits=39,caching-mode=off",
    "intelflts": "intel-iommu,x-scalable-mode=on,x-flts=on,caching-mode=on",
    "virtio": "virtio-iommu-pci",
    "virtio4k": "virtio-iommu-pci,granule=4k",
    "virtio64k": "virtio-iommu-pci,granule=64k",
}


def cases(viommus: list[str], *, plugs: tuple[str, ...] = ("cold", "hot"),
          backends: tuple[str, ...] = ("legacy", "iommufd")) -> tuple[L2Case, ...]:
    """The product of vIOMMUs, backends and plug times; hosts alternate so two can run at once."""
    out: list[L2Case] = []
    hosts = (EDU_ROOT, EDU_PORT)
    for viommu in viommus:
        for backend in backends:
            for plug in plugs:
                host = hosts[len(out) % 2]
                out.append(L2Case(f"{viommu}-{backend}-{plug}", L2_VIOMMUS[viommu], backend, plug, host))
    return tuple(out)


#: Behind the PCIe-to-PCI bridge: the aliased requester ID (refused with flts in QEMU 11.0 only).
BRIDGE_CASES = (
    L2Case("intel48cm-legacy-cold-bridge", L2_VIOMMUS["intel48cm"], "legacy", "cold", EDU_BRIDGE),
    L2Case("intel48cm-iommufd-hot-bridge", L2_VIOMMUS["intel48cm"], "iommufd", "hot", EDU_BRIDGE),
)

#: One hotplug on the other hosts, so that the QMP guard meets each of them too.
HOT_LEGACY = cases(["intel48cm"], plugs=("hot",), backends=("legacy",))

ALL_INTEL = ["intel48cm", "intel39cm", "intel48", "intel39", "intelflts"]
ALL_VIRTIO = ["virtio", "virtio4k", "virtio64k"]

CONFIGS: tuple[L1Config, ...] = (
    # Second-stage 48-bit host with caching-mode: the widest VT-d host; the full L2 matrix.
    L1Config(
        "intel-aw48-cm",
        "intel-iommu,aw-bits=48,caching-mode=on",
        l2_cases=cases(ALL_INTEL + ALL_VIRTIO) + BRIDGE_CASES,
    ),
    # A 39-bit host without caching-mode: aw-bits 48 in L2 must be refused.
    L1Config(
        "intel-aw39",
        "intel-iommu,aw-bits=39",
        l2_cases=cases(ALL_INTEL + ALL_VIRTIO),
    ),
    # Scalable mode, second stage (the guest kernel runs the unit in scalable mode).
    L1Config(
        "intel-sm",
        "intel-iommu,x-scalable-mode=on,caching-mode=on",
        cmdline="intel_iommu=on,sm_on",
        l2_cases=cases(["intel48cm", "intel39cm", "virtio"], plugs=("cold",)) + HOT_LEGACY,
    ),
    # Scalable mode offering first-stage only: Linux builds first-stage domains (47-bit IOVA
    # from the 4-level first-stage tables) and iommufd's IOAS attach fails.
    L1Config(
        "intel-sm-flts",
        "intel-iommu,x-scalable-mode=on,x-flts=on,caching-mode=on",
        cmdline="intel_iommu=on,sm_on",
        l2_cases=cases(["intel48cm", "intel39cm", "virtio"], plugs=("cold",)) + HOT_LEGACY,
    ),
    # virtio-iommu as the host IOMMU (input range 39 bits).
    L1Config(
        "virtio-aw39",
        "virtio-iommu-pci,aw-bits=39",
        cmdline="",
        l2_cases=cases(["intel48cm", "intel39cm", "virtio", "virtio64k"], plugs=("cold",)) + HOT_LEGACY,
    ),
)
