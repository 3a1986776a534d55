"""The snapshot backend: a host inventory recorded as versioned JSON.

A snapshot (``"schema": "viommu-snapshot/1"``) holds everything the other
backends report plus the machine identity, the kernel release and the
capture time. Reading an old or unknown schema, malformed JSON or a file
with missing keys fails with one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os

from viommu.errors import HostAccessError, InputError
from viommu.host.inventory import SCHEMA, HostInventory
from viommu.record import replace

#: Schemas this version can name when refusing them.
_SCHEMA_PREFIX = "viommu-snapshot/"


def capture_time() -> str:
    """Now in UTC (ISO 8601, seconds), or ``SOURCE_DATE_EPOCH`` for reproducible output."""
    from datetime import UTC, datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        if not epoch.isdigit():
            raise InputError(f"{epoch!r} is not a Unix time in seconds", where="SOURCE_DATE_EPOCH")
        moment = datetime.fromtimestamp(int(epoch), UTC)
    else:
        moment = datetime.now(UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def stamped(inventory: HostInventory) -> HostInventory:
    """The inventory with its machine's capture time set to now (kept when already recorded)."""
    if inventory.machine.captured_at is not None:
        return inventory
    return replace(inventory, machine=replace(inventory.machine, captured_at=capture_time()))


def dumps(inventory: HostInventory) -> str:
    """The snapshot text: indented JSON in the record's key order, newline-terminated."""
    return json.dumps(inventory.to_json(), indent=2) + "\n"


def loads(text: str, *, where: str) -> HostInventory:
    """Parse snapshot text; ``where`` names its origin in errors. The result keeps the recorded backend."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})", where=where
        ) from None
    if isinstance(data, dict) and "schema" in data:
        schema = data["schema"]
        if isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX) and schema != SCHEMA:
            raise InputError(
                f"snapshot schema {schema!r} is not supported by this viommu, which reads {SCHEMA!r}",
                where=where,
            )
    elif isinstance(data, dict):
        raise InputError(f"no 'schema' key: not a viommu snapshot (expected {SCHEMA!r})", where=where)
    return HostInventory.from_json(data, where=where)


def load(path: str | os.PathLike[str]) -> HostInventory:
    """Read a snapshot file as the ``snapshot`` backend (which says what recorded it)."""
    where = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise InputError("no such file", where=where) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text: not a viommu snapshot", where=where) from None
    except OSError as exc:
        raise HostAccessError(f"cannot read: {exc.strerror or exc}", where=where, errno=exc.errno) from None
    recorded = loads(text, where=where)
    host = recorded.machine.hostname or "an unnamed host"
    when = recorded.machine.captured_at or "an unknown time"
    return replace(
        recorded,
        backend="snapshot",
        reason=f"read {where}: recorded by the {recorded.backend} backend on {host} at {when}",
        skipped=(),
    )
