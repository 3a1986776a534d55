"""Bundled profiles: snapshots of real kinds of machines, for hosts without an IOMMU.

Each profile is a snapshot-format JSON file in ``viommu/data/profiles``
whose unit registers come from the real-hardware corpus (the file's
``provenance`` names the corpus rows and says what was filled in); the
device topology and reserved regions are those a machine of that kind has.
``tools/make_profiles.py`` generates them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from viommu.errors import InputError
from viommu.host.inventory import HostInventory
from viommu.record import record, replace

#: A 39-bit client VT-d part: aw-bits 48 on the vIOMMU does not fit it, the case
#: the capability-check series was written for.
DEFAULT_PROFILE = "intel-cometlake-u-xps13-7390"

_PACKAGE = "viommu"
_DIR = "data/profiles"


@record(frozen=True)
class ProfileInfo:
    """One line of ``viommu profiles``."""

    name: str
    vendor: str
    platform: str
    units: int
    devices: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "platform": self.platform,
            "units": self.units,
            "devices": self.devices,
            "source": self.source,
        }


def default_profile_name() -> str:
    """The profile used when this host shows no IOMMU."""
    return DEFAULT_PROFILE


def profile_names() -> tuple[str, ...]:
    folder = resources.files(_PACKAGE).joinpath(_DIR)
    return tuple(sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json")))


def _read(name: str) -> HostInventory:
    from viommu.host.snapshot import loads

    names = profile_names()
    if name not in names:
        raise InputError(f"unknown profile {name!r} (known: {', '.join(names)})", where="--profile")
    text = resources.files(_PACKAGE).joinpath(_DIR, f"{name}.json").read_text(encoding="utf-8")
    return loads(text, where=f"profile {name}")


def load_profile(name: str) -> HostInventory:
    """The bundled profile ``name`` as an inventory of the ``profile`` backend."""
    recorded = _read(name)
    return replace(
        recorded,
        backend="profile",
        reason=f"bundled profile {name!r}: {recorded.provenance.get('platform', '?')}",
        skipped=(),
    )


def list_profiles() -> tuple[ProfileInfo, ...]:
    infos = []
    for name in profile_names():
        inv = _read(name)
        prov = inv.provenance
        infos.append(
            ProfileInfo(
                name=name,
                vendor=str(prov.get("vendor", "?")),
                platform=str(prov.get("platform", "?")),
                units=len(inv.units),
                devices=len(inv.devices),
                source=str(prov.get("source", "?")),
            )
        )
    return tuple(infos)
