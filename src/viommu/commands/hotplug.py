"""``viommu hotplug``: check a VFIO hotplug against a running VM's vIOMMU, then send it.

viommu hotplug --qmp SOCKET --host BDF [--id ID] [--bus BUS] [--iommufd ID] [--dry-run]
               [--snapshot FILE | --profile NAME | --root PATH --backend B] [--timeout S] [--json]

Exit 0: accepted and added (or, with --dry-run, would be sent). Exit 1: refused
(by the check, or by QEMU's device_add); nothing was added. Exit 2: the socket
or the VM could not be read; nothing was sent.
"""

from __future__ import annotations

import sys

from viommu.commands.inspect import add_host_arguments

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args
    from viommu.frontends.qmp_guard import GuardResult


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hotplug",
        help="check a vfio-pci hotplug against a running VM's vIOMMU over QMP, then send it",
        description="Read the running VM's vIOMMU and devices over QMP, check the host device against "
        "the vIOMMU the way QEMU does, and only then send device_add. Fails closed: any error "
        "(unreachable socket, timeout, disconnect, unreadable property) sends nothing.",
    )
    parser.add_argument("--qmp", required=True, metavar="SOCKET", help="the VM's QMP unix socket")
    parser.add_argument("--host", required=True, metavar="BDF", help="host PCI address, e.g. 0000:01:00.0")
    parser.add_argument("--id", metavar="ID", help="qdev id of the new device")
    parser.add_argument("--bus", metavar="BUS", help="guest bus (a pcie-root-port id on q35)")
    parser.add_argument("--iommufd", metavar="ID", help="an existing -object iommufd of the VM")
    parser.add_argument("--dry-run", action="store_true", help="decide and print, never send")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds per QMP exchange [5]")
    add_host_arguments(parser)
    parser.add_argument("--snapshot", metavar="FILE", help="use a recorded host (snapshot JSON)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.errors import InputError
    from viommu.frontends.qmp_guard import HotplugRequest, guarded_hotplug, normalize_bdf
    from viommu.host.discover import discover
    from viommu.render import dump_json

    if args.timeout <= 0:
        raise InputError("must be a positive number of seconds", where="--timeout")
    host = normalize_bdf(args.host)
    if args.snapshot is not None:
        if args.profile is not None:
            raise InputError("--snapshot and --profile both name a host; give one")
        inventory = discover("snapshot", root=args.snapshot)
    else:
        inventory = discover(args.backend, root=args.root, profile=args.profile)
    try:
        inventory.device(host)  # a device the host does not have is bad input, before QMP
    except InputError as exc:
        raise InputError(exc.message, where="--host") from None
    request = HotplugRequest(host=host, id=args.id, iommufd=args.iommufd, bus=args.bus)
    result = guarded_hotplug(args.qmp, request, inventory, dry_run=args.dry_run, timeout=args.timeout)
    if args.json:
        dump_json(result.to_json())
    else:
        sys.stdout.write(render(result))
    return 0 if result.accepted else 1


def _command_text(args: dict[str, str]) -> str:
    return "device_add " + ",".join(f"{k}={v}" for k, v in args.items())


def render(result: GuardResult) -> str:
    """The human report (deterministic)."""
    vm = result.vm
    out = [
        f"vIOMMU  {vm.viommu} at {vm.viommu_path}",
        f"QEMU    {vm.qemu_version} ({vm.qemu_package or 'unknown package'}), machine {vm.machine_type}",
    ]
    d = result.decision
    if not d.accepted:
        out.insert(0, f"refused [{d.code}]: {d.message}")
        for row in d.detail.get("comparison", []):
            mark = "ok" if row["ok"] else "MISFIT"
            out.append(f"  {row['field']}: vIOMMU {row['viommu']}, host {row['host']}  {mark}")
        out.append("nothing sent")
    elif result.dry_run:
        would = _command_text(result.device_add)
        out.insert(0, f"accepted (dry run): {result.request.host} fits; would send {would}")
        out.append("nothing sent (--dry-run)")
    elif result.qemu_error is not None:
        out.insert(0, f"refused by QEMU [{result.code}]: {result.qemu_error}")
        out.append(f"sent    {_command_text(result.device_add)}")
    else:
        out.insert(0, f"accepted: {result.request.host} fits; added")
        out.append(f"sent    {_command_text(result.device_add)}")
        out.append(f"reply   {result.reply}")
    out.extend(f"note    {n}" for n in result.notes)
    return "\n".join(out) + "\n"
