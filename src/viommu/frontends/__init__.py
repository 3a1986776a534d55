"""Front ends: a VM description in, a :class:`~viommu.vm.VMConfig` out.

:func:`load_vm` tells the input apart by content: a libvirt domain XML
(the text starts with ``<``), a scenario TOML (a ``[viommu]`` table), or a
QEMU command line (shell text, e.g. ``qm showcmd`` output); argv words given
after ``--`` are a QEMU command line too. ``-`` reads standard input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from viommu.errors import InputError
from viommu.vm import VMConfig

__all__ = ["detect_kind", "load_vm", "parse_text"]


def _read(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read the VM description: {exc.strerror}", where=path) from None
    try:
        # utf-8-sig, by hand: the codec module costs an import
        return data[3:].decode() if data.startswith(b"\xef\xbb\xbf") else data.decode()
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", where=path) from None


def _toml_hint(text: str) -> bool:
    """What every scenario has: a ``[table]`` header or a top-level ``viommu =`` key
    (``^\\s*(?:\\[|viommu\\s*=)`` on some line, without a regular expression)."""
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("[") or (
            stripped.startswith("viommu") and stripped[len("viommu") :].lstrip().startswith("=")
        ):
            return True
    return False


def detect_kind(text: str) -> str:
    """``libvirt``, ``scenario`` or ``qemu`` for a document's text."""
    if text.lstrip("\ufeff \t\r\n").startswith("<"):
        # An XML declaration and comments start with "<" as well.
        return "libvirt"
    if not _toml_hint(text):
        return "qemu"  # no table header and no viommu key: not worth parsing as TOML
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "qemu"
    # A scenario names its vIOMMU in a [viommu] table, a top-level viommu = ..., or
    # (viommu.scenario's layout) [vm] viommu = "-device string".
    vm = doc.get("vm")
    if "viommu" in doc or (isinstance(vm, dict) and "viommu" in vm):
        return "scenario"
    return "qemu"


def parse_text(text: str, *, path: str) -> VMConfig:
    """Parse a libvirt XML or a QEMU command line held in ``text`` (``path`` names it in errors)."""
    kind = detect_kind(text)
    if kind == "libvirt":
        from viommu.frontends.libvirt_xml import parse_libvirt

        return parse_libvirt(text, path=path)
    if kind == "scenario":
        raise InputError("a scenario file must be loaded from a path", where=path)
    from viommu.frontends.qemu_argv import parse_words
    from viommu.frontends.words import split_words

    words = split_words(text, path=path)
    if not words:
        raise InputError("the file holds no QEMU command line", where=path)
    return parse_words(words, path=path)


def load_vm(path: str | None, argv: Sequence[str] | None = None) -> VMConfig:
    """The VM described by the file at ``path`` (``-``: stdin), or by ``argv`` when ``path`` is None."""
    if path is None:
        if not argv:
            raise InputError("give a VM file, or a QEMU command line after --", where="argv")
        from viommu.frontends.qemu_argv import parse_argv

        return parse_argv(argv)
    text = _read(path)
    if detect_kind(text) == "scenario":
        try:
            from viommu import scenario  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            raise InputError("scenario files need viommu.scenario", where=path) from None
        loaded = getattr(scenario, "load_scenario")(path)  # noqa: B009 - the module may lack it
        vm = getattr(loaded, "vm", loaded)  # a Scenario carries its VMConfig
        if not isinstance(vm, VMConfig):
            raise InputError("viommu.scenario.load_scenario gave no VMConfig", where=path)
        return vm
    return parse_text(text, path="<stdin>" if path == "-" else path)
