"""``viommu check``: will the VM start on this host, and would a hotplug of each device pass?

viommu check VM [--host SNAPSHOT|CAPTURE | --profile NAME] [--qemu-version X.Y] [--json]
viommu check [options] -- qemu-system-x86_64 ARGS...

Exit 0 when the VM starts, 1 when a device (or the machine) is refused, 2 on bad input.
"""

from __future__ import annotations

import sys

from viommu.commands._common import add_common_arguments, add_vm_argument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args
    from viommu.preflight import CheckReport, DeviceReport, Finding


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="will the VM start on this host? per device: accepted or refused, and why",
        description="Start the VM's vIOMMU and VFIO devices on a host the way QEMU would: per device "
        "the verdict, the reason code, QEMU's message, the host value against the vIOMMU value, and "
        "whether a later hotplug would pass; warnings for the guest memory map against the IOMMU "
        "widths and host reserved regions, and for IOMMU groups. Without --host or --profile the "
        "live host is read (the default profile when it shows no IOMMU).",
    )
    add_vm_argument(parser)
    parser.add_argument("--host", metavar="SNAPSHOT", help="a snapshot JSON, a sysfs capture (.tar or "
                        "directory) or a bundled profile name")
    parser.add_argument("--profile", metavar="NAME", help="a bundled profile (see 'viommu profiles')")
    parser.add_argument("--policy", default="check", choices=("check", "sync", "plan", "none"),
                        help="lifecycle policy (default check: QEMU upstream)")
    add_common_arguments(parser, json_help="machine-readable report (stable, deterministic)")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.commands._common import colour_enabled, host_for_check, load_vm, qemu_version
    from viommu.machine import Policy
    from viommu.preflight import check_vm
    from viommu.render import dump_json

    version = qemu_version(args.qemu_version)
    vm = load_vm(args)
    host = host_for_check(args.host, args.profile)
    report = check_vm(vm, host, version=version, policy=Policy.parse(args.policy))
    if args.json:
        dump_json(report.to_json())
    else:
        sys.stdout.write(render(report, colour=colour_enabled(args)))
    return 0 if report.starts else 1


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(report: CheckReport, *, colour: bool = False) -> str:
    """The human report: one table row per checked field, then warnings and the verdict."""
    from viommu.commands._common import host_line
    from viommu.render import paint

    out = [
        paint(f"host: {host_line(report.host)}", "bold", colour),
        f"vIOMMU: {report.viommu or 'none'}  (QEMU {report.version}, policy {report.policy.value})",
        "",
    ]
    if report.devices:
        out.append(_device_table(report.devices, colour))
        for dev in report.devices:
            out.extend(_device_lines(dev, colour))
    else:
        out.append("no VFIO devices")
    done = report.machine_done
    if done is not None:
        if done.accepted:
            out.append(f"machine-done: {paint('ok', 'green', colour)}")
        else:
            out.append(f"machine-done: {paint('REFUSED', 'red', colour)} [{done.code}] {done.message}")
    if report.warnings:
        out.append("")
        out.append(paint(f"Warnings ({len(report.warnings)})", "bold", colour))
        for w in report.warnings:
            out.extend(_warning_lines(w, colour))
    if report.notes:
        out.append("")
        out.extend(f"note: {n}" for n in report.notes)
    out.append("")
    if report.starts:
        out.append(paint("verdict: the VM starts", "green", colour))
    else:
        out.append(paint("verdict: QEMU would refuse to start the VM", "red", colour))
    return "\n".join(out) + "\n"


def _device_table(devices: tuple[DeviceReport, ...], colour: bool) -> str:
    from viommu.render import table

    rows: list[list[str]] = []
    styles: list[str | None] = []
    for dev in devices:
        verdict = "accepted" if dev.accepted else f"REFUSED {dev.cold.code}"
        hot = "hotplug ok" if dev.hotplug.accepted else f"hotplug refused {dev.hotplug.code}"
        fields = list(dev.comparison) or [{"field": "-", "host": "-", "viommu": "-", "ok": dev.accepted}]
        for i, row in enumerate(fields):
            first = i == 0
            rows.append([
                dev.label if first else "",
                dev.host if first else "",
                _text(row.get("field")),
                _text(row.get("host")),
                _text(row.get("viommu")),
                "ok" if row.get("ok") else "MISMATCH",
                verdict if first else "",
                hot if first else "",
            ])
            styles.append(None if row.get("ok") else "red")
    headers = ["device", "host BDF", "field", "host value", "vIOMMU value", "", "cold plug", "hotplug"]
    return table(headers, rows, styles=styles, colour=colour)


def _device_lines(dev: DeviceReport, colour: bool) -> list[str]:
    from viommu.render import paint

    out = []
    if not dev.accepted:
        out.append(paint(f"  {dev.label}: [{dev.cold.code}] {dev.cold.message}", "red", colour))
    if not dev.hotplug.accepted and dev.hotplug.code != dev.cold.code:
        out.append(f"  {dev.label} hotplug: [{dev.hotplug.code}] {dev.hotplug.message}")
    if dev.fix:
        out.append(paint(f"  {dev.label} fix: {dev.fix}", "yellow", colour))
    return out


def _warning_lines(w: Finding, colour: bool) -> list[str]:
    from viommu.render import paint

    who = f"{w.device}: " if w.device else ""
    return [
        paint(f"  [{w.code}] {who}{w.message}", "yellow", colour),
        f"      fix: {w.fix}",
    ]
