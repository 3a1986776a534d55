"""-readconfig files read the way the real QEMU 10 binary reads them (util/qemu-config.c's
sscanf patterns), edge case by edge case: QEMU's verdict and blamed line are the oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qemu_oracle import find_qemu
from viommu.errors import InputError
from viommu.frontends.qemu_argv import parse_argv

#: (config text, what QEMU says), each a case QEMU's parser decides by its sscanf return counts.
CASES = {
    "blank-line-of-spaces": '[device "a"]\n  driver = "edu"\n   \n',
    "key-before-group": '  driver = "edu"\n',
    "junk-after-value-and-bare-word": '[device "a"]\n  driver = "edu" trailing junk\nfoo bar\n',
    "no-space-before-equals": '[device "a"]\n  driver="edu"\n',
    "machine-group-and-unclosed-header": '[machine]\n  type = "q35"\n[device "b"]\n driver = "edu"\n\n#c\n'
                                         '[device "c"\n driver = "edu"\n',
    "unterminated-value": '[device "a"]\n  driver = "edu\n',
    "blame-last-key-line": '[device "a"]\n  driver = "edu"\n  foo = "1"\n\n[device "b"]\n  driver = "edu"\n',
}


def qemu_says(cfg: Path) -> str:
    """QEMU's last error line (without the program prefix), or "" when the machine starts."""
    found = find_qemu()
    assert not isinstance(found, str), found
    proc = subprocess.run(
        [found.path, "-readconfig", str(cfg), "-M", "q35", "-accel", "tcg", "-S", "-display", "none",
         "-nodefaults", "-monitor", "stdio"],
        input="quit\n", capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return ""
    # The last message, whole: a value that kept its newline spans two lines.
    return proc.stderr.rsplit("qemu-system-x86_64:", 1)[-1].strip()


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(CASES))
def test_readconfig_parsing_agrees_with_qemu(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(CASES[name])
    qemu = qemu_says(cfg)
    try:
        vm = parse_argv(["qemu-system-x86_64", "-readconfig", str(cfg)])
    except InputError as exc:
        # QEMU refuses the file itself ("parse error", "no group defined"), or a group without a
        # driver: the same words.
        assert qemu, f"QEMU starts with {name}, viommu refused: {exc}"
        assert exc.message.split(" (")[0] in qemu
        if qemu.startswith(str(cfg)):  # QEMU names a line: the same one
            assert qemu.split(": ")[0] == exc.where
        return
    # The file parses: what QEMU then does with each device is about the device (edu has no
    # property foo; "edu\n" is no device model), and names the same property, driver and line.
    assert not qemu or not qemu.startswith("-readconfig"), qemu
    assert vm.unsupported == ()
    if qemu:
        location, message = qemu.split(": ", 1)
        blamed = [d for d in _devices(cfg) if d[2] == location]
        assert blamed, f"QEMU blames {location}; viommu's devices are {_devices(cfg)}"
        driver, props, _ = blamed[0]
        if "Property" in message:
            prop = message.split("'")[1].split(".", 1)[1]
            assert f"'{driver}.{prop}'" in message and prop in props
        else:
            assert f"'{driver}'" in message, (driver, message)


def _devices(cfg: Path) -> list[tuple[str, dict[str, str], str]]:
    """(driver, props, where) of every device viommu reads from ``cfg``."""
    from viommu.frontends.qemu_argv import _Reader
    from viommu.frontends.words import Word

    reader = _Reader([Word("-readconfig", 1), Word(str(cfg), 1)], None)
    reader.read()
    return [(d.spec.driver, dict(d.spec.props), d.where) for d in reader.devices]
