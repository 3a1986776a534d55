"""The quick command-line parser (viommu.argspec) against argparse itself.

For every command, command lines are generated from its own option strings (exact,
abbreviated, with ``=``), values (choices, numbers, ``-``, ``-x``, empty, spaced) and
positionals. Whenever the quick parser gives an answer, argparse must give the same
namespace; when argparse refuses a line the quick parser must leave it to argparse. The
plain forms must really be read without argparse (else the start-up saving is gone).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viommu import cli
from viommu._argparse import real_parser
from viommu.argspec import Args, ArgSpec, ParserSpec, parse

COMMAND_NAMES = [name.replace("_", "-") for name in cli.COMMANDS]
settings.register_profile("argspec", derandomize=True, max_examples=300, deadline=None)


def spec_for(command: str) -> ParserSpec:
    return cli.build_spec([command])


def argparse_result(spec: ParserSpec, words: list[str]) -> dict[str, Any] | None:
    """argparse's namespace for ``words``, or None when it refuses them (usage error, help)."""
    parser = real_parser(spec)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(parser.parse_args(words, namespace=Args()))
        except SystemExit:
            return None


def command_arguments(spec: ParserSpec, command: str) -> list[ArgSpec]:
    assert spec.subparsers is not None
    return spec.subparsers.parsers[command].arguments


def tokens(spec: ParserSpec, command: str) -> st.SearchStrategy[str]:
    values = ["vm.cmd", "-", "", "-x", "5", "-5", "2.5", "a b", "x=y", "0000:01:00.0"]
    options: list[str] = []
    for arg in command_arguments(spec, command):
        values += [str(c) for c in arg.choices or ()]
        for flag in arg.flags:
            if flag.startswith("-"):
                options += [flag, f"{flag}=v", f"{flag}=", flag[:-1] if len(flag) > 3 else flag]
                options += [f"{flag}={c}" for c in arg.choices or ()]
    options += ["--nope", "-q", "--"]
    return st.sampled_from(values + options)


@st.composite
def plausible(draw: st.DrawFn, spec: ParserSpec, command: str) -> list[str]:
    """A line a user might type: some options (the required ones always) with fitting values,
    positionals in one run or split, in any order, now and then a stray token."""
    values = st.sampled_from(["vm.cmd", "-", "", "5", "2.5", "a b", "x=y", "-x"])
    chunks: list[list[str]] = []
    positionals: list[str] = []
    for arg in command_arguments(spec, command):
        if arg.positional:
            count = {None: 1, "?": draw(st.integers(0, 1)), "*": draw(st.integers(0, 2)),
                     "+": draw(st.integers(1, 2))}[arg.nargs]
            positionals += [draw(values) for _ in range(count)]
            continue
        if not (arg.required or draw(st.booleans())):
            continue
        for _ in range(draw(st.integers(1, 2)) if arg.action == "append" else 1):
            flag = draw(st.sampled_from(arg.flags))
            if arg.action in ("store_true", "store_false"):
                chunks.append([flag])
                continue
            value = draw(st.sampled_from([str(c) for c in arg.choices]) if arg.choices else values)
            chunks.append([f"{flag}={value}"] if draw(st.booleans()) else [flag, value])
    split = draw(st.integers(0, len(positionals)))
    for part in (positionals[:split], positionals[split:]):
        if part:
            chunks.insert(draw(st.integers(0, len(chunks))), part)
    words = [w for chunk in chunks for w in chunk]
    if draw(st.integers(0, 4)) == 0:
        words.insert(draw(st.integers(0, len(words))), draw(tokens(spec, command)))
    return words


def check_agreement(spec: ParserSpec, words: list[str]) -> bool:
    """Whether the quick parser answered; when it does, it must be argparse's answer."""
    quick = parse(spec, words)
    real = argparse_result(spec, words)
    if quick is not None:
        assert real is not None, f"argparse refuses {words}, the quick parser read {vars(quick)}"
        assert vars(quick) == real
    return quick is not None


@pytest.mark.parametrize("command", COMMAND_NAMES)
@settings(settings.get_profile("argspec"))
@given(data=st.data())
def test_quick_parse_agrees_with_argparse_on_plausible_lines(command: str, data: st.DataObject) -> None:
    spec = spec_for(command)
    check_agreement(spec, [command, *data.draw(plausible(spec, command))])


@pytest.mark.parametrize("command", COMMAND_NAMES)
@settings(settings.get_profile("argspec"))
@given(data=st.data())
def test_quick_parse_agrees_with_argparse_on_token_soup(command: str, data: st.DataObject) -> None:
    spec = spec_for(command)
    words = [command, *data.draw(st.lists(tokens(spec, command), max_size=7))]
    quick = parse(spec, words)
    real = argparse_result(spec, words)
    if quick is not None:
        assert real is not None, f"argparse refuses {words}, the quick parser read {vars(quick)}"
        assert vars(quick) == real


#: Plain command lines each command's users type: the quick parser must read them.
PLAIN = [
    ["check", "vm.cmd", "--host", "h.json", "--json"],
    ["check", "--profile", "intel-cometlake-u-xps13-7390", "--policy", "sync", "vm.xml"],
    ["check", "--color=never", "--qemu-version", "9.2"],
    ["plan", "vm.cmd", "--host", "a.json", "--host", "b.json", "--format", "libvirt"],
    ["migrate-check", "vm.cmd", "--source", "a.json", "--dest", "b.json"],
    ["libvirt-hook", "guest", "prepare", "begin", "-"],
    ["libvirt-hook", "guest", "stopped"],
    ["hotplug", "--qmp", "/run/q.sock", "--host", "0000:01:00.0", "--dry-run", "--timeout", "2"],
    ["inspect", "--json"],
    ["profiles"],
    ["simulate", "examples/seed-check.toml", "--json"],
    ["snapshot", "-o", "out.json"],
    ["regs", "0000:00:02.0", "--json"],
]


@pytest.mark.parametrize("words", PLAIN, ids=[" ".join(w) for w in PLAIN])
def test_plain_command_lines_are_read_without_argparse_and_as_argparse_reads_them(words: list[str]) -> None:
    spec = spec_for(words[0])
    quick = parse(spec, words)
    real = argparse_result(spec, words)
    assert real is not None
    assert quick is not None and vars(quick) == real


@pytest.mark.parametrize("words", [
    ["check", "-h"], ["check", "--hos", "h.json"], ["check", "a", "b"], ["check", "--host"],
    ["check", "--policy", "bogus"], ["check", "--json=1"], ["check", "--host", "-x"],
    ["hotplug", "--host", "0000:01:00.0"], ["hotplug", "--qmp", "s", "--host", "b", "--timeout", "x"],
    ["decode", "vtd", "--cap", "0x1", "--ecap", "0x2"], ["--version"], ["--explain", "list"], [],
])
def test_what_only_argparse_decides_is_left_to_it(words: list[str]) -> None:
    spec = cli.build_spec(words)
    assert parse(spec, words) is None


def test_string_defaults_are_converted_by_type_as_argparse_does() -> None:
    spec = ParserSpec({"prog": "t"})
    sub = spec.add_subparsers(dest="command")
    p = sub.add_parser("c")
    p.add_argument("--n", type=int, default="7")
    p.add_argument("--m", type=int, default=7)
    p.add_argument("--tags", action="append", default=["a"])
    p.add_argument("pos", nargs="?", type=int, default="3")
    p.set_defaults(extra=1)
    for words in (["c"], ["c", "--n", "2", "5"], ["c", "--tags", "b", "--tags", "c"]):
        quick = parse(spec, words)
        assert quick is not None and vars(quick) == argparse_result(spec, words)
    assert vars(parse(spec, ["c"])) == {"command": "c", "n": 7, "m": 7, "tags": ["a"], "pos": 3, "extra": 1}


def test_the_check_benchmark_command_line_never_imports_argparse(tmp_path: Any) -> None:
    code = (
        "import sys, io\n"
        "sys.stdout = io.StringIO()\n"
        "from viommu.cli import main\n"
        "main(['check', 'tests/data/check/eight-devices.cmd', '--profile', "
        "'intel-cometlake-u-xps13-7390', '--json'])\n"
        "sys.__stdout__.write(' '.join(m for m in ('argparse', 'gettext', 'locale') if m in sys.modules))\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout == ""


@st.composite
def synthetic(draw: st.DrawFn) -> tuple[ParserSpec, list[str]]:
    """A made-up command with argparse features our commands use sparingly (store_false,
    several positionals of each nargs, int types, choices, a mutually exclusive group) and
    a command line made of its tokens."""
    spec = ParserSpec({"prog": "t"})
    parser = spec.add_subparsers(dest="command").add_parser("c")
    names = iter("pqr")
    for nargs in draw(st.lists(st.sampled_from([None, "?", "*", "+"]), max_size=3)):
        parser.add_argument(next(names), nargs=nargs)
    parser.add_argument("--on", action="store_true")
    parser.add_argument("--off", action="store_false")
    parser.add_argument("--n", type=int, default=draw(st.sampled_from([None, 1, "2"])))
    parser.add_argument("--pick", choices=("a", "b"), default="a")
    parser.add_argument("--add", action="append")
    group = parser.add_mutually_exclusive_group(required=draw(st.booleans()))
    group.add_argument("--x", metavar="X")
    group.add_argument("--y", action="store_true")
    pool = ["w", "v", "3", "-3", "a", "b", "--on", "--off", "--n", "--n=4", "--pick", "--pick=b",
            "--add", "--x", "--y", "--o", "-"]
    return spec, ["c", *draw(st.lists(st.sampled_from(pool), max_size=8))]


@settings(settings.get_profile("argspec"))
@given(synthetic())
def test_quick_parse_agrees_with_argparse_on_synthetic_commands(case: tuple[ParserSpec, list[str]]) -> None:
    spec, words = case
    check_agreement(spec, words)


def test_greedy_positional_matching_is_argparse_regex_matching() -> None:
    """Every nargs sequence of up to four positionals, over up to six words."""
    import itertools
    import re

    from viommu.argspec import _greedy

    patterns = {None: "(-*A-*)", "?": "(-*A?-*)", "*": "(-*[A-]*)", "+": "(-*A[A-]*)"}
    for size in range(5):
        for nargs in itertools.product(patterns, repeat=size):
            for available in range(7):
                m = re.match("".join(patterns[n] for n in nargs), "A" * available)
                want = None if m is None else [len(g) for g in m.groups()]
                assert _greedy(nargs, available) == want, (nargs, available)
