"""The real argparse parsers, built from the recorded specs (``viommu.argspec``) when the
command line needs argparse: help, usage errors, and anything the quick parser leaves to it.
Imported only then: argparse, gettext and locale cost about 4 ms of start-up."""

from __future__ import annotations

import argparse
import sys

from viommu.argspec import ParserSpec, replay
from viommu.errors import EXIT_INPUT

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _terminal_width() -> int:
    """argparse's own default, without importing shutil (which drags in bz2 and lzma)."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size().columns
    except (OSError, ValueError):
        columns = 80
    return max(columns - 2, 20)


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_width())


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2.

    ``add_argument`` builds a help formatter to validate metavars: ours sizes
    itself without shutil.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_INPUT)


def real_parser(spec: ParserSpec) -> Parser:
    """The argparse parser ``spec`` recorded."""
    parser = replay(spec, Parser(**spec.kwargs), Parser)
    assert isinstance(parser, Parser)
    return parser
