"""Shell words with the line each one starts on.

A QEMU command line kept in a file (a launch script, Proxmox ``qm showcmd``
output, libvirt's ``.args`` test files) is shell text. :func:`shlex.split`
splits it the same way but cannot say on which line a word stood, and
treats a backslash-newline continuation as a word of its own; this splitter
follows the POSIX rules ``shlex.split`` follows (single quotes literal,
double quotes with ``\\$ \\` \\" \\\\`` escapes, a backslash quoting the next
character, ``#`` starting a comment at the start of a word) and also joins
continuations, so that every error can name ``FILE:LINE``.
"""

from __future__ import annotations

from viommu.errors import InputError
from viommu.lazyre import Pattern
from viommu.record import record

_BLANK = " \t\r"
_DQ_ESCAPES = '$`"\\\n'
#: A run of characters that are neither blank nor quoting.
_PLAIN = Pattern(r"[^ \t\r\n\\'\"]+")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")


@record(frozen=True)
class Word:
    """One shell word and the 1-based line its first character is on."""

    text: str
    line: int


def split_words(text: str, *, path: str) -> list[Word]:
    """Split shell text into words; unbalanced quotes raise InputError at the opening line."""
    words: list[Word] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch in _BLANK:
            i += 1
        elif ch == "\\" and text[i + 1 : i + 2] == "\n":
            line += 1
            i += 2
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        else:
            start = line
            buf: list[str] = []
            while i < n and text[i] not in _BLANK and text[i] != "\n":
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise InputError("a trailing backslash escapes nothing", where=f"{path}:{line}")
                    if text[i + 1] == "\n":
                        line += 1
                    else:
                        buf.append(text[i + 1])
                    i += 2
                elif ch == "'":
                    end = text.find("'", i + 1)
                    if end < 0:
                        raise InputError("unbalanced ' quote (opened here)", where=f"{path}:{line}")
                    segment = text[i + 1 : end]
                    line += segment.count("\n")
                    buf.append(segment)
                    i = end + 1
                elif ch == '"':
                    opened = line
                    i += 1
                    while True:
                        if i >= n:
                            raise InputError('unbalanced " quote (opened here)', where=f"{path}:{opened}")
                        c = text[i]
                        if c == '"':
                            i += 1
                            break
                        if c == "\\" and text[i + 1 : i + 2] and text[i + 1] in _DQ_ESCAPES:
                            if text[i + 1] == "\n":
                                line += 1
                            else:
                                buf.append(text[i + 1])
                            i += 2
                            continue
                        if c == "\n":
                            line += 1
                        buf.append(c)
                        i += 1
                else:
                    run = _PLAIN.match(text, i)  # the characters up to the next special one
                    assert run is not None  # text[i] is not special
                    buf.append(run.group())
                    i = run.end()
            words.append(Word("".join(buf), start))
    return words


def is_env_assignment(word: str) -> bool:
    """``LC_ALL=C`` before the program, as in libvirt's ``.args`` files."""
    name, sep, _ = word.partition("=")  # [A-Za-z_][A-Za-z0-9_]*= at the start
    return bool(sep and name and name[0] in _NAME_START and _NAME_CHARS.issuperset(name))
