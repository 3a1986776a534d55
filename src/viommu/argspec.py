"""Command lines parsed the way argparse would, without importing argparse when it can be.

Every command declares its arguments with the argparse API (``register(subparsers)`` in
``viommu.commands.*``). Importing argparse costs about 4 ms of ``viommu check``'s start-up
(argparse, gettext and the locale module that gettext loads the first time a help text is
translated), a sixth of what it may take. So the declarations are first made on the
recorders here: :class:`ParserSpec` takes ``add_argument``, ``set_defaults``,
``add_mutually_exclusive_group`` and ``add_subparsers`` calls and keeps them in order.

:func:`parse` then reads the plain forms of a command line: ``COMMAND``, exact option
strings (``--opt VALUE``, ``--opt=VALUE``, ``-o VALUE``), flags, ``append`` options,
``type`` and ``choices``, defaults and ``set_defaults``, and positionals given in one run.
It follows argparse 3.11's rules for each (the same greedy matching of positionals, string
defaults converted by ``type``, appends that copy the default) and returns ``None``
whenever argparse could see something else: help, ``--version``, an abbreviated or unknown
option, a value that starts with ``-``, a missing or conflicting argument, a bad choice,
nested subcommands. :func:`replay` then makes the same calls on real argparse parsers,
which parse the line and report errors in argparse's own words. ``tests/test_argspec.py``
holds the two to the same result on generated command lines.
"""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

#: argparse.SUPPRESS (the same string, compared with ==): a default that leaves the attribute unset.
SUPPRESS = "==SUPPRESS=="

_VALUE_ACTIONS = ("store", "append")
_FLAG_ACTIONS = ("store_true", "store_false")
#: How many words each positional nargs parse() handles may take (argparse's patterns
#: ``(-*A-*)``, ``(-*A?-*)``, ``(-*[A-]*)``, ``(-*A[A-]*)``; no ``--`` reaches parse()).
_NARGS_RANGE: dict[str | None, tuple[int, int]] = {None: (1, 1), "?": (0, 1), "*": (0, -1), "+": (1, -1)}


class Args(SimpleNamespace):
    """The parsed command line (what argparse calls a Namespace), from either parser."""


class _Unsupported(Exception):
    """Raised inside parse(): argparse must decide this command line."""


class ArgSpec:
    """One ``add_argument`` call, with what argparse derives from it."""

    def __init__(self, flags: tuple[str, ...], kwargs: dict[str, Any], defaults: dict[str, Any]) -> None:
        self.flags = flags
        self.kwargs = kwargs
        self.positional = bool(flags) and not flags[0].startswith("-")
        self.action = kwargs.get("action", "store")
        self.nargs = kwargs.get("nargs")
        self.type = kwargs.get("type")
        self.choices = kwargs.get("choices")
        self.required = bool(kwargs.get("required", False))
        if self.positional:
            self.dest = kwargs.get("dest", flags[0])
        else:
            longs = [f for f in flags if f.startswith("--")]
            self.dest = kwargs.get("dest") or (longs or list(flags))[0].lstrip("-").replace("-", "_")
        # ArgumentParser.add_argument: a set_defaults() value made earlier is the default.
        self.default: Any
        if "default" in kwargs:
            self.default = kwargs["default"]
        elif self.dest in defaults:
            self.default = defaults[self.dest]
        elif self.action == "store_true":
            self.default = False
        elif self.action == "store_false":
            self.default = True
        elif self.action in ("help", "version"):
            self.default = SUPPRESS
        else:
            self.default = None
        known = {"action", "nargs", "type", "choices", "required", "dest", "default", "help", "metavar"}
        self.supported = (
            set(kwargs) <= known
            and (self.action in _VALUE_ACTIONS or (self.action in _FLAG_ACTIONS and not self.positional))
            and (self.nargs in _NARGS_RANGE if self.positional else self.nargs is None)
            and not (self.positional and self.action != "store")
        )

    def convert(self, text: str) -> Any:
        """argparse's _get_value: ``type`` applied (no type: the string itself)."""
        if self.type is None:
            return text
        try:
            return self.type(text)
        except Exception:
            raise _Unsupported from None  # argparse words the error (or raises it again)

    def check(self, value: Any) -> None:
        """argparse's _check_value: ``choices``."""
        if self.choices is not None and value not in self.choices:
            raise _Unsupported

    def value(self, text: str) -> Any:
        value = self.convert(text)
        self.check(value)
        return value


class GroupSpec:
    """``add_mutually_exclusive_group()``: its members, and whether one is required."""

    def __init__(self, parser: ParserSpec, kwargs: dict[str, Any]) -> None:
        self.parser = parser
        self.kwargs = kwargs
        self.members: list[ArgSpec] = []

    def add_argument(self, *flags: str, **kwargs: Any) -> ArgSpec:
        arg = self.parser._argument(flags, kwargs, group=self)
        self.members.append(arg)
        return arg


class SubparsersSpec:
    """``add_subparsers()``: the commands, by name."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.dest: str | None = kwargs.get("dest")
        self.parsers: dict[str, ParserSpec] = {}

    def add_parser(self, name: str, **kwargs: Any) -> ParserSpec:
        parser = ParserSpec(kwargs)
        self.parsers[name] = parser
        for alias in kwargs.get("aliases", ()):
            self.parsers[alias] = parser
        return parser


class ParserSpec:
    """The calls made on one parser, in order, and the tables parse() reads."""

    def __init__(self, kwargs: dict[str, Any] | None = None) -> None:
        self.kwargs = dict(kwargs or {})
        #: ("argument", ArgSpec, group) | ("defaults", dict) | ("group", GroupSpec) |
        #: ("subparsers", SubparsersSpec), in call order.
        self.ops: list[tuple[Any, ...]] = []
        self.arguments: list[ArgSpec] = []
        self.defaults: dict[str, Any] = {}
        self.groups: list[GroupSpec] = []
        self.subparsers: SubparsersSpec | None = None
        # argparse's own -h/--help, unless add_help=False
        self.option_strings: set[str] = {"-h", "--help"} if self.kwargs.get("add_help", True) else set()

    def _argument(self, flags: tuple[str, ...], kwargs: dict[str, Any], group: GroupSpec | None) -> ArgSpec:
        arg = ArgSpec(flags, kwargs, self.defaults)
        self.arguments.append(arg)
        if not arg.positional:
            self.option_strings.update(flags)
        self.ops.append(("argument", arg, group))
        return arg

    def add_argument(self, *flags: str, **kwargs: Any) -> ArgSpec:
        return self._argument(flags, kwargs, None)

    def set_defaults(self, **kwargs: Any) -> None:
        self.defaults.update(kwargs)
        for arg in self.arguments:  # ArgumentParser.set_defaults updates existing actions too
            if arg.dest in kwargs:
                arg.default = kwargs[arg.dest]
        self.ops.append(("defaults", kwargs))

    def add_mutually_exclusive_group(self, **kwargs: Any) -> GroupSpec:
        group = GroupSpec(self, kwargs)
        self.groups.append(group)
        self.ops.append(("group", group))
        return group

    def add_subparsers(self, **kwargs: Any) -> SubparsersSpec:
        self.subparsers = SubparsersSpec(kwargs)
        self.ops.append(("subparsers", self.subparsers))
        return self.subparsers

    @property
    def simple(self) -> bool:
        """Whether parse() can read this parser's command lines (else argparse always does)."""
        return self.subparsers is None and all(a.supported for a in self.arguments)


def _looks_like_option(word: str) -> bool:
    return word.startswith("-") and word != "-"


def _defaults_of(parser: ParserSpec, values: dict[str, Any]) -> None:
    """parse_known_args' start: action defaults, then set_defaults() entries."""
    for arg in parser.arguments:
        if arg.dest not in values and arg.default != SUPPRESS:
            values[arg.dest] = arg.default
    for dest, value in parser.defaults.items():
        values.setdefault(dest, value)


def _parse_command(parser: ParserSpec, words: Sequence[str]) -> dict[str, Any]:
    options = {flag: arg for arg in parser.arguments if not arg.positional for flag in arg.flags}
    positionals = [arg for arg in parser.arguments if arg.positional]
    values: dict[str, Any] = {}
    _defaults_of(parser, values)
    seen: list[ArgSpec] = []
    run: list[str] = []  # the positional words, which must come in one run
    run_closed = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not _looks_like_option(word):
            if run_closed:
                raise _Unsupported  # positionals around an option: argparse's chunking decides
            run.append(word)
            continue
        if run:
            run_closed = True
        # _parse_optional: the whole word, then the part before "=" (--opt=VALUE, -o=VALUE)
        explicit: str | None = None
        arg = options.get(word)
        if arg is None and "=" in word:
            name, _, explicit = word.partition("=")
            arg = options.get(name)
        if arg is None:
            raise _Unsupported  # -h, an abbreviation, an unknown option, a negative number...
        if arg.action in _FLAG_ACTIONS:
            if explicit is not None:
                raise _Unsupported  # argparse: "ignored explicit argument"
            values[arg.dest] = arg.action == "store_true"
        else:
            if explicit is not None:
                text = explicit
            else:
                if i >= len(words) or _looks_like_option(words[i]):
                    raise _Unsupported  # "expected one argument", or a value argparse may refuse
                text = words[i]
                i += 1
            value = arg.value(text)
            if arg.action == "append":
                current = values.get(arg.dest)
                values[arg.dest] = [*(current or []), value]
            else:
                values[arg.dest] = value
        seen.append(arg)

    # consume_positionals: as many positionals as the greedy nargs patterns match.
    counts: list[int] = []
    for upto in range(len(positionals), 0, -1):
        found = _greedy([a.nargs for a in positionals[:upto]], len(run))
        if found is not None:
            counts = found
            break
    if sum(counts) != len(run):
        raise _Unsupported  # "unrecognized arguments"
    start = 0
    for arg, count in zip(positionals, counts, strict=False):
        taken = run[start : start + count]
        start += count
        if arg.nargs in (None, "?") and taken:
            values[arg.dest] = arg.value(taken[0])
        elif arg.nargs == "?":
            default = arg.default
            if isinstance(default, str):
                default = arg.value(default)
            else:
                arg.check(default)
            values[arg.dest] = default
        elif taken:
            values[arg.dest] = [arg.value(t) for t in taken]
        else:  # "*" with nothing
            default = arg.default if arg.default is not None else []
            arg.check(default)
            values[arg.dest] = default
        seen.append(arg)
    if len(counts) < len(positionals):
        # Only a positional that needs a word can be left over: "the following arguments are
        # required" (an optional one would have matched nothing).
        raise _Unsupported

    for arg in parser.arguments:
        if arg.required and arg not in seen:
            raise _Unsupported  # "the following arguments are required"
        default = arg.default
        if arg not in seen and values.get(arg.dest) is default and isinstance(default, str) \
                and default != SUPPRESS:
            values[arg.dest] = arg.convert(default)  # argparse converts string defaults (no check)
    for group in parser.groups:
        given = [a for a in group.members if a in seen]
        if len(given) > 1 or (group.kwargs.get("required") and not given):
            raise _Unsupported  # "not allowed with argument", "one of the arguments ... is required"
    return values


def _greedy(nargs: Sequence[str | None], available: int) -> list[int] | None:
    """The word counts ``re.match`` gives the concatenated nargs patterns over ``"A" *
    available`` (a prefix match: words may be left over), or None: each group greedy, the
    earlier ones first, backtracking as the regular-expression engine does."""
    if not nargs:
        return []
    low, high = _NARGS_RANGE[nargs[0]]
    most = available if high < 0 else min(high, available)
    for take in range(most, low - 1, -1):
        rest = _greedy(nargs[1:], available - take)
        if rest is not None:
            return [take, *rest]
    return None


def parse(top: ParserSpec, words: Sequence[str]) -> Args | None:
    """``words`` parsed as argparse would parse them with ``top``, or None: ask argparse."""
    commands = top.subparsers
    if commands is None or not words or _looks_like_option(words[0]):
        return None
    command = commands.parsers.get(words[0])
    if command is None or not command.simple:
        return None
    values: dict[str, Any] = {}
    _defaults_of(top, values)
    if commands.dest is not None:
        values[commands.dest] = words[0]
    try:
        values.update(_parse_command(command, words[1:]))
    except _Unsupported:
        return None
    return Args(**values)


def replay(spec: ParserSpec, parser: Any, parser_class: Any) -> Any:
    """Make the recorded calls on the argparse ``parser``; subcommand parsers are ``parser_class``."""
    groups: dict[int, Any] = {}
    for op in spec.ops:
        kind = op[0]
        if kind == "argument":
            _, arg, group = op
            target = parser if group is None else groups[id(group)]
            target.add_argument(*arg.flags, **arg.kwargs)
        elif kind == "defaults":
            parser.set_defaults(**op[1])
        elif kind == "group":
            groups[id(op[1])] = parser.add_mutually_exclusive_group(**op[1].kwargs)
        else:
            subs: SubparsersSpec = op[1]
            real = parser.add_subparsers(parser_class=parser_class, **subs.kwargs)
            done: dict[int, Any] = {}
            for name, child in subs.parsers.items():
                if id(child) in done:
                    continue  # an alias: add_parser made it
                done[id(child)] = replay(child, real.add_parser(name, **child.kwargs), parser_class)
    return parser
