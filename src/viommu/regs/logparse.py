"""Find IOMMU units in kernel logs that users paste (dmesg, journalctl, syslog).

Recognised messages (wherever they sit in a line, after any prefix):

* VT-d ``DMAR: dmarN: reg_base_addr B ver X:Y cap C ecap E`` and the older
  ``dmar: IOMMU N: reg_base_addr …`` / ``IOMMU N: reg_base_addr …``;
  ``DMAR: Host address width N`` is attached to the units that follow it;
* AMD-Vi ``[pci BDF: ]AMD-Vi: Extended features (EFR[, EFR2]):`` and
  ``AMD-Vi: Using global IVHD EFR:…, EFR2:…``;
* SMMUv3 ``arm-smmu-v3 DEV: ias N-bit, oas N-bit (features 0x…)``: a summary
  of the driver's state, not a register, reported as such.

Log collectors break long lines: a message that starts on one line and does
not parse is retried joined with the next line (with and without a space),
after stripping that line's journal or dmesg prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from viommu.errors import InputError
from viommu.hexparse import parse_hex
from viommu.record import field, record
from viommu.regs import amd, vtd
from viommu.regs.unit import UnitDecode

_HEX = r"[0-9a-fA-F]+"

_VTD = re.compile(
    rf"(?:\b(?P<dmar>dmar\d+)|\bIOMMU\s+(?P<num>\d+)):\s*reg_base_addr\s+(?P<base>{_HEX})\s+"
    rf"ver\s+(?P<major>\d+):(?P<minor>\d+)\s+cap\s+(?P<cap>{_HEX})\s+ecap\s+(?P<ecap>{_HEX})\s*$"
)
_AMD_EFR = re.compile(
    r"(?:\b(?P<bdf>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]):\s*)?AMD-Vi:\s*"
    rf"Extended features\s*\(\s*0x(?P<efr>{_HEX})(?:\s*,\s*0x(?P<efr2>{_HEX}))?\s*\)"
)
_AMD_IVHD = re.compile(rf"AMD-Vi:\s*Using global IVHD EFR:\s*0x(?P<efr>{_HEX}),\s*EFR2:\s*0x(?P<efr2>{_HEX})")
_SMMU = re.compile(
    r"arm-smmu-v3\s+(?P<dev>\S+):\s*ias\s+(?P<ias>\d+)-bit,\s*oas\s+(?P<oas>\d+)-bit\s*"
    rf"\(features\s+0x(?P<features>{_HEX})\)"
)
_HAW = re.compile(r"DMAR:\s*Host address width\s+(?P<haw>\d+)")

#: Text that starts a unit message: such a line that does not parse may
#: continue on the next line, and is reported as skipped if it never parses.
_UNIT_MARKERS = ("reg_base_addr", "Extended features (", "Using global IVHD")
#: arm-smmu-v3 prints many other lines; only its "ias" line may be a wrapped unit.
_SMMU_MARKER = re.compile(r"arm-smmu-v3\s+\S+:\s*ias\b")


def _starts_unit(message: str) -> bool:
    return any(s in message for s in _UNIT_MARKERS) or _SMMU_MARKER.search(message) is not None


#: Journal/syslog (``Mar  1 10:00:00 host kernel:`` or ISO time), ``dmesg -x``
#: level, the ``[   0.123456]`` timestamp and a ``<6>`` priority, in any mix.
_PREFIX = re.compile(
    r"""^\s*(?:<\d+>)?
    (?:(?:[A-Z][a-z]{2}\s+\d{1,2}\s+\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ][0-9:.,+\-]+Z?)\s+\S+\s+kernel:\s*)?
    (?:kern\s*:\s*\w+\s*:\s*)?
    (?:\[\s*\d+\.\d+\]\s*)?""",
    re.X,
)


@record(frozen=True)
class LogUnit:
    """One unit found in a log: where it was, and its decode (or an SMMUv3 summary)."""

    unit: str
    line: int
    decoded: UnitDecode | None = None
    summary: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vendor(self) -> str:
        return self.decoded.vendor if self.decoded is not None else "arm-smmuv3"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "line": self.line, **self.extra}
        if self.decoded is not None:
            out.update(self.decoded.to_json())
        else:
            out["vendor"] = "arm-smmuv3"
            out["summary"] = self.summary
        return out


@record(frozen=True)
class LogScan:
    """Every unit found, and the lines that looked like unit messages but did not parse."""

    units: tuple[LogUnit, ...]
    skipped: tuple[int, ...]


def strip_prefix(line: str) -> str:
    """The kernel message of a log line, without journal/dmesg prefixes."""
    match = _PREFIX.match(line)
    return line[match.end() :] if match else line


def _has_prefix(line: str) -> bool:
    match = _PREFIX.match(line)
    return bool(match and line[: match.end()].strip())


def _hex(text: str, where: str) -> int:
    return parse_hex(text, bits=64, where=where)


def _vtd_unit(m: re.Match[str], line: int, where: str, haw: int | None) -> LogUnit:
    name = m["dmar"] or f"IOMMU {m['num']}"
    ver = vtd.parse_version(f"{m['major']}:{m['minor']}", where=where)
    extra: dict[str, Any] = {"reg_base": f"0x{_hex(m['base'], where):x}"}
    if haw is not None:
        extra["dmar_host_address_width"] = haw
    decoded = vtd.decode(_hex(m["cap"], where), _hex(m["ecap"], where), ver)
    return LogUnit(name, line, decoded, extra=extra)


def _amd_unit(m: re.Match[str], line: int, where: str) -> LogUnit:
    efr2 = _hex(m["efr2"], where) if m["efr2"] is not None else None
    # A pci_info() prefix names the IOMMU (kernels before ≈6.7); without it the
    # line is the global (AND over all IOMMUs) value.
    name = m["bdf"] or "amd-vi"
    return LogUnit(name, line, amd.decode(_hex(m["efr"], where), efr2), extra={"source": "extended-features"})


def _ivhd_unit(m: re.Match[str], line: int, where: str) -> LogUnit:
    decoded = amd.decode(_hex(m["efr"], where), _hex(m["efr2"], where))
    return LogUnit("ivhd", line, decoded, extra={"source": "ivhd"})


def _smmu_unit(m: re.Match[str], line: int, where: str) -> LogUnit:
    summary = {
        "ias_bits": int(m["ias"]),
        "oas_bits": int(m["oas"]),
        "linux_features": f"0x{parse_hex(m['features'], bits=64, where=where):08x}",
        "note": "driver summary line, not a register; the features word is the kernel's internal "
        "ARM_SMMU_FEAT_* bitmap, whose bits differ between kernel versions",
    }
    return LogUnit(m["dev"], line, summary=summary)


def _match(text: str, line: int, where: str, haw: int | None) -> LogUnit | None:
    handlers: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], LogUnit]], ...] = (
        (_VTD, lambda m: _vtd_unit(m, line, where, haw)),
        (_AMD_EFR, lambda m: _amd_unit(m, line, where)),
        (_AMD_IVHD, lambda m: _ivhd_unit(m, line, where)),
        (_SMMU, lambda m: _smmu_unit(m, line, where)),
    )
    for pattern, build in handlers:
        m = pattern.search(text)
        if m:
            return build(m)
    return None


def scan(text: str, *, source: str = "log") -> LogScan:
    """Every IOMMU unit in ``text``; ``source`` names the input in error messages."""
    lines = text.splitlines()
    units: list[LogUnit] = []
    skipped: list[int] = []
    haw: int | None = None
    index = 0
    while index < len(lines):
        number = index + 1
        where = f"{source}:{number}"
        message = strip_prefix(lines[index])
        if (h := _HAW.search(message)) is not None:
            haw = int(h["haw"])
        unit = _match(message, number, where, haw)
        consumed = 1
        nxt = lines[index + 1] if index + 1 < len(lines) else None
        if nxt is not None and _starts_unit(message):
            follow = strip_prefix(nxt).strip()
            if unit is None and _match(follow, number + 1, f"{source}:{number + 1}", haw) is None:
                for sep in (" ", ""):
                    unit = _match(message.rstrip() + sep + follow, number, where, haw)
                    if unit is not None:
                        consumed = 2
                        break
            elif (
                unit is not None
                and unit.vendor == "intel-vtd"
                and not _has_prefix(nxt)
                and re.fullmatch(_HEX, follow)
            ):
                # A bare hex fragment with no log prefix: the wrap cut the ecap value.
                joined = _match(message.rstrip() + follow, number, where, haw)
                if joined is not None:
                    unit, consumed = joined, 2
        if unit is not None:
            units.append(unit)
        elif any(s in message for s in _UNIT_MARKERS):
            skipped.append(number)
        index += consumed
    return LogScan(tuple(units), tuple(skipped))


def scan_units(text: str, *, source: str = "log") -> tuple[LogUnit, ...]:
    """Like :func:`scan`, but a log with no IOMMU unit is an error."""
    result = scan(text, source=source)
    if not result.units:
        raise InputError("no IOMMU unit lines (DMAR, AMD-Vi or arm-smmu-v3) found", where=source)
    return result.units
