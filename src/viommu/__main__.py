"""``python -m viommu`` and the ``viommu`` console script.

Two start-up and shut-down settings for the process (``viommu check`` must take at most three
times ``python3 -c pass``; see ``bench/bench_check_startup.py``):

- The cyclic garbage collector is off: a command runs for milliseconds and allocates little,
  and during start-up the collector would only walk the objects the imports create.
  Reference counting still frees everything that is not in a cycle.
- Once the command has returned and its output is flushed, the process ends with
  ``os._exit``: tearing the interpreter down (freeing every module and object one by one)
  took about 5 ms, a sixth of ``viommu check``. Commands close the files they write
  themselves; nothing of viommu's relies on ``atexit``. Usage errors, ``--help`` and
  uncaught exceptions leave the usual way.

``viommu.cli.main`` (the library entry) does neither.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import TextIO


def _flush(stream: TextIO) -> None:
    try:
        stream.flush()
    except BrokenPipeError:
        return  # the reader went away once the command was done: nothing left to tell it


def run() -> None:
    gc.disable()
    from viommu.cli import main

    code = main()
    _flush(sys.stdout)
    _flush(sys.stderr)
    os._exit(code)


if __name__ == "__main__":
    run()
