"""Host work per LR megapixel of the real block path, with the model taken out.

    python bench/host_overhead.py [--lr-shape 8,2048,2048] [--scale 3] [--cores 1] [--repeats 2]

A GPU is only as fast as the host feeds it. This runs every block of a plan through
`pipeline.block.process_block` in this process — read LR + halo with tensorstore, normalise,
tile, "model", stitch, quantise, write whole chunks with the default codec, wait until durable
— with a no-op model (nearest-neighbour upsampling, the cheapest thing with the right shape)
in place of the network, pinned to `--cores` CPU cores. It reports milliseconds of host time
per LR megapixel (target ≤ 25 ms on one core: a core per GPU then feeds 40 M LR px/s) and the
same split by stage (wall time, one by one on the same data), so the biggest cost is named.

Input: a random-texture uint8 LR volume (content does not change host cost) written with the
pipeline's default chunks; output chunks and blocks are the pipeline's defaults for the scale.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipeline.block as block_path
from emsr.intensity import IntensityMapping, IntensityRange
from pipeline.block import BlockTask, process_block, start_lr_read
from pipeline.geometry import Box, Triple, parse_triple
from pipeline.plan import BlockPlan
from pipeline.seams import DEFAULT_HALO
from pipeline.superresolve import DEFAULT_TILE, default_block, default_chunk
from pipeline.tiles import TileLattice, cut_tiles, stitch_cores
from pipeline.volumes import create_volume, write_array

UINT8_MAPPING = IntensityMapping.symmetric(IntensityRange.of_dtype(np.uint8), np.uint8, "dtype")
"""The mapping of every uint8 run here: the dtype's range both ways."""


class NoOpPredictor:
    """The model's place in the block path, at (almost) no cost: nearest upsampling."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        s = self.scale
        return tiles.repeat(s, axis=1).repeat(s, axis=2)


def make_volumes(folder: Path, lr_shape: Triple, scale: int) -> tuple[str, str, BlockPlan]:
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, size=lr_shape, dtype=np.uint8)
    lr_url, sr_url = str(folder / "lr.zarr"), str(folder / "sr.zarr")
    write_array(lr_url, lr, (50.0, 45.0, 45.0))
    hr_shape = (lr_shape[0], lr_shape[1] * scale, lr_shape[2] * scale)
    chunk = default_chunk(hr_shape)
    create_volume(sr_url, hr_shape, "uint8", (50.0, 15.0, 15.0), chunk)
    block = default_block(chunk, scale, DEFAULT_TILE)
    lattice = TileLattice.for_section(lr_shape[1:], DEFAULT_TILE, DEFAULT_HALO)
    plan = BlockPlan(Box.from_shape(hr_shape), block, chunk,
                     scale=scale, tile=lattice.core, halo=lattice.halo)  # fmt: skip
    return lr_url, sr_url, plan


def run_blocks(task: BlockTask, plan: BlockPlan) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) to push every block through the real block path;
    CPU time is the figure that survives a machine shared with other work."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for block in plan.blocks():
        process_block(task, block)
    return time.perf_counter() - started, time.process_time() - cpu_started


def stage_seconds(task: BlockTask, plan: BlockPlan) -> dict[str, float]:
    """Each stage of the block path on its own, summed over every block (one slab a block)."""
    source = block_path.cached_volume(task.input_url)
    target = block_path.cached_volume(task.output_url)
    model = NoOpPredictor(task.scale)
    totals = dict.fromkeys(
        ("read", "normalise", "tile", "model", "stitch", "quantise", "write"), 0.0
    )
    for block in plan.blocks():
        box = block.write
        cover = task.lattice.cover(box.in_plane_footprint(task.scale))
        marks = [time.perf_counter()]
        raw = start_lr_read(source, cover, task.lattice).result()
        marks.append(time.perf_counter())
        normalised = task.intensity.normalize(raw)
        marks.append(time.perf_counter())
        tiles = cut_tiles(normalised, task.lattice)
        marks.append(time.perf_counter())
        outputs = model(tiles)
        marks.append(time.perf_counter())
        sr = stitch_cores(outputs, task.lattice, cover.shape, task.scale)
        marks.append(time.perf_counter())
        stored = task.intensity.denormalize(
            sr[: box.shape[0], : box.shape[1], : box.shape[2]], np.uint8
        )
        marks.append(time.perf_counter())
        target.write(box.slices(), stored)
        marks.append(time.perf_counter())
        for name, begin, end in zip(totals, marks[:-1], marks[1:], strict=True):
            totals[name] += end - begin
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr-shape", default="8,2048,2048")
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    lr_shape = parse_triple(args.lr_shape, "--lr-shape")
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    torch.set_num_threads(args.cores)
    block_path.cached_predictor = lambda *_: NoOpPredictor(args.scale)
    with tempfile.TemporaryDirectory() as scratch:
        lr_url, sr_url, plan = make_volumes(Path(scratch), lr_shape, args.scale)
        lattice = TileLattice.for_section(lr_shape[1:], DEFAULT_TILE, DEFAULT_HALO)
        task = BlockTask(lr_url, sr_url, scratch, "", args.scale, lattice,
                         UINT8_MAPPING, device="cpu")  # fmt: skip
        megapixels = np.prod(lr_shape) / 1e6
        runs = [run_blocks(task, plan) for _ in range(args.repeats)]
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        stages = stage_seconds(task, plan)
    row = {
        "lr_shape": list(lr_shape), "scale": args.scale, "cores": args.cores,
        "blocks": plan.block_count, "lr_megapixels": round(megapixels, 2),
        "wall_ms_per_lr_mpx": round(1e3 * wall / megapixels, 1),
        "cpu_ms_per_lr_mpx": round(1e3 * cpu / megapixels, 1),
        "stages_ms_per_lr_mpx": {k: round(1e3 * v / megapixels, 1) for k, v in stages.items()},
    }  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()
