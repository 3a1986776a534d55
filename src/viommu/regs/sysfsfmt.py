"""The formats of the sysfs register files (Documentation/ABI/testing/sysfs-class-iommu-*).

* ``/sys/class/iommu/dmarN/intel-iommu/{cap,ecap}``: ``"%llx\\n"``, no ``0x``;
  ``version``: ``"%d:%d\\n"``.
* ``/sys/class/iommu/ivhdN/amd-iommu/features`` changed twice:
  ``EFR`` (up to 5.19), ``EFR2:EFR`` (6.0 to about 6.6), ``EFR:EFR2`` (about
  6.7 on, both the global AND over all IOMMUs). With two fields the order is
  taken from the kernel release when it is known, otherwise guessed, and the
  result says which.
"""

from __future__ import annotations

import re

from viommu.errors import InputError
from viommu.hexparse import parse_hex
from viommu.record import record
from viommu.regs import vtd


def parse_vtd_register(text: str, *, where: str | None = None) -> int:
    """The content of ``intel-iommu/cap`` or ``intel-iommu/ecap``."""
    return parse_hex(text, bits=64, where=where)


def parse_vtd_version(text: str, *, where: str | None = None) -> int:
    """The content of ``intel-iommu/version`` as a VER_REG value."""
    return vtd.parse_version(text, where=where)


_RELEASE = re.compile(r"(\d+)\.(\d+)")

#: First kernel printing EFR2:EFR, and first printing EFR:EFR2 (the swap came
#: with the global EFR; its exact release is not confirmed, hence "about").
_EFR2_FIRST_FROM = (6, 0)
_EFR_FIRST_FROM = (6, 7)


def kernel_version(release: str, *, where: str | None = None) -> tuple[int, int]:
    """``"6.8.0-45-generic"`` -> ``(6, 8)``."""
    match = _RELEASE.match(release.strip())
    if match is None:
        raise InputError(f"{release.strip()!r} is not a kernel release like 6.8.0", where=where)
    return int(match[1]), int(match[2])


@record(frozen=True)
class AmdFeatures:
    """EFR and EFR2 from a ``features`` file, and how the field order was chosen."""

    efr: int
    efr2: int | None
    order: str


def parse_amd_features(text: str, *, kernel: str | None = None, where: str | None = None) -> AmdFeatures:
    """The content of ``amd-iommu/features``; ``kernel`` is ``uname -r`` of the host that wrote it."""
    raw = text.strip()
    parts = raw.split(":")
    if len(parts) == 1:
        return AmdFeatures(
            parse_hex(raw, bits=64, where=where), None, "one field: EFR only (kernels before 6.0)"
        )
    if len(parts) != 2:
        raise InputError(f"{raw!r}: expected EFR or two hex fields separated by ':'", where=where)
    first = parse_hex(parts[0], bits=64, where=where)
    second = parse_hex(parts[1], bits=64, where=where)
    if kernel is not None:
        version = kernel_version(kernel, where="--kernel")
        text_version = f"{version[0]}.{version[1]}"
        if version < _EFR2_FIRST_FROM:
            raise InputError(
                f"{raw!r} has two fields, but kernel {text_version} prints EFR only", where=where
            )
        if version < _EFR_FIRST_FROM:
            return AmdFeatures(second, first, f"EFR2:EFR (kernel {text_version}: 6.0 to about 6.6)")
        return AmdFeatures(first, second, f"EFR:EFR2 (kernel {text_version}: about 6.7 or later)")
    # EFR sets many feature bits (PPR, NX, GT, HATS, PASMAX...); EFR2 is small
    # (0x0-0x1f on known parts), so the larger value is EFR.
    if second > first:
        return AmdFeatures(
            second, first, "EFR2:EFR guessed (no kernel release given; the larger value is EFR)"
        )
    return AmdFeatures(first, second, "EFR:EFR2 guessed (no kernel release given; the larger value is EFR)")
