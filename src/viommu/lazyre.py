"""Regular expressions compiled on first use.

A module-level ``re.compile`` costs 50-300 µs at import whether or not the command uses
the pattern; ``viommu check`` imported 22 of them (about 1.5 ms of its start-up). A
:class:`Pattern` holds the source and compiles it the first time it matches.
"""

from __future__ import annotations

import re


class Pattern:
    """``re.compile(pattern, flags)``, deferred: the methods viommu uses, same results."""

    __slots__ = ("_compiled", "flags", "pattern")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = re.compile(self.pattern, self.flags)
        return compiled

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled.fullmatch(text)

    def match(self, text: str, pos: int = 0) -> re.Match[str] | None:
        return self.compiled.match(text, pos)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled.search(text)

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"
