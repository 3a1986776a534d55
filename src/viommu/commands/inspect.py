"""``viommu inspect``: the host IOMMUs, their groups and devices, and how they were found.

viommu inspect [--root DIR|FILE.tar|FILE.json] [--backend auto|sysfs|vfio|iommufd|snapshot]
               [--profile NAME] [--json]
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args, ParserSpec
    from viommu.host.inventory import HostInventory


def add_host_arguments(parser: ParserSpec) -> None:
    """The options that choose a host, shared by every command that reads one."""
    parser.add_argument(
        "--root",
        default="/",
        metavar="PATH",
        help="filesystem root to read (default /), a directory or .tar written by "
        "'viommu snapshot --capture-sysfs', or a snapshot JSON file",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "sysfs", "vfio", "iommufd", "snapshot"),
        help="discovery backend (default auto: the richest that works: iommufd, vfio, sysfs)",
    )
    parser.add_argument(
        "--profile", metavar="NAME", help="use a bundled profile instead (see 'viommu profiles')"
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show the host IOMMUs, IOMMU groups and assignable devices",
        description="Discover the host IOMMUs and show, per unit, its decoded key capabilities; per group, "
        "its devices; per device, its usable IOVA windows, reserved regions, page sizes and aw-bits; "
        "and which backend was used and why.",
    )
    add_host_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output (the snapshot format)")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.host.discover import discover
    from viommu.render import dump_json, use_colour

    inventory = discover(args.backend, root=args.root, profile=args.profile)
    if args.json:
        dump_json(inventory.to_json())
    else:
        sys.stdout.write(render(inventory, colour=use_colour(sys.stdout)))
    return 0


def _opt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _unit_rows(inventory: HostInventory) -> list[list[str]]:
    from viommu.host.caps import IommuType
    from viommu.regs import amd, vtd
    from viommu.regs.unit import sizes_text

    rows = []
    for unit in inventory.units:
        widths = "unknown"
        if unit.iommu_type is IommuType.INTEL_VTD:
            c = vtd.CAP.decode(unit.registers["cap"])
            sagaw = "/".join(str(30 + 9 * i) for i in range(4) if c["SAGAW"] >> i & 1) or "none"
            widths = f"SAGAW {sagaw}, MGAW {c['MGAW'] + 1}"
        elif unit.iommu_type is IommuType.AMD:
            hats = amd.EFR.decode(unit.registers["efr"])["HATS"]
            widths = f"HATS {hats} ({_opt(amd.host_iova_bits(unit.registers['efr']))}-bit)"
        elif "idr5" in unit.registers:
            from viommu.regs import smmuv3

            d = smmuv3.decode(dict(unit.registers)).derived
            widths = f"IAS {d['ias_bits']}, OAS {d['oas_bits']}"
        registers = " ".join(_register(k, v) for k, v in sorted(unit.registers.items())) or "none"
        rows.append(
            [
                unit.name,
                unit.iommu_type.value,
                registers,
                widths,
                _opt(unit.aperture_bits),
                "unknown" if unit.page_size_mask is None else sizes_text(unit.page_size_mask),
                _opt(unit.scalable_mode) if unit.iommu_type is IommuType.INTEL_VTD else "-",
                _opt(unit.nesting),
                _opt(unit.dirty_tracking),
                "no" if not unit.pasid_bits else f"{unit.pasid_bits} bits",
            ]
        )
    return rows


def _register(name: str, value: int) -> str:
    if name == "ver":
        return f"ver={value >> 4}:{value & 0xF}"  # VT-d VER_REG, as sysfs and dmesg print it
    return f"{name}={value:x}"


def _window(start: int, last: int) -> str:
    return f"0x{start:x}-0x{last:x}"


def render(inventory: HostInventory, *, colour: bool = False) -> str:
    """The human report (deterministic)."""
    from viommu.regs.unit import sizes_text
    from viommu.render import paint, table

    out: list[str] = []
    m = inventory.machine
    out.append(paint(f"backend: {inventory.backend} ({inventory.reason})", "bold", colour))
    for backend, why in inventory.skipped:
        out.append(f"  skipped {backend}: {why}")
    identity = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("host", m.hostname),
            ("product", m.product),
            ("cpu", m.cpu),
            ("cpu physical address bits", m.cpu_phys_bits),
            ("kernel", m.kernel),
            ("captured", m.captured_at),
        )
        if value
    )
    out.append(f"machine: {identity or 'unknown'}")
    if inventory.provenance.get("source"):
        out.append(f"source: {inventory.provenance['source']}")
    sm = inventory.scalable_mode
    out.append(f"VT-d scalable mode: {'on' if sm.enabled else 'off'}; {sm.source}")
    out.append("")
    out.append(paint("IOMMU units", "bold", colour))
    out.append(
        table(
            [
                "unit",
                "type",
                "registers",
                "widths",
                "aperture",
                "page sizes",
                "scalable",
                "nesting",
                "dirty",
                "PASID",
            ],
            _unit_rows(inventory),
        )
    )
    for unit in inventory.units:
        out.extend(f"  {unit.name}: {note}" for note in unit.notes)
    out.append("")
    out.append(paint("IOMMU groups", "bold", colour))
    group_rows = [
        [
            str(g.number),
            g.type or "unknown",
            " ".join(g.devices),
            "; ".join(f"{_window(r.start, r.last)} {r.type.value}" for r in g.reserved_regions) or "none",
        ]
        for g in inventory.groups
    ]
    out.append(table(["group", "type", "devices", "reserved regions"], group_rows))
    out.append("")
    out.append(paint("Devices", "bold", colour))
    for dev in inventory.devices:
        caps = dev.caps
        info = inventory.pci.get(dev.name)
        ident = ""
        if info is not None and info.vendor is not None and info.device is not None:
            ident = f" {info.vendor:04x}:{info.device:04x}"
        driver = f" driver {info.driver}" if info is not None and info.driver else ""
        out.append(
            paint(f"{dev.name}{ident}{driver}", "cyan", colour)
            + f"  group {caps.group}  unit {caps.unit}  ({caps.backend}, {dev.kind.value})"
        )
        out.append(f"  aw-bits     {caps.aw_bits}")
        windows = ", ".join(_window(r.start, r.last) for r in caps.iova_ranges)
        out.append(f"  usable IOVA {windows or 'unknown (no aperture known)'}")
        reserved = "; ".join(f"{_window(r.start, r.last)} {r.type.value}" for r in caps.reserved_regions)
        out.append(f"  reserved    {reserved or 'none'}")
        out.append(f"  page sizes  {sizes_text(caps.page_size_mask) if caps.page_size_mask else 'unknown'}")
        if caps.alias.aliased:
            out.append(
                f"  alias       requester ID {caps.alias.alias_bdf} (behind bridge {caps.alias.bridge})"
            )
    if inventory.notes:
        out.append("")
        out.append(paint("Notes", "bold", colour))
        out.extend(f"  {note}" for note in inventory.notes)
    return "\n".join(out) + "\n"
