"""``viommu migrate-check``: would the guest-visible vIOMMU state survive the migration?

viommu migrate-check VM --source S --dest D [--qemu-version X.Y] [--dest-qemu-version X.Y] [--json]

Exit 0 when the destination exposes identical state and accepts every device, 1 otherwise.
"""

from __future__ import annotations

import sys

from viommu.commands._common import add_common_arguments, add_vm_argument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args
    from viommu.preflight import MigrateReport


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate-check",
        help="would the VM migrate from one host to another with the same vIOMMU state?",
        description="Start the VM on the source host, then build the destination's QEMU from the same "
        "command line: its guest-visible vIOMMU state (registers, config space) must equal the source's, "
        "and every device must fit the vIOMMU the guest already sees.",
    )
    add_vm_argument(parser)
    parser.add_argument("--source", required=True, metavar="SNAPSHOT",
                        help="the source host (snapshot JSON, sysfs capture or bundled profile name)")
    parser.add_argument("--dest", required=True, metavar="SNAPSHOT", help="the destination host")
    parser.add_argument("--dest-qemu-version", metavar="X.Y",
                        help="the destination's QEMU release (default: the same as --qemu-version)")
    add_common_arguments(parser, json_help="machine-readable report (stable, deterministic)")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.commands._common import colour_enabled, load_host, load_vm, qemu_version
    from viommu.preflight import migrate_vm
    from viommu.render import dump_json

    version = qemu_version(args.qemu_version)
    dest_version = qemu_version(args.dest_qemu_version) if args.dest_qemu_version else None
    vm = load_vm(args)
    source = load_host(args.source, where="--source")
    dest = load_host(args.dest, where="--dest")
    report = migrate_vm(vm, source, dest, version=version, dest_version=dest_version)
    if args.json:
        dump_json(report.to_json())
    else:
        sys.stdout.write(render(report, colour=colour_enabled(args)))
    return 0 if report.migrates else 1


def render(report: MigrateReport, *, colour: bool = False) -> str:
    from viommu.commands._common import host_line
    from viommu.render import paint, table

    out = [
        f"source:      {host_line(report.source)} (QEMU {report.version})",
        f"destination: {host_line(report.dest)} (QEMU {report.dest_version})",
        "",
    ]
    if not report.source_check.starts:
        from viommu.commands.check import render as render_check

        out.append(paint("the VM does not start on the source:", "red", colour))
        out.append(render_check(report.source_check, colour=colour))
        return "\n".join(out)
    d = report.decision
    assert d is not None
    diffs = d.detail.get("differences", [])
    if diffs:
        rows = [[str(x["field"]), str(x["source"]), str(x["destination"])] for x in diffs]
        out.append(table(["field", "source", "destination"], rows, styles=["red"] * len(rows), colour=colour))
    for refusal in d.detail.get("refusals", []):
        out.append(f"  {refusal.get('target')}: [{refusal.get('code')}] {refusal.get('message')}")
    if d.accepted:
        out.append(paint("verdict: migrates (identical guest-visible vIOMMU state)", "green", colour))
    else:
        out.append(paint(f"verdict: refused [{d.code}] {d.message}", "red", colour))
        out.append("  fix: make the vIOMMU explicit for both hosts: viommu plan VM --host SOURCE --host DEST")
    return "\n".join(out) + "\n"
