"""The ``viommu`` command line: parse, call the library, render.

Each subcommand lives in ``viommu.commands.<name>`` and exposes
``register(subparsers)``; its handler imports heavy modules lazily so that
``viommu check`` starts fast. Errors are mapped to exit codes here, once:
0 fine, 1 refused, 2 bad input or usage (one line, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from viommu import __version__
from viommu.errors import EXIT_INPUT, ViommuError

#: Subcommand modules, in the order ``viommu --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "decode",
    "regs",
    "inspect",
    "snapshot",
    "profiles",
    "hotplug",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_INPUT)


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="viommu",
        description="Host IOMMU / virtual IOMMU capability framework for VFIO passthrough.",
    )
    parser.add_argument("--version", action="version", version=f"viommu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"viommu.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ViommuError as exc:
        sys.stderr.write(f"viommu {args.command}: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:
        # `viommu ... | head` closed the pipe: not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
