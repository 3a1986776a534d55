"""``viommu libvirt-hook``: refuse a libvirt domain start that QEMU would refuse.

Installed as ``/etc/libvirt/hooks/qemu`` (a wrapper that ``exec``\\ s
``viommu libvirt-hook "$@"``), libvirt calls it as
``qemu GUEST OPERATION SUB-OPERATION EXTRA`` with the domain XML on stdin.
For ``prepare begin`` (before libvirt allocates anything for the domain) it
checks the domain against this host and exits 1 with one line per refused
device on stderr, which libvirt reports and which stops the start. Every
other operation exits 0 at once, without reading stdin.

``VIOMMU_HOOK_HOST`` names a snapshot (or capture, or bundled profile) to
check against instead of the live host; ``VIOMMU_HOOK_QEMU_VERSION`` the QEMU
release (default 10.0). A host that shows no IOMMU is not checked (the
default profile would stand in for a different machine): the hook says so
and lets the start go on.
"""

from __future__ import annotations

import os
import sys
from typing import Any

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from viommu.argspec import Args

HOST_ENV = "VIOMMU_HOOK_HOST"
VERSION_ENV = "VIOMMU_HOOK_QEMU_VERSION"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "libvirt-hook",
        help="libvirt QEMU hook: refuse to start a domain QEMU would refuse",
        description="Called by libvirt as /etc/libvirt/hooks/qemu GUEST OPERATION SUB-OP EXTRA with the "
        "domain XML on stdin. For 'prepare begin' it checks the domain against this host (or "
        f"${HOST_ENV}) and exits 1 with one line per refused device; other operations exit 0.",
    )
    parser.add_argument("guest", help="the domain name")
    parser.add_argument("operation", help="prepare, start, started, stopped, release, migrate, ...")
    parser.add_argument("sub_operation", nargs="?", default="-", help="begin, end or -")
    parser.add_argument("extra", nargs="*", help="ignored")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    if args.operation != "prepare" or args.sub_operation != "begin":
        return 0
    text = sys.stdin.read()
    return check_domain(args.guest, text)


def check_domain(guest: str, text: str) -> int:
    """Check the domain XML ``text``; the hook's exit code."""
    from viommu.commands._common import load_host, qemu_version
    from viommu.frontends import parse_text
    from viommu.preflight import check_vm

    version = qemu_version(os.environ.get(VERSION_ENV) or "10.0")
    vm = parse_text(text, path=f"domain {guest} (stdin)")
    if not vm.vfio:
        return 0
    snapshot = os.environ.get(HOST_ENV)
    if snapshot:
        host = load_host(snapshot, where=HOST_ENV)
    else:
        from viommu.host.discover import discover

        host = discover()
        if host.backend == "profile":
            sys.stderr.write(f"viommu: {guest}: not checked: {host.reason}\n")
            return 0
    report = check_vm(vm, host, version=version)
    if report.starts:
        return 0
    for dev in report.devices:
        if not dev.accepted:
            why = f"[{dev.cold.code}] {dev.cold.message}"
            sys.stderr.write(f"viommu: {guest}: {dev.label} ({dev.host}): {why}\n")
    done = report.machine_done
    if done is not None and not done.accepted:
        sys.stderr.write(f"viommu: {guest}: machine start: [{done.code}] {done.message}\n")
    return 1
