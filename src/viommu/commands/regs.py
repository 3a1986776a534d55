"""``viommu regs``: the guest-visible registers QEMU gives a vIOMMU ``-device`` string.

viommu regs 'intel-iommu,aw-bits=39,caching-mode=on' [--qemu-version X.Y[.Z]] [--machine TYPE]
            [--kernel-irqchip off|split|on] [--json]

A combination QEMU refuses exits 2 with QEMU's reason, as QEMU would print it.
"""

from __future__ import annotations

import sys
from typing import Any

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from viommu.argspec import Args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "regs",
        help="guest-visible registers of a vIOMMU -device string (intel-iommu CAP/ECAP, "
        "virtio-iommu config, arm-smmuv3 IDRs), per QEMU version",
        description="Compose the registers a QEMU vIOMMU shows the guest from its -device string, "
        "as the chosen QEMU release does (10.0 is checked bit for bit against the real binary). "
        "Combinations QEMU refuses exit 2 with QEMU's message.",
    )
    parser.add_argument("device", metavar="DEVICE", help="a QEMU -device string, e.g. intel-iommu,aw-bits=39")
    parser.add_argument(
        "--qemu-version", default="10.0", metavar="X.Y",
        help="QEMU release to model: 9.1, 9.2, 10.0, 10.1, 10.2, 11.0 (11.0.3 differs) [10.0]",
    )
    parser.add_argument(
        "--machine", metavar="TYPE", help="machine type, e.g. pc-q35-9.1 [q35 of that release]"
    )
    parser.add_argument(
        "--kernel-irqchip", choices=("off", "split", "on"), default="off",
        help="KVM irqchip mode; 'off' also stands for TCG [off]",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def _human(dev: Any, colour: bool) -> str:
    from viommu import render
    from viommu.regs import vtd

    unit = vtd.decode(dev.cap, dev.ecap)
    head = f"{dev.model} (QEMU {dev.version}, {dev.machine.name}, kernel-irqchip={dev.irqchip.value})"
    out = [render.paint(head, "bold", colour), f"  CAP   0x{dev.cap:016x}", f"  ECAP  0x{dev.ecap:016x}", ""]
    width = max(len(label) for label, _ in unit.facts)
    out += [f"  {label.ljust(width)}  {value}" for label, value in unit.facts]
    for key, decoded in unit.registers:
        rows = [[f.name, f.bits, str(raw) if raw < 10 else f"{raw} (0x{raw:x})", f.describe(raw)]
                for f, raw in decoded.rows() if raw]
        out += ["", f"{key.upper()} fields set", render.table(["field", "bits", "value", "meaning"], rows,
                                                                colour=colour)]
    props = [[name, str(value)] for name, value in dev.properties.items()]
    out += ["", "properties (after machine compat)"]
    out.append(render.table(["property", "value"], props, colour=colour))
    return "\n".join(out)


def _other(spec: Any, args: Args) -> int:
    """virtio-iommu's config space, arm-smmuv3's ID registers: the model's guest-visible state."""
    from viommu import render
    from viommu.models.base import QemuVersion
    from viommu.models.registry import create

    dev = create(spec, QemuVersion.parse(args.qemu_version), machine=args.machine,
                 where=f"-device {args.device}")
    state = dev.guest_state()
    if args.json:
        render.dump_json({**state, "qemu_version": str(dev.version), "properties": dev.explicit()})
        return 0
    colour = render.use_colour(sys.stdout)
    out = [render.paint(f"{dev.model} (QEMU {dev.version})", "bold", colour)]
    for key, value in state.items():
        if key == "model":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        out.append(f"  {key.ljust(16)}  {value}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def run(args: Args) -> int:
    from viommu import render
    from viommu.models.base import DeviceSpec, QemuVersion
    from viommu.models.intel import MODEL, IntelIOMMU, Irqchip
    from viommu.regs import vtd

    spec = DeviceSpec.parse(args.device, where="DEVICE")
    if spec.driver != MODEL:
        return _other(spec, args)
    dev = IntelIOMMU(
        spec,
        QemuVersion.parse(args.qemu_version),
        machine=args.machine,
        irqchip=Irqchip(args.kernel_irqchip),
        where=f"-device {args.device}",
    )
    if args.json:
        render.dump_json(
            {
                **dev.guest_state(),
                "qemu_version": str(dev.version),
                "machine": dev.machine.name,
                "kernel_irqchip": dev.irqchip.value,
                "properties": dev.properties,
                "effective": {
                    "intremap": "on" if dev.config.intremap else "off",
                    "eim": "on" if dev.config.eim else "off",
                },
                "decoded": vtd.decode(dev.cap, dev.ecap).to_json(),
            }
        )
    else:
        sys.stdout.write(_human(dev, render.use_colour(sys.stdout)) + "\n")
    return 0
