"""``viommu profiles``: the bundled profiles of real machines (use one with ``--profile NAME``)."""

from __future__ import annotations

import sys
from typing import Any

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from viommu.argspec import Args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profiles",
        help="list the bundled host profiles (for --profile NAME)",
        description="List the bundled profiles of real machines: register values from real hardware "
        "logs, with a typical device topology. Any command that reads a host takes --profile NAME.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.host.profiles import default_profile_name, list_profiles
    from viommu.render import dump_json, table

    infos = list_profiles()
    default = default_profile_name()
    if args.json:
        dump_json({"default": default, "profiles": [i.to_json() for i in infos]})
        return 0
    rows = [
        [
            i.name + (" (default)" if i.name == default else ""),
            i.vendor,
            i.platform,
            str(i.units),
            str(i.devices),
            i.source,
        ]
        for i in infos
    ]
    sys.stdout.write(table(["name", "vendor", "platform", "units", "devices", "source"], rows) + "\n")
    return 0
