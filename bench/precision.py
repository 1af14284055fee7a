"""bf16 and fp16 against fp32, per output dtype: the evidence for `default_precision`.

    python bench/precision.py [--steps 300] [--checkpoint DIR] [--sections 2] [--quick]

A `small` ×2 model trained for `--steps` on phantom pairs (as in halo_accuracy.py; or
`--checkpoint`) super-resolves whole phantom LR sections (seed 7, HR `--sections`×512²) at
each precision, on CPU (autocast's bf16/fp16 there stand in for a GPU's: the same formats,
other kernels). Each output is stored as uint8, uint16 and float32 (the dtype's range; (0, 1)
for floats) and compared with the fp32 one: the share of stored voxels that differ, the
largest difference in stored levels, PSNR against fp32, and the change of PSNR against the
phantom's clean truth (what a user would notice). Also seconds per section, side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from halo_accuracy import SCALE, machine, trained_small

from emsr.checkpoint import read_checkpoint
from emsr.inference import PRECISIONS, Predictor, super_resolve_image
from emsr.intensity import IntensityRange
from emsr.metrics import psnr
from emsr.phantom import PhantomSpec, make_phantom

DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


def stored(output: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return IntensityRange.of_dtype(dtype).denormalize(output, dtype)


def data_range(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def compare(output: np.ndarray, reference: np.ndarray, truth: np.ndarray, dtype) -> dict:
    """`output` (some precision) against `reference` (fp32), both stored as `dtype`."""
    ours, theirs = stored(output, dtype), stored(reference, dtype)
    difference = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    peak = data_range(dtype)
    truth_stored = truth.astype(np.float64) * peak
    vs_fp32 = psnr(ours.astype(np.float64), theirs.astype(np.float64), peak)
    return {
        "output_dtype": dtype.name,
        "differing_share": round(float(np.mean(difference > 0)), 4),
        "max_diff_levels": float(difference.max()),
        "psnr_vs_fp32_db": round(float(vs_fp32), 2) if np.isfinite(vs_fp32) else None,
        "psnr_vs_truth_change_db": round(
            float(psnr(ours.astype(np.float64), truth_stored, peak))
            - float(psnr(theirs.astype(np.float64), truth_stored, peak)),
            3,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--sections", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 section of 128²")
    args = parser.parse_args()
    side = 512
    if args.quick:
        args.steps, args.sections, side = 10, 1, 256
    phantom = make_phantom(PhantomSpec(shape=(args.sections, side, side), scale=SCALE, seed=7))
    sections = phantom.lr.astype(np.float32) / 255
    truth = phantom.hr_clean.astype(np.float32) / 255
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        if args.checkpoint:
            model, name = read_checkpoint(args.checkpoint).model, args.checkpoint
        else:
            model, name = trained_small(args.steps, Path(directory) / "small")
    outputs, seconds = {}, {}
    for precision in PRECISIONS:
        predictor = Predictor(model, device="cpu", batch_size=1, precision=precision)
        started = time.perf_counter()
        outputs[precision] = np.stack([super_resolve_image(predictor, s, 16) for s in sections])
        seconds[precision] = (time.perf_counter() - started) / len(sections)
    for precision in PRECISIONS[1:]:
        for dtype in DTYPES:
            row = {
                "bench": "precision", "model": name, "precision": precision,
                **compare(outputs[precision], outputs["fp32"], truth, dtype),
                "seconds_per_section": round(seconds[precision], 3),
                "fp32_seconds_per_section": round(seconds["fp32"], 3),
                "lr_section": list(sections.shape[1:]), "quick": args.quick,
                "machine": machine(),
            }  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
