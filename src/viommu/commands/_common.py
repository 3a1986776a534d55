"""What check, plan and migrate-check share: reading the VM and the hosts, colour, versions.

Nothing heavy is imported at module level: ``viommu check`` must start fast.
"""

from __future__ import annotations

import os.path
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, TextIO

    from viommu.argspec import Args, ParserSpec
    from viommu.host.inventory import HostInventory
    from viommu.models.base import QemuVersion
    from viommu.vm import VMConfig


def add_vm_argument(parser: ParserSpec) -> None:
    parser.add_argument(
        "vm",
        nargs="?",
        metavar="VM",
        help="a QEMU command line file, a libvirt domain XML or a scenario TOML (detected from the "
        "content; - reads stdin); or give the QEMU command line after --",
    )


def add_common_arguments(parser: ParserSpec, *, json_help: str) -> None:
    parser.add_argument(
        "--qemu-version", default="10.0", metavar="X.Y", help="QEMU release to model (default 10.0)"
    )
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument(
        "--color",
        "--colour",
        dest="color",
        default="auto",
        choices=("auto", "always", "never"),
        help="colour the tables: auto (a terminal, unless NO_COLOR is set), always, never",
    )


def load_vm(args: Args) -> VMConfig:
    """The VM named by the positional argument, or the QEMU argv after ``--``."""
    from viommu.errors import InputError
    from viommu.frontends import load_vm as frontend_load

    argv: list[str] = list(getattr(args, "qemu_argv", None) or [])
    if args.vm is not None and argv:
        raise InputError("give either a VM file or a QEMU command line after --, not both", where=args.vm)
    return frontend_load(args.vm, argv or None)


def qemu_version(text: str) -> QemuVersion:
    from viommu.models.base import QemuVersion

    return QemuVersion.parse(text)


def load_host(spec: str, *, where: str = "--host") -> HostInventory:
    """A snapshot JSON, a sysfs capture (tar or directory), or the name of a bundled profile."""
    from viommu.errors import InputError
    from viommu.host.discover import discover

    if os.path.exists(spec):
        return discover(root=spec)
    from viommu.host.profiles import load_profile, profile_names

    if spec in profile_names():
        return load_profile(spec)
    raise InputError("no such snapshot file or capture, and no bundled profile of that name "
                     "(see 'viommu profiles')", where=f"{where} {spec}")


def host_for_check(host: str | None, profile: str | None) -> HostInventory:
    """``--host``, ``--profile``, or the live host (which falls back to the default profile when it
    shows no IOMMU; its ``reason`` says so)."""
    from viommu.errors import InputError
    from viommu.host.discover import discover

    if host is not None and profile is not None:
        raise InputError("--host and --profile choose the host two ways: give one", where="--profile")
    if host is not None:
        return load_host(host)
    if profile is not None:
        return discover(profile=profile)
    return discover()


def colour_enabled(args: Args, stream: TextIO | None = None) -> bool:
    """``--color``: always/never; auto follows NO_COLOR / FORCE_COLOR and whether it is a terminal."""
    choice = getattr(args, "color", "auto")
    if choice == "always":
        return True
    if choice == "never":
        return False
    from viommu.render import use_colour

    return use_colour(stream if stream is not None else sys.stdout)


def host_line(host: Any) -> str:
    """``describe_host`` as one line: which host, and how it was chosen."""
    name = host.get("hostname") or host.get("product") or "host"
    return f"{name} [{host.get('backend')}: {host.get('reason')}]"

