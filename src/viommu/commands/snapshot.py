"""``viommu snapshot``: record the host as a snapshot, or capture its sysfs files for a support case.

viommu snapshot [-o FILE] [--root PATH] [--backend ...] [--profile NAME]
viommu snapshot --capture-sysfs FILE.tar [--root DIR]
"""

from __future__ import annotations

import sys
from typing import Any

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from viommu.argspec import Args


def register(subparsers: Any) -> None:
    from viommu.commands.inspect import add_host_arguments

    parser = subparsers.add_parser(
        "snapshot",
        help="write a host snapshot (JSON), or capture the relevant sysfs files into a tar",
        description="Discover the host and write everything found, with the machine identity, kernel "
        "release and capture time, as 'viommu-snapshot/1' JSON. With --capture-sysfs, write the sysfs "
        "files discovery reads into a tar instead; '--root FILE.tar' reads it back.",
    )
    add_host_arguments(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    parser.add_argument(
        "--capture-sysfs", metavar="FILE.tar", help="capture the sysfs files discovery reads into a tar"
    )
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.errors import HostAccessError, InputError

    if args.capture_sysfs is not None:
        if args.output is not None or args.profile is not None or args.backend != "auto":
            raise InputError("--capture-sysfs takes only --root", where="--capture-sysfs")
        from viommu.host.capture import capture_sysfs

        skipped = capture_sysfs(args.capture_sysfs, root=args.root)
        for path, why in sorted(skipped.items()):
            sys.stderr.write(f"viommu snapshot: not captured (unreadable): {path}: {why}\n")
        return 0
    from viommu.host.discover import discover
    from viommu.host.snapshot import dumps, stamped

    text = dumps(stamped(discover(args.backend, root=args.root, profile=args.profile)))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as exc:
        raise HostAccessError(f"cannot write: {exc.strerror or exc}", where=args.output) from None
    return 0
