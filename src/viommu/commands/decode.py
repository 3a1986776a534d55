"""``viommu decode``: decode IOMMU capability registers, or find every unit in a kernel log.

viommu decode vtd --cap HEX --ecap HEX [--ver X:Y] [--json]
viommu decode amd --efr HEX [--efr2 HEX] [--json]
viommu decode amd --features 'EFR[:EFR2]' [--kernel RELEASE] [--json]
viommu decode smmuv3 --idr0 HEX [--idr1 HEX] [--idr3 HEX] [--idr5 HEX] [--iidr HEX] [--aidr HEX] [--json]
viommu decode --dmesg FILE|- [--json]
"""

from __future__ import annotations

import argparse
import sys

from viommu.errors import InputError
from viommu.record import replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args
    from viommu.regs.logparse import LogUnit
    from viommu.regs.unit import UnitDecode

_SMMU_FLAGS = ("idr0", "idr1", "idr3", "idr5", "iidr", "aidr")


def _fields_epilog(*modules: str) -> str:
    """The field tables of the given register modules, for ``--help``."""
    import importlib

    from viommu.regs.table import Register

    blocks = ["register fields:"]
    for name in modules:
        module = importlib.import_module(f"viommu.regs.{name}")
        for value in vars(module).values():
            if isinstance(value, Register):
                blocks.append(value.help_text())
    return "\n\n".join(blocks)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="decode VT-d / AMD-Vi / SMMUv3 capability registers, or every IOMMU unit in a kernel log",
        description="Decode IOMMU capability registers the way Linux does: raw fields, and the "
        "widths, page sizes and features Linux derives from them.",
    )
    parser.add_argument("--dmesg", metavar="FILE", help="scan a kernel log (dmesg, journalctl; '-' = stdin)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run, vendor=None)
    vendors = parser.add_subparsers(dest="vendor", metavar="VENDOR")
    raw = argparse.RawDescriptionHelpFormatter

    vtd = vendors.add_parser(
        "vtd", help="Intel VT-d CAP_REG / ECAP_REG", formatter_class=raw, epilog=_fields_epilog("vtd")
    )
    vtd.add_argument(
        "--cap", required=True, metavar="HEX", help="CAP_REG (dmesg 'cap', sysfs intel-iommu/cap)"
    )
    vtd.add_argument("--ecap", required=True, metavar="HEX", help="ECAP_REG")
    vtd.add_argument("--ver", metavar="X:Y", help="VER_REG as major:minor (dmesg 'ver')")

    amd = vendors.add_parser(
        "amd", help="AMD-Vi EFR / EFR2", formatter_class=raw, epilog=_fields_epilog("amd")
    )
    source = amd.add_mutually_exclusive_group(required=True)
    source.add_argument("--efr", metavar="HEX", help="Extended Feature Register")
    source.add_argument(
        "--features", metavar="TEXT", help="content of sysfs amd-iommu/features: EFR, EFR2:EFR or EFR:EFR2"
    )
    amd.add_argument("--efr2", metavar="HEX", help="Extended Feature 2 Register (with --efr)")
    amd.add_argument(
        "--kernel",
        metavar="RELEASE",
        help="uname -r of the host that wrote --features (decides the field order)",
    )

    smmu = vendors.add_parser(
        "smmuv3",
        help="ARM SMMUv3 IDR0/1/3/5, IIDR, AIDR (32-bit)",
        formatter_class=raw,
        epilog=_fields_epilog("smmuv3"),
    )
    smmu.add_argument("--idr0", required=True, metavar="HEX")
    for flag in _SMMU_FLAGS[1:]:
        smmu.add_argument(f"--{flag}", metavar="HEX")

    for sub in (vtd, amd, smmu):
        # SUPPRESS: without the flag here, a --json given before the vendor still counts.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )


def _decode_vendor(args: Args) -> UnitDecode:
    from viommu.hexparse import parse_hex

    if args.vendor == "vtd":
        from viommu.regs import vtd

        ver = vtd.parse_version(args.ver, where="--ver") if args.ver is not None else None
        return vtd.decode(parse_hex(args.cap, where="--cap"), parse_hex(args.ecap, where="--ecap"), ver)
    if args.vendor == "amd":
        from viommu.regs import amd

        if args.features is not None:
            if args.efr2 is not None:
                raise InputError("--efr2 goes with --efr; --features already holds EFR2", where="--efr2")
            from viommu.regs.sysfsfmt import parse_amd_features

            features = parse_amd_features(args.features, kernel=args.kernel, where="--features")
            decoded = amd.decode(features.efr, features.efr2)
            return replace(
                decoded,
                derived={**decoded.derived, "features_order": features.order},
                facts=(("sysfs field order", features.order), *decoded.facts),
            )
        if args.kernel is not None:
            raise InputError("--kernel only applies to --features", where="--kernel")
        efr2 = parse_hex(args.efr2, where="--efr2") if args.efr2 is not None else None
        return amd.decode(parse_hex(args.efr, where="--efr"), efr2)
    from viommu.regs import smmuv3

    values = {
        flag: parse_hex(getattr(args, flag), bits=32, where=f"--{flag}")
        for flag in _SMMU_FLAGS
        if getattr(args, flag) is not None
    }
    return smmuv3.decode(values)


def _read_log(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(), path
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", where=path) from None


_TITLES = {"intel-vtd": "Intel VT-d", "amd-vi": "AMD-Vi", "arm-smmuv3": "ARM SMMUv3"}


def _facts_text(facts: tuple[tuple[str, str], ...], indent: str = "") -> list[str]:
    width = max(len(label) for label, _ in facts)
    return [f"{indent}{label.ljust(width)}  {value}" for label, value in facts]


def _value_text(width: int, raw: int) -> str:
    return str(raw) if width == 1 or raw < 10 else f"{raw} (0x{raw:x})"


def _unit_text(unit: UnitDecode, colour: bool) -> str:
    from viommu import render

    regs = "  ".join(f"{key.upper()} {decoded.to_json()['value']}" for key, decoded in unit.registers)
    out = [render.paint(f"{_TITLES[unit.vendor]}: {regs}", "bold", colour), *_facts_text(unit.facts, "  ")]
    for _key, decoded in unit.registers:
        reg = decoded.register
        rows = [[f.name, f.bits, _value_text(f.width, raw), f.describe(raw)] for f, raw in decoded.rows()]
        styles: list[str | None] = [None if raw else "dim" for _f, raw in decoded.rows()]
        out += [
            "",
            f"{reg.name}: {reg.description}",
            render.table(["field", "bits", "value", "meaning"], rows, styles=styles, colour=colour),
        ]
    return "\n".join(out)


def _log_unit_text(unit: LogUnit, colour: bool) -> str:
    from viommu import render

    where = ", ".join([f"line {unit.line}", *(f"{k} {v}" for k, v in unit.extra.items())])
    head = render.paint(f"{unit.unit} ({_TITLES[unit.vendor]}; {where})", "bold", colour)
    if unit.decoded is None:
        assert unit.summary is not None
        return "\n".join([head, *_facts_text(tuple((k, str(v)) for k, v in unit.summary.items()), "  ")])
    regs = "  ".join(f"{key} {decoded.to_json()['value']}" for key, decoded in unit.decoded.registers)
    return "\n".join([head, f"  {regs}", *_facts_text(unit.decoded.facts, "  ")])


def run(args: Args) -> int:
    from viommu import render

    if args.dmesg is not None and args.vendor is not None:
        raise InputError("give either --dmesg FILE or a vendor (vtd, amd, smmuv3), not both")
    colour = render.use_colour(sys.stdout)
    if args.dmesg is not None:
        from viommu.regs.logparse import scan

        text, source = _read_log(args.dmesg)
        result = scan(text, source=source)
        if not result.units:
            raise InputError("no IOMMU unit lines (DMAR, AMD-Vi or arm-smmu-v3) found", where=source)
        for number in result.skipped:
            sys.stderr.write(
                f"viommu decode: warning: {source}:{number}: IOMMU line not understood, skipped\n"
            )
        if args.json:
            render.dump_json([unit.to_json() for unit in result.units])
        else:
            sys.stdout.write("\n\n".join(_log_unit_text(u, colour) for u in result.units) + "\n")
        return 0
    if args.vendor is None:
        raise InputError("give a vendor (vtd, amd, smmuv3) or --dmesg FILE; see viommu decode --help")
    unit = _decode_vendor(args)
    if args.json:
        render.dump_json(unit.to_json())
    else:
        sys.stdout.write(_unit_text(unit, colour) + "\n")
    return 0
