"""The experiments suite runs end to end and reports what it measured (smoke test: 4 steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experiments")
    command = [sys.executable, str(BENCH / "experiments.py"), "--quick", "--parts", "1,2,5,6",
               "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return out


def test_every_asked_part_has_rows_and_a_table(quick_run):
    rows = [json.loads(line) for line in (quick_run / "results.jsonl").read_text().splitlines()]
    assert {row["part"] for row in rows} == {1, 2, 5, 6}
    report = (quick_run / "report.md").read_text()
    for title in ("1. No clean reference", "2. Break point", "5. Baselines", "6. Resolution"):
        assert title in report
    assert (quick_run / "break_point.png").stat().st_size > 0


def test_scores_are_measured_against_the_clean_truth(quick_run):
    rows = [json.loads(line) for line in (quick_run / "results.jsonl").read_text().splitlines()]
    by_name = {row["name"]: row for row in rows}
    # Bicubic of the phantom's LR scan against its truth: ≈ 22 dB (measured), an untrained
    # network far below; the two HR scans' FRC is the phantom's known ≈ 42 nm.
    assert 20 < by_name["bicubic"]["psnr_db"] < 24
    assert by_name["noisy reference, ℓ1"]["psnr_db"] < by_name["bicubic"]["psnr_db"]
    assert 35 < by_name["acquired HR scan"]["frc_hr_vs_hr2_nm"] < 50


def test_a_rerun_skips_what_is_done(quick_run):
    before = (quick_run / "results.jsonl").read_text()
    command = [sys.executable, str(BENCH / "experiments.py"), "--quick", "--parts", "1,2,5,6",
               "--out", str(quick_run)]  # fmt: skip
    run = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert (quick_run / "results.jsonl").read_text() == before
    assert "dB" not in run.stdout
