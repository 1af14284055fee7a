"""Redundant compute of blockwise inference: LR pixels the model processes per LR pixel that
the written output needs, counted from the plan alone (no model is run).

    python bench/redundancy.py [--quick] [--batch 4]

Rows (one JSON line each, `bench` names the kind):
- "defaults": the defaults of pipeline/superresolve.py and seams.py (DEFAULT_TILE, DEFAULT_HALO,
  default_chunk, default_block) on realistic volumes, ×2 and ×3. `redundancy` counts tile
  pixels with their halos, as `RunReport.redundancy` does; `redundancy_with_batch_padding`
  adds the all-zero tiles `Predictor` appends so that every batch is full (each z-slab of a
  block is one call).
- "sweep": the same counts over tile sizes and halos on LR 64×8192×8192.
- "emsr_official": the official EMSR code's scheme for comparison: tiles of 341 LR px at
  stride 170 (50 % overlap), every tile fully computed and the overlaps averaged uniformly.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime

import torch
from model_throughput import cpu_name

from pipeline.block import slab_sections, slabs
from pipeline.geometry import Box, Triple
from pipeline.plan import BlockPlan
from pipeline.seams import DEFAULT_HALO
from pipeline.superresolve import DEFAULT_TILE, default_block, default_chunk
from pipeline.tiles import TileLattice, round_up

REALISTIC_LR = ((64, 8192, 8192), (64, 5000, 7000))
"""A square volume whose blocks tile it exactly, and one whose edge blocks are partial."""
SMALL_LR = (16, 256, 256)
"""A phantom-sized volume: one tile per section, so batches are mostly padding."""
OFFICIAL_TILE, OFFICIAL_STRIDE = 341, 170


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def plan_redundancy(lr_shape: Triple, scale: int, tile: int, halo: int, batch: int) -> dict:
    """Walk the default plan of `lr_shape` block by block and slab by slab, as
    `pipeline.block.process_block` does, and count what the model computes."""
    z, y, x = lr_shape
    output = (z, y * scale, x * scale)
    chunk = default_chunk(output)
    block = default_block(chunk, scale, tile)
    lattice = TileLattice.for_section((y, x), tile, halo)
    plan = BlockPlan(Box.from_shape(output), block, chunk,
                     scale=scale, tile=lattice.core, halo=lattice.halo)  # fmt: skip
    tile_pixels = lattice.input_shape[0] * lattice.input_shape[1]
    computed = padded = needed = 0
    for block in plan.blocks():
        box = block.write
        needed += box.in_plane_footprint(scale).size
        rows, columns = lattice.index_range(box.in_plane_footprint(scale))
        depth = slab_sections(len(rows) * len(columns), chunk[0], batch)
        for part in slabs(box, depth):
            tiles = part.shape[0] * len(rows) * len(columns)
            computed += tiles * tile_pixels
            padded += round_up(tiles, batch) * tile_pixels
    return {
        "lr_shape": list(lr_shape), "scale": scale, "tile": tile, "halo": halo, "batch": batch,
        "tile_core": list(lattice.core), "block": list(block), "chunk": list(chunk),
        "blocks": plan.block_count, "redundancy": round(computed / needed, 4),
        "redundancy_with_batch_padding": round(padded / needed, 4),
    }  # fmt: skip


def overlapped_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins of the overlapped scheme: every `stride` px, the last one moved back to
    end at the edge (a section smaller than a tile is one tile)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    return starts if starts[-1] + tile == length else [*starts, length - tile]


def official_redundancy(lr_shape: Triple, tile: int, stride: int) -> dict:
    """Pixels computed per pixel written when overlapping tiles are all computed and averaged."""
    _, y, x = lr_shape
    rows, columns = overlapped_starts(y, tile, stride), overlapped_starts(x, tile, stride)
    computed = len(rows) * min(tile, y) * len(columns) * min(tile, x)
    return {
        "lr_shape": list(lr_shape), "tile": tile, "stride": stride,
        "tiles_per_section": len(rows) * len(columns), "redundancy": round(computed / (y * x), 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sections and sweep points")
    parser.add_argument("--batch", type=int, default=4, help="Predictor batch size")
    args = parser.parse_args()
    sections = 16 if args.quick else 64
    volumes = [(sections, y, x) for _, y, x in REALISTIC_LR]
    tiles = (128, 512) if args.quick else (64, 128, 256, 512, 1024)
    halos = (0, 16, 32) if args.quick else (0, 8, 16, 24, 32)
    context = {"machine": machine(), "quick": args.quick}

    def emit(kind: str, row: dict) -> None:
        print(json.dumps({"bench": kind, **row, **context}), flush=True)

    for lr_shape in [*volumes, SMALL_LR]:
        for scale in (2, 3):
            row = plan_redundancy(lr_shape, scale, DEFAULT_TILE, DEFAULT_HALO, args.batch)
            emit("defaults", row)
    for scale in (2, 3):
        for tile in tiles:
            for halo in halos:
                emit("sweep", plan_redundancy(volumes[0], scale, tile, halo, args.batch))
    for lr_shape in [*volumes, SMALL_LR]:
        emit("emsr_official", official_redundancy(lr_shape, OFFICIAL_TILE, OFFICIAL_STRIDE))


if __name__ == "__main__":
    main()
