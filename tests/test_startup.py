"""What keeps ``viommu check`` quick to start, held to the behaviour it replaced.

Each hand-written check on the start-up path is compared with the regular expression it
stands for (the regular expression is the specification), on generated and edge-case
inputs; the import graph of ``viommu check`` is pinned so that a heavy module creeping
back shows up here rather than only in ``bench/bench_check_startup.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from viommu.errors import InputError
from viommu.frontends import _toml_hint
from viommu.frontends.qemu_argv import _is_qemu_program, bdf_parts, size_parts
from viommu.frontends.words import is_env_assignment, split_words
from viommu.host.inventory import _is_hex
from viommu.lazyre import Pattern
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.qdev import strtou64_parts
from viommu.reasons import _kebab

ROOT = Path(__file__).resolve().parent.parent
#: Characters that make the edge cases: separators, digits, letters, non-ASCII digits
#: and letters (``\d`` and ``\w`` are Unicode-aware), quotes and white space.
ALPHABET = st.sampled_from([*"aAzZ_09.-+=,:x[] \t\n\\'\"#$", "٣", "é", "²", "K", "ß"])
TEXT = st.text(ALPHABET, max_size=24)

settings.register_profile("startup", derandomize=True, max_examples=400, deadline=None)


@settings(settings.get_profile("startup"))
@given(TEXT)
@example("10.0")
@example(" 9.2.1 ")
@example("10..0")
@example("١٠.٠")
@example("10.0.0.0")
def test_qemu_version_parse_matches_its_regex(text: str) -> None:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if m is None:
        with pytest.raises(InputError):
            QemuVersion.parse(text)
    else:
        assert QemuVersion.parse(text) == QemuVersion(int(m[1]), int(m[2]), int(m[3] or 0))


@settings(settings.get_profile("startup"))
@given(TEXT)
@example("viommu = 1")
@example("  [vm]")
@example("x = 1\n  viommu=2")
@example("viommux = 1")
@example("\n\n   \n[")
def test_toml_hint_matches_its_regex(text: str) -> None:
    want = re.search(r"^\s*(?:\[|viommu\s*=)", text, re.MULTILINE) is not None
    assert _toml_hint(text) is want


@settings(settings.get_profile("startup"))
@given(TEXT)
@example("LC_ALL=C")
@example("_=x")
@example("9A=1")
@example("A-B=1")
@example("=1")
@example("é=1")
def test_env_assignment_matches_its_regex(word: str) -> None:
    assert is_env_assignment(word) is (re.match(r"[A-Za-z_][A-Za-z0-9_]*=", word) is not None)


@settings(settings.get_profile("startup"))
@given(st.one_of(TEXT, TEXT.map(lambda t: "qemu-system-" + t)))
@example("qemu-system-x86_64")
@example("qemu-system-")
@example("qemu-system-aarch64.exe")
@example("qemu-system-é")
@example("qemu-system-²")
@example("kvm")
@example("qemu-kvmx")
def test_qemu_program_matches_its_regex(name: str) -> None:
    want = re.fullmatch(r"(qemu-system-[\w.-]+|qemu-kvm|kvm|qemu)", name) is not None
    assert _is_qemu_program(name) is want


@settings(settings.get_profile("startup"))
@given(st.one_of(TEXT, st.text("0123456789abcdefABCDEFx", max_size=10).map(lambda t: "0x" + t)))
@example("0x")
@example("0x1f")
@example("0X1f")
@example("0x1F")
def test_hex_matches_its_regex(text: str) -> None:
    assert _is_hex(text) is (re.fullmatch(r"0x[0-9a-f]+", text) is not None)


@settings(settings.get_profile("startup"))
@given(TEXT)
@example("caching-mode-required")
@example("a--b")
@example("-a")
@example("a-")
@example("A")
def test_reason_code_check_matches_its_regex(code: str) -> None:
    assert _kebab(code) is (re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", code) is not None)


#: What numbers, sizes and PCI addresses are made of, with Unicode digits and spaces.
NUMERIC = st.text(st.sampled_from([*"0123456789abcdefABCDEFxX.:+- \t\v\nkKmMgGtTpP", "٣", "\u00a0"]),
                  max_size=14)


@settings(settings.get_profile("startup"))
@given(st.one_of(TEXT, NUMERIC))
@example("0000:01:00.0")
@example("01:00.7")
@example("01:00.8")
@example("0000:01:00")
@example("000:01:00.0")
@example("0000:01:00.0:")
@example("AB:cd.1")
def test_bdf_parts_match_their_regex(text: str) -> None:
    m = re.fullmatch(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])", text)
    assert bdf_parts(text) == (None if m is None else m.groups())


@settings(settings.get_profile("startup"))
@given(st.one_of(TEXT, NUMERIC))
@example("4G")
@example(" 0x1000 ")
@example("0x")
@example("0x1b")
@example("1.5 G ")
@example(".5M")
@example("5.")
@example("٣G")
@example("4 GB")
def test_size_parts_match_their_regex(text: str) -> None:
    m = re.fullmatch(r"\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?|\.\d+)\s*([bBkKmMgGtTpPeE]?)\s*", text)
    assert size_parts(text) == (None if m is None else m.groups())


@settings(settings.get_profile("startup"))
@given(st.one_of(TEXT, NUMERIC))
@example("39")
@example(" \t+0x30")
@example("-017")
@example("08")
@example("0x")
@example("0")
@example("٣")
@example("\u00a039")
def test_strtou64_parts_match_their_regex(text: str) -> None:
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    assert strtou64_parts(text) == (None if m is None else m.groups())


def _reference_split(text: str) -> list[str]:
    """QEMU's option-string split as a character loop: ``,,`` is a literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "," and text[i + 1 : i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if text[i] == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


@settings(settings.get_profile("startup"))
@given(st.text(st.sampled_from(list("ab=,")), max_size=16))
@example("virtio-iommu-pci,id=a,,b")
@example("x,,,y")
@example("x,,")
@example("x,")
def test_device_spec_split_matches_the_character_loop(rest: str) -> None:
    text = "dev," + rest
    parts = _reference_split(text)
    props: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            key, value = (key[2:], "off") if key.startswith("no") else (key, "on")
        props[key] = value
    assert DeviceSpec.parse(text).props == props


@settings(settings.get_profile("startup"))
@given(st.text(st.sampled_from(list("ab -=\t\n'\"\\#$")), max_size=30))
def test_split_words_matches_shlex(text: str) -> None:
    """Outside continuations, the splitter agrees with shlex.split (POSIX mode, comments on)
    wherever shlex follows POSIX: shlex also starts a comment at a "#" inside a word."""
    import shlex

    assume("\\\n" not in text)  # joined continuations are this splitter's addition
    assume(re.search(r"[^ \t\n]#", text) is None)
    try:
        want = shlex.split(text, comments=True)
    except ValueError:
        with pytest.raises(InputError):
            split_words(text, path="t")
        return
    assert [w.text for w in split_words(text, path="t")] == want


def test_lazy_pattern_compiles_on_first_use_and_agrees_with_re() -> None:
    p = Pattern(r"(a+)(b)?", re.IGNORECASE)
    assert p._compiled is None
    for text in ("aab", "AAB", "b", "", "aaX"):
        ours, theirs = p.fullmatch(text), re.fullmatch(r"(a+)(b)?", text, re.IGNORECASE)
        assert (ours and ours.groups()) == (theirs and theirs.groups())
        ours, theirs = p.match(text, 1), re.compile(r"(a+)(b)?", re.IGNORECASE).match(text, 1)
        assert (ours and ours.span()) == (theirs and theirs.span())
        ours, theirs = p.search(text), re.search(r"(a+)(b)?", text, re.IGNORECASE)
        assert (ours and ours.span()) == (theirs and theirs.span())
    assert p._compiled is not None


#: Modules ``viommu check`` must not import: heavy, or needed by other commands only.
NOT_ON_THE_CHECK_PATH = ("typing", "dataclasses", "inspect", "importlib.util", "tomllib", "shutil",
                         "pathlib", "datetime", "asyncio", "qemu", "defusedxml", "xml", "textwrap",
                         "contextlib", "viommu.models.virtio", "viommu.models.smmuv3",
                         "viommu.frontends.libvirt_xml", "viommu.scenario", "viommu.host.sysfs")


def test_check_imports_nothing_heavy(tmp_path: Path) -> None:
    snapshot = tmp_path / "host.json"
    snapshot.write_bytes(subprocess.run(
        [sys.executable, "-m", "viommu", "inspect", "--profile", "intel-cometlake-u-xps13-7390", "--json"],
        capture_output=True, check=True).stdout)
    code = (
        "import sys, json, io\n"
        "out = sys.stdout; sys.stdout = io.StringIO()\n"
        "from viommu.cli import main\n"
        f"rc = main(['check', {str(ROOT / 'tests/data/check/eight-devices.cmd')!r}, '--host', "
        f"{str(snapshot)!r}, '--json'])\n"
        "report = json.loads(sys.stdout.getvalue())\n"
        "out.write(json.dumps({'rc': rc, 'devices': len(report['devices']),\n"
        "                      'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    result = json.loads(done.stdout)
    assert result["devices"] == 8  # the check really ran
    loaded = set(result["modules"])
    heavy = sorted(m for m in loaded for h in NOT_ON_THE_CHECK_PATH if m == h or m.startswith(h + "."))
    assert heavy == []
