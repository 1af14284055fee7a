"""bench/device.py is what a session lent a GPU runs in its few minutes: it must not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "device.py"


def test_device_benchmark_runs_in_quick_mode_on_cpu(tmp_path):
    out = tmp_path / "device.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = [row["kind"] for row in rows]
    assert kinds.count("forward") == 2 * 2 * 2  # scales × precisions × attention kernels
    assert {"end_to_end", "host_overhead"} <= set(kinds)
    assert all(row["lr_px_per_s"] > 0 for row in rows if row["kind"] != "host_overhead")
    end_to_end = next(row for row in rows if row["kind"] == "end_to_end")
    assert end_to_end["output_nonzero"] and end_to_end["blocks"] >= 1
    assert "| forward |" in result.stdout and "host overhead" in result.stdout
