"""Seam agreement of trained checkpoints by halo: the evidence for DEFAULT_HALO and for the
halo validated at the end of training (target: seams ≥ 50 dB against whole-section
inference; `pipeline.seams` says how they are measured).

    python bench/halo_accuracy.py [--halos 0,4,8,12,16,24,32] [--steps 100]
        [--paper-steps 40] [--paper-patch 16] [--tiles 64,128] [--quick]

Models: `small` untrained and trained `--steps` (patch 32, batch 4, learning rate 1e-3, on a
seed-1 phantom of 8 × 128² HR); `paper` untrained and trained `--paper-steps` (patch
`--paper-patch`, batch 2, same phantom). Measured on phantom LR sections (seed 7, HR 2 × 768²
→ LR 384²), sampled as a run samples its input (`sample_sections`: central crops of three
tiles a side). Each row: seam PSNR (dB, null when identical) and the seconds it took, per
model, tile and halo; then, per model, the halo `validate_halo` finds (what training stores)
and its seconds. The row at halo 16 is what preparing a run costs for a checkpoint without a
stored halo (one check at the default).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from model_throughput import cpu_name

from emsr.checkpoint import read_checkpoint
from emsr.data import PairedVolumes
from emsr.inference import Predictor
from emsr.intensity import IntensityRange
from emsr.network import EMSR, build_model
from emsr.phantom import PhantomSpec, make_phantom
from emsr.training import TrainConfig, train
from pipeline.seams import MEASURE_TILE, sample_sections, seam_psnr, validate_halo

SCALE = 2
torch.set_num_threads(1)
UINT8 = IntensityRange.of_dtype(np.dtype("uint8"))


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def trained(preset: str, steps: int, patch: int, batch: int, workdir: Path) -> tuple[EMSR, dict]:
    """A ×2 model of `preset` trained briefly on a phantom of its own, and how it went."""
    phantom = make_phantom(PhantomSpec(shape=(8, 128, 128), scale=SCALE, seed=1))
    config = TrainConfig(
        preset=preset, scale=SCALE, steps=steps, patch=patch, batch_size=batch,
        learning_rate=1e-3, device="cpu", validate_every=steps, checkpoint_every=steps,
    )  # fmt: skip
    started = time.perf_counter()
    pairs = PairedVolumes.from_arrays(phantom.lr, phantom.hr, SCALE)
    result = train(pairs, config, workdir / preset)
    about = {
        "steps": steps, "patch": patch, "batch": batch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "validation_psnr_db": round(result.validation_psnr, 2),
    }  # fmt: skip
    return read_checkpoint(result.checkpoint).model, about


def rounded(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None


def sweep(model: EMSR, lr: np.ndarray, tiles: tuple[int, ...], halos: tuple[int, ...]):
    """Seam PSNR and its seconds for every tile and halo."""
    predictor = Predictor(model.eval(), device="cpu", batch_size=1)
    for tile in tiles:
        sample = sample_sections(lr, UINT8, tile)
        for halo in halos:
            started = time.perf_counter()
            value = seam_psnr(predictor, sample, tile, halo)
            yield {"tile": tile, "halo": halo, "seam_psnr_db": rounded(value),
                   "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--halos", type=integers, default=(0, 4, 8, 12, 16, 24, 32))
    parser.add_argument("--tiles", type=integers, default=(MEASURE_TILE, 2 * MEASURE_TILE))
    parser.add_argument("--steps", type=int, default=100, help="training steps of `small`")
    parser.add_argument("--paper-steps", type=int, default=40, help="training steps of `paper`")
    parser.add_argument("--paper-patch", type=int, default=16, help="LR px, for `paper`")
    parser.add_argument("--quick", action="store_true", help="`small` only, 10 steps, halos 0,16")
    args = parser.parse_args()
    if args.quick:
        args.halos, args.tiles, args.steps = (0, 16), (MEASURE_TILE,), 10
    lr = make_phantom(PhantomSpec(shape=(2, 768, 768), scale=SCALE, seed=7)).lr
    torch.manual_seed(0)
    untrained = {preset: build_model(preset, SCALE) for preset in ("small", "paper")}
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        workdir = Path(directory)
        models = [
            ("small untrained", lambda: (untrained["small"], {}), args.tiles),
            ("small trained", lambda: trained("small", args.steps, 32, 4, workdir), args.tiles),
            ("paper untrained", lambda: (untrained["paper"], {}), (MEASURE_TILE,)),
            ("paper trained",
             lambda: trained("paper", args.paper_steps, args.paper_patch, 2, workdir),
             (MEASURE_TILE,)),
        ]  # fmt: skip
        for name, make, tiles in models[: 2 if args.quick else None]:
            measure(name, *make(), tiles, lr, args)


def measure(
    name: str,
    model: EMSR,
    about: dict,
    tiles: tuple[int, ...],
    lr: np.ndarray,
    args: argparse.Namespace,
) -> None:
    """Print the sweep's rows, then the halo `validate_halo` finds and its cost."""
    for row in sweep(model, lr, tiles, args.halos):
        print(json.dumps({"bench": "halo_accuracy", "model": name, **about, **row,
                          "quick": args.quick, "machine": machine()}), flush=True)  # fmt: skip
    validation = validate_halo(model, sample_sections(lr, UINT8, MEASURE_TILE))
    passing = validation.passing
    print(json.dumps({
        "bench": "halo_accuracy", "model": name, **about, "tile": MEASURE_TILE,
        "validated_halo": passing.halo if passing else None,
        "checks": len(validation.checks), "seconds": round(validation.seconds, 2),
        "quick": args.quick, "machine": machine(),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
