"""`viommu ... | head`: a reader that closes the pipe early is not an error (exit 0, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["--explain", "list"], ["profiles"], ["inspect"]])
def test_closed_pipe_is_quiet(argv: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before viommu writes: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "viommu", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
