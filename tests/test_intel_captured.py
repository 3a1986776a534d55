"""The intel-iommu model against register values captured from QEMU 10.0.2.

``tests/data/intel/qemu-10.0-registers.csv`` was read from the real binary
(the command is in its header). The first test holds the model to it where no
QEMU is installed; the second checks that the file still says what the
installed binary says.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from qemu_oracle import run_many
from viommu.models.base import DeviceSpec, QemuVersion
from viommu.models.intel import IntelIOMMU
from viommu.models.qdev import DeviceConfigError

TABLE = Path(__file__).parent / "data" / "intel" / "qemu-10.0-registers.csv"


def rows() -> list[dict[str, str]]:
    with TABLE.open(encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


ROWS = rows()


def _expected(row: dict[str, str]) -> tuple[int, int] | str:
    return row["refusal"] if row["refusal"] else (int(row["cap"], 16), int(row["ecap"], 16))


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['machine']}|{r['device']}" for r in ROWS])
def test_model_matches_captured_binary(row: dict[str, str]) -> None:
    try:
        dev = IntelIOMMU(DeviceSpec.parse(row["device"]), QemuVersion(10, 0), machine=row["machine"])
    except DeviceConfigError as exc:
        assert exc.message == _expected(row)
        return
    assert (dev.cap, dev.ecap) == _expected(row)


@pytest.mark.qemu
def test_capture_is_current() -> None:
    outcomes = run_many([(r["machine"], [r["device"]]) for r in ROWS])
    live = [o.error if o.refused else (o.cap, o.ecap) for o in outcomes]
    assert live == [_expected(r) for r in ROWS]
