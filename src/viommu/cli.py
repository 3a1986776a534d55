"""The ``viommu`` command line: parse, call the library, render.

Each subcommand lives in ``viommu.commands.<name>`` and exposes
``register(subparsers)``; its handler imports heavy modules lazily so that
``viommu check`` starts fast. Errors are mapped to exit codes here, once:
0 fine, 1 refused, 2 bad input or usage (one line, no traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from viommu import __version__
from viommu.argspec import Args, ParserSpec, parse
from viommu.errors import EXIT_INPUT, ViommuError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import NoReturn

#: Subcommand modules, in the order ``viommu --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "decode",
    "regs",
    "inspect",
    "snapshot",
    "profiles",
    "simulate",
    "check",
    "plan",
    "migrate_check",
    "libvirt_hook",
    "hotplug",
)

#: Modules besides the models (``registry.import_all()``) that register reason codes,
#: imported by ``--explain`` so that every code is known.
REASON_MODULES: tuple[str, ...] = (
    "viommu.models.qdev",
    "viommu.dma",
    "viommu.machine",
    "viommu.preflight",
    "viommu.frontends",
    "viommu.scenario",
    "viommu.frontends.qmp_guard",
)


Handler = Callable[[Args], int]


def _wanted(words: Sequence[str]) -> str | None:
    """The command module ``words`` invoke (the first word that is not an option), if it is one."""
    for word in words:
        if word.startswith("-"):
            if word in ("-h", "--help", "--explain"):
                return None
            continue
        name = word.replace("-", "_")
        return name if name in COMMANDS else None
    return None


def build_spec(words: Sequence[str] | None = None) -> ParserSpec:
    """The command line's declarations, recorded (``viommu.argspec``); given the command line,
    only the invoked command's module is imported and registered (start-up time: ``viommu
    check`` must not pay for every other command)."""
    only = _wanted(words) if words is not None else None
    spec = ParserSpec({
        "prog": "viommu",
        "description": "Host IOMMU / virtual IOMMU capability framework for VFIO passthrough.",
    })
    spec.add_argument("--version", action="version", version=f"viommu {__version__}")
    spec.add_argument(
        "--explain", metavar="CODE", help="explain a reason code ('--explain list' lists them all)"
    )
    sub = spec.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        qualified = f"viommu.commands.{name}"
        __import__(qualified)  # importlib.import_module, without importing importlib
        sys.modules[qualified].register(sub)
    return spec


def import_reason_modules() -> None:
    """Import every module that registers reason codes (``--explain`` must know them all)."""
    from viommu.models import registry

    registry.import_all()
    for name in REASON_MODULES:
        __import__(name)


def explain(code: str) -> int:
    """``viommu --explain CODE`` / ``--explain list``."""
    from viommu.reasons import REASONS

    import_reason_modules()
    if code == "list":
        width = max(len(c) for c in REASONS)
        for name in sorted(REASONS):
            first = REASONS[name].split(". ")[0].rstrip(".")
            sys.stdout.write(f"{name.ljust(width)}  {first}.\n")
        return 0
    text = REASONS.get(code)
    if text is None:
        sys.stderr.write(f"viommu: --explain: unknown reason code {code!r} (see 'viommu --explain list')\n")
        return EXIT_INPUT
    import textwrap

    sys.stdout.write(f"{code}\n\n{textwrap.fill(text, width=88)}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # A QEMU command line after "--" is the VM itself: argparse must not see its options.
    qemu_argv: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, qemu_argv = words[:cut], words[cut + 1 :]
    spec = build_spec(words)
    args = parse(spec, words)
    if args is None:  # help, a usage error or a form only argparse reads: argparse decides
        from viommu._argparse import real_parser

        parser = real_parser(spec)
        args = parser.parse_args(words, namespace=Args())
        if args.explain is None and args.command is None:
            parser.error("a command is required (see 'viommu --help')")
    args.qemu_argv = qemu_argv
    try:
        if args.explain is not None:
            return explain(args.explain)
        handler: Handler = args.handler
        return handler(args)
    except ViommuError as exc:
        sys.stderr.write(f"viommu {args.command}: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:
        # `viommu ... | head` closed the pipe: not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
