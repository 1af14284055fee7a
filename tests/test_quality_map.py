"""The reference-free quality map ranks audit blocks like the FRC against the clean truth
(quick mode of bench/quality_map_validation.py: ≥ 30 blocks of varied content and noise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
MIN_RHO = 0.7  # the bar: Spearman ρ against the per-block FRC vs the clean truth
MIN_BLOCKS = 30

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quality-map")
    command = [sys.executable, str(BENCH / "quality_map_validation.py"), "--quick", "--out",
               str(out), "--workers", "1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=1500)
    return json.loads((out / "quality_map_validation.json").read_text())


@pytest.mark.parametrize("mode", ["two_scans", "single_scan"])
def test_the_map_ranks_blocks_like_the_truth(validation, mode: str) -> None:
    result = validation[mode]
    assert result["blocks"] >= MIN_BLOCKS
    assert result["rho"] >= MIN_RHO, result
