"""Tiled against whole-section inference, by halo: the evidence for DEFAULT_HALO (target: the
stored uint8 output within ≥ 50 dB PSNR of whole-section inference).

    python bench/halo_accuracy.py [--halos 0,4,8,16,24,32] [--tiles 64,512] [--steps 300]
        [--checkpoint DIR] [--quick]

Models: `small` untrained; `small` trained for `--steps` on phantom pairs (learning rate
1e-3 so that a few hundred CPU steps learn something; or `--checkpoint`, any ×2 model);
`paper` untrained, on a central `--paper-crop` of each section with 64 px tiles only (it is
~20× slower on a CPU). Sections: phantom LR sections (HR `--sections`×1536×1536 → LR 768²,
seed 7, not the training phantom).

Each section is super-resolved whole (`emsr.inference.super_resolve_image`, reflected by
`halo` px at its edges) and tiled exactly as blocks are (the global `TileLattice`, mirrored
reads, `pipeline.block.super_resolve_region`, crop-and-stitch). Both see the same mirrored
pixels at the section's edges, so the difference is the seams: there a tile sees `halo` px of
its neighbour instead of all of it. Reported per model, tile and halo, over all sections:
PSNR of the float outputs (data range 1) and of the uint8 outputs as stored (null when
identical), and the largest |difference| of each.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from model_throughput import cpu_name

from emsr.checkpoint import read_checkpoint
from emsr.data import PairedVolumes
from emsr.inference import Predictor, super_resolve_image
from emsr.intensity import IntensityRange
from emsr.metrics import psnr
from emsr.network import EMSR, build_model
from emsr.phantom import PhantomSpec, make_phantom
from emsr.training import TrainConfig, train
from pipeline.block import super_resolve_region
from pipeline.geometry import Box
from pipeline.tiles import TileLattice, read_window_indices

SCALE = 2
UINT8 = IntensityRange.of_dtype(np.dtype("uint8"))


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def trained_small(steps: int, workdir: Path) -> tuple[EMSR, str]:
    """A `small` ×2 model trained briefly on a phantom of its own, and its name."""
    phantom = make_phantom(PhantomSpec(shape=(16, 256, 256), scale=SCALE, seed=1))
    config = TrainConfig(
        preset="small", scale=SCALE, steps=steps, learning_rate=1e-3, device="cpu",
        validate_every=steps, checkpoint_every=steps,
    )  # fmt: skip
    result = train(PairedVolumes.from_arrays(phantom.lr, phantom.hr, SCALE), config, workdir)
    name = f"small trained {steps} steps (validation PSNR {result.validation_psnr:.1f} dB)"
    return read_checkpoint(result.checkpoint).model, name


def tiled(predictor: Predictor, section: np.ndarray, tile: int, halo: int) -> np.ndarray:
    """One section through the pipeline's tiling: lattice, mirrored read, stitched cores."""
    volume = section[None]
    lattice = TileLattice.for_section(section.shape, tile, halo)
    cover = lattice.cover(Box.from_shape(volume.shape))
    rows, columns = read_window_indices(lattice, cover, volume.shape)
    sr = super_resolve_region(predictor, volume[:, rows][:, :, columns], lattice, cover)
    height, width = section.shape
    return sr[0, : SCALE * height, : SCALE * width]


def agreement(tiles: np.ndarray, whole: np.ndarray) -> dict:
    """PSNR and largest |difference| of the tiled output against the whole-section one, as
    floats and as stored uint8 (PSNR null when identical)."""
    tiles8, whole8 = UINT8.denormalize(tiles, np.uint8), UINT8.denormalize(whole, np.uint8)
    float_psnr, uint8_psnr = psnr(tiles, whole, data_range=1.0), psnr(tiles8, whole8, 255.0)
    return {
        "psnr_float": round(float_psnr, 2) if np.isfinite(float_psnr) else None,
        "psnr_uint8": round(uint8_psnr, 2) if np.isfinite(uint8_psnr) else None,
        "max_abs_diff_float": float(np.abs(tiles - whole).max()),
        "max_abs_diff_uint8": int(np.abs(tiles8.astype(np.int16) - whole8).max()),
    }


def halo_rows(model: EMSR, sections: np.ndarray, tiles: tuple[int, ...], halo: int) -> list[dict]:
    """Whole-section inference of `sections` (normalised float32) against each tiling."""
    whole_predictor = Predictor(model, device="cpu", batch_size=1)
    tile_predictor = Predictor(model, device="cpu", batch_size=4)
    whole = np.stack([super_resolve_image(whole_predictor, s, halo) for s in sections])
    rows = []
    for tile in tiles:
        stitched = np.stack([tiled(tile_predictor, s, tile, halo) for s in sections])
        rows.append({"tile": tile, **agreement(stitched, whole)})
    return rows


def central_crop(sections: np.ndarray, size: int) -> np.ndarray:
    y, x = ((n - size) // 2 for n in sections.shape[1:])
    return sections[:, y : y + size, x : x + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--halos", type=integers, default=(0, 4, 8, 16, 24, 32))
    parser.add_argument("--tiles", type=integers, default=(64, 512))
    parser.add_argument("--sections", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300, help="training steps of `small`")
    parser.add_argument("--checkpoint", default=None, help="a trained ×2 model instead")
    parser.add_argument("--paper-crop", type=int, default=256, help="LR px, for `paper`")
    parser.add_argument("--quick", action="store_true", help="1 LR section of 128², halos 0,16")
    args = parser.parse_args()
    hr_side = 1536
    if args.quick:
        hr_side, args.halos, args.tiles, args.sections = 256, (0, 16), (64,), 1
        args.steps, args.paper_crop = 10, 128
    spec = PhantomSpec(shape=(args.sections, hr_side, hr_side), scale=SCALE, seed=7)
    sections = UINT8.normalize(make_phantom(spec).lr)
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        if args.checkpoint:
            trained, trained_name = read_checkpoint(args.checkpoint).model, args.checkpoint
        else:
            trained, trained_name = trained_small(args.steps, Path(directory) / "small")
    torch.manual_seed(0)
    runs = [
        ("small untrained", build_model("small", SCALE), sections, args.tiles),
        (trained_name, trained, sections, args.tiles),
        ("paper untrained", build_model("paper", SCALE),
         central_crop(sections, args.paper_crop), (64,)),
    ]  # fmt: skip
    for name, model, images, tiles in runs:
        for halo in args.halos:
            for result in halo_rows(model.eval(), images, tiles, halo):
                row = {
                    "bench": "halo_accuracy", "model": name, "halo": halo,
                    "sections": list(images.shape), **result, "quick": args.quick,
                    "machine": machine(),
                }  # fmt: skip
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
