"""The tables and the plot of EXPERIMENTS.md, generated from `bench/experiments.py`'s
results.jsonl, so the document's numbers are never typed by hand.

    python bench/experiments_report.py experiments-output/results.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PART_TITLES = {
    1: "1. No clean reference",
    2: "2. Break point: reference noise",
    3: "3. Training-pair strategies",
    4: "4. Ablations",
    5: "5. Baselines, same data and budget",
    6: "6. Resolution of the acquisition",
}


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def grouped(rows: list[dict], part: int) -> dict[str, list[dict]]:
    """Rows of one part by name, in the order they were first run."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["part"] == part:
            groups[row["name"]].append(row)
    return groups


def part_table(rows: list[dict], part: int) -> str:
    lines = ["| setting | seeds | PSNR (dB) | SSIM | FRC vs truth (nm) | parameters |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, group in grouped(rows, part).items():
        seeds = ",".join(str(row["seed"]) for row in group)
        lines.append(
            f"| {name} | {seeds} | {mean_std([r['psnr_db'] for r in group], 2)} | "
            f"{mean_std([r['ssim'] for r in group], 3)} | "
            f"{mean_std([r['frc_nm'] for r in group], 1)} | {group[0]['parameters']:,} |"
        )
    return "\n".join(lines)


def scans_table(rows: list[dict]) -> str:
    (scan,) = [row for row in rows if row["part"] == 6] or [None]
    if scan is None:
        return ""
    return "\n".join([
        "| image | PSNR vs truth (dB) | SSIM | FRC vs truth (nm) | FRC HR vs HR2 (nm) |",
        "|---|---|---|---|---|",
        f"| acquired HR scan | {scan['psnr_db']:.2f} | {scan['ssim']:.3f} | "
        f"{scan['frc_nm']:.1f} | {scan['frc_hr_vs_hr2_nm']:.1f} |",
        f"| clean truth (sampling limit, 2 px) | – | – | {scan['frc_truth_limit_nm']:.1f} | – |",
    ])  # fmt: skip


def break_point_plot(rows: list[dict], path: Path) -> bool:
    """PSNR against the reference noise σ (part 2), with the clean-reference level."""
    sweep = [r for r in rows if r["part"] == 2 and r["reference"].startswith("gaussian:")]
    if not sweep:
        return False
    sigmas = sorted({float(r["reference"].split(":")[1]) for r in sweep})
    means = [np.mean([r["psnr_db"] for r in sweep if r["reference"] == f"gaussian:{s}"])
             for s in sigmas]  # fmt: skip
    figure = Figure(figsize=(5, 3.2))
    axes = figure.subplots()
    axes.plot(sigmas, means, "o-", label="noisy reference, ℓ1")
    seeds = {r["seed"] for r in sweep}
    clean = [
        r["psnr_db"] for r in rows if r["name"] == "clean reference, ℓ1" and r["seed"] in seeds
    ]
    if clean:  # the same seeds as the sweep, so the gap is the noise's alone
        axes.axhline(np.mean(clean), color="k", linestyle="--", label="clean reference, ℓ1")
    bicubic = [r["psnr_db"] for r in rows if r["name"] == "bicubic"]
    if bicubic:
        axes.axhline(np.mean(bicubic), color="grey", linestyle=":", label="bicubic")
    axes.set_xscale("log")
    axes.set_xlabel("reference noise σ (intensity range 1)")
    axes.set_ylabel("PSNR vs clean truth (dB)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def write_report(rows: list[dict], out: Path, command: str, minutes: float) -> Path:
    """OUT/report.md: every part's table (mean ± sample std over seeds) and the plot."""
    trained = [row for row in rows if row.get("budget")]
    budget = trained[0]["budget"] if trained else {}
    sections = [
        f"Command: `{command}` ({minutes:.0f} min this invocation).",
        f"Budget of every trained model: {json.dumps(budget)}.",
    ]
    for part, title in PART_TITLES.items():
        table = scans_table(rows) if part == 6 else part_table(rows, part)
        if table.count("\n") > 1:
            sections.append(f"### {title}\n\n{table}")
    if break_point_plot(rows, out / "break_point.png"):
        sections.append("![PSNR against reference noise](break_point.png)")
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines()]
    print(write_report(rows, args.results.parent, "see results.jsonl", 0.0))


if __name__ == "__main__":
    main()
