"""One block, start to finish, on a worker: read LR + halo → tiles → batched forward →
stitch → quantise → write whole storage chunks.

`BlockTask` is the small, picklable description every block of a run shares; the worker
opens volumes and loads the model once per process (cached by URL and checkpoint sha256),
so a block costs only its own I/O and compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from emsr.checkpoint import read_checkpoint
from emsr.errors import CheckpointError, DataError
from emsr.inference import Predictor
from emsr.intensity import IntensityRange
from pipeline.geometry import Box
from pipeline.tiles import TileLattice, cut_tiles, read_window_indices, stitch_cores
from pipeline.volumes import Volume, open_volume


@dataclass(frozen=True)
class BlockTask:
    """What every block of one run needs to know; identical for all blocks."""

    input_url: str
    output_url: str
    checkpoint_dir: str
    checkpoint_sha256: str
    scale: int
    lattice: TileLattice
    intensity: IntensityRange
    device: str = "auto"
    batch_size: int = 4


@dataclass(frozen=True)
class BlockOutcome:
    box: Box
    voxels_written: int
    lr_pixels_computed: int
    seconds: float


@lru_cache(maxsize=8)
def cached_volume(url: str) -> Volume:
    return open_volume(url)


@lru_cache(maxsize=2)
def cached_predictor(checkpoint_dir: str, sha256: str, device: str, batch_size: int) -> Predictor:
    """One model per worker process and checkpoint, loaded once."""
    checkpoint = read_checkpoint(checkpoint_dir)
    if checkpoint.sha256 != sha256:
        raise CheckpointError(
            f"{checkpoint_dir} changed while the run was going on (sha256 {checkpoint.sha256[:12]}…"
            f" ≠ {sha256[:12]}…); restart the run"
        )
    return Predictor(checkpoint.model, device=device, batch_size=batch_size)


def read_lr_region(source: Volume, cover: Box, lattice: TileLattice) -> np.ndarray:
    """The LR pixels of whole tiles covering `cover`, plus the halo, mirrored beyond the
    volume's edges by the global rule; one read of the bounding box."""
    rows, columns = read_window_indices(lattice, cover, source.info.shape)
    bounds = Box(
        (cover.begin[0], int(rows.min()), int(columns.min())),
        (cover.end[0], int(rows.max()) + 1, int(columns.max()) + 1),
    )
    data = source.read(bounds.slices())
    return data[:, rows - bounds.begin[1]][:, :, columns - bounds.begin[2]]


def super_resolve_region(
    predictor: Predictor, region: np.ndarray, lattice: TileLattice, cover: Box
) -> np.ndarray:
    """Normalised LR region (tiles + halo) → SR float32 array of the cover."""
    outputs = predictor(cut_tiles(region, lattice))
    return stitch_cores(outputs, lattice, cover.shape, predictor.scale)


def process_block(task: BlockTask, box: Box, chunk_box: Box) -> BlockOutcome:
    """Super-resolve the HR `box` of the output and write it; returns once the write is
    durable, so the caller may mark the block done.

    `chunk_box` is the block's chunk-aligned region. When an ROI cuts the block, `box` is
    smaller: the rest of `chunk_box` is read back and rewritten unchanged, so writes stay
    whole chunks (this block is the only writer of them).
    """
    started = time.perf_counter()
    source, target = cached_volume(task.input_url), cached_volume(task.output_url)
    predictor = cached_predictor(
        task.checkpoint_dir, task.checkpoint_sha256, task.device, task.batch_size
    )
    footprint = box.in_plane_footprint(task.scale)
    cover = task.lattice.cover(footprint)
    raw = read_lr_region(source, cover, task.lattice)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise DataError(f"the input has NaN or Inf values near output box {box}; clean it first")
    sr = super_resolve_region(predictor, task.intensity.normalize(raw), task.lattice, cover)
    s = task.scale
    origin = (cover.begin[0], s * cover.begin[1], s * cover.begin[2])
    result = task.intensity.denormalize(sr[box.shift(_negate(origin)).slices()], target.info.dtype)
    if box == chunk_box:
        target.write(box.slices(), result)
    else:
        merged = target.read(chunk_box.slices())
        merged[box.shift(_negate(chunk_box.begin)).slices()] = result
        target.write(chunk_box.slices(), merged)
    return BlockOutcome(
        box, box.size, task.lattice.computed_pixels(footprint), time.perf_counter() - started
    )


def _negate(offset: tuple[int, int, int]) -> tuple[int, int, int]:
    return (-offset[0], -offset[1], -offset[2])
