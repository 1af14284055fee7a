"""One block, start to finish, on a worker: read LR + halo → tiles → batched forward →
stitch → quantise → write whole storage chunks; slab by slab, with the next slab's read
and the previous slab's write in flight while the model computes.

`BlockTask` is the small, picklable description every block of a run shares; the worker
opens volumes and loads the model once per process (cached by URL and checkpoint sha256),
so a block costs only its own I/O and compute.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tensorstore as ts

from emsr.checkpoint import read_checkpoint
from emsr.errors import CheckpointError, DataError
from emsr.inference import Predictor
from emsr.intensity import FILL_VALUE, IntensityMapping, is_empty, no_data
from pipeline.geometry import Box
from pipeline.plan import PlannedBlock
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
    intensity: IntensityMapping
    device: str = "auto"
    batch_size: int = 4
    precision: str = "fp32"
    compute_empty: bool = False


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
def cached_predictor(
    checkpoint_dir: str, sha256: str, device: str, batch_size: int, precision: str = "fp32"
) -> Predictor:
    """One model per worker process and checkpoint, loaded once."""
    checkpoint = read_checkpoint(checkpoint_dir)
    if checkpoint.sha256 != sha256:
        raise CheckpointError(
            f"{checkpoint_dir} changed while the run was going on (sha256 {checkpoint.sha256[:12]}…"
            f" ≠ {sha256[:12]}…); restart the run"
        )
    return Predictor(checkpoint.model, device=device, batch_size=batch_size, precision=precision)


@dataclass(frozen=True)
class PendingRead:
    """An LR read in flight, and how to mirror its result into tiles-plus-halo layout."""

    future: ts.Future
    rows: np.ndarray
    columns: np.ndarray

    def result(self) -> np.ndarray:
        return self.future.result()[:, self.rows][:, :, self.columns]


def start_lr_read(source: Volume, cover: Box, lattice: TileLattice) -> PendingRead:
    """Start reading the LR pixels of whole tiles covering `cover` plus the halo, mirrored
    beyond the volume's edges by the global rule; one read of the bounding box."""
    rows, columns = read_window_indices(lattice, cover, source.info.shape)
    bounds = Box(
        (cover.begin[0], int(rows.min()), int(columns.min())),
        (cover.end[0], int(rows.max()) + 1, int(columns.max()) + 1),
    )
    future = source.read_async(bounds.slices())
    return PendingRead(future, rows - bounds.begin[1], columns - bounds.begin[2])


def slab_sections(tiles_per_section: int, chunk_sections: int, batch_size: int) -> int:
    """Sections per slab: the fewest whole chunks in z whose tiles fill whole batches.

    The predictor pads every call to whole batches (so a tile's result never depends on its
    batch-mates); one section of a narrow block may hold a single tile, and a batch of 4
    would then compute 4 tiles to keep 1.
    """
    chunks = batch_size // math.gcd(tiles_per_section * chunk_sections, batch_size)
    return chunk_sections * chunks


def slabs(write: Box, sections: int) -> list[Box]:
    """The z-slabs of `sections` sections (the last one shorter) of the HR `write` box.

    Working slab by slab lets the next slab's read and the last slab's write overlap the
    model's compute. `sections` is a whole number of chunks in z and `write` starts on a
    chunk, so every slab spans whole chunks.
    """
    starts = range(write.begin[0], write.end[0], sections)
    return [
        Box((z, *write.begin[1:]), (min(z + sections, write.end[0]), *write.end[1:]))  # type: ignore[arg-type]
        for z in starts
    ]


def block_slabs(task: BlockTask, write: Box, chunk_sections: int) -> list[Box]:
    """The slabs `process_block` works through for the HR `write` box."""
    rows, columns = task.lattice.index_range(write.in_plane_footprint(task.scale))
    depth = slab_sections(len(rows) * len(columns), chunk_sections, task.batch_size)
    return slabs(write, depth)


def slab_cover(block: PlannedBlock, slab: Box, halo: int) -> Box:
    """The tile cores (LR, no halo) of the block's read box within the z-range of `slab`."""
    cover = block.read.grow((0, -halo, -halo))
    return Box((slab.begin[0], *cover.begin[1:]), (slab.end[0], *cover.end[1:]))  # type: ignore[arg-type]


def empty_tiles(raw: np.ndarray, lattice: TileLattice) -> np.ndarray:
    """Which tiles of `cut_tiles` order see nothing but zeros and no data (halo included).

    Decided per tile of the global lattice, so skipping them keeps the output independent of
    the block shape."""
    return np.array([is_empty(tile) for tile in cut_tiles(raw, lattice)])


def super_resolve_region(
    predictor: Predictor,
    region: np.ndarray,
    lattice: TileLattice,
    cover: Box,
    skipped: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised LR region (tiles + halo) → SR float32 array of the cover; `skipped` tiles
    are not computed (their cores hold 0)."""
    tiles = cut_tiles(region, lattice)
    if skipped is None:
        outputs = predictor(tiles)
    else:
        s = predictor.scale
        outputs = np.zeros((len(tiles), s * tiles.shape[1], s * tiles.shape[2]), np.float32)
        if not skipped.all():
            outputs[~skipped] = predictor(tiles[~skipped])
    return stitch_cores(outputs, lattice, cover.shape, predictor.scale)


def fill_mask(
    raw: np.ndarray, skipped: np.ndarray | None, lattice: TileLattice, cover: Box, scale: int
) -> np.ndarray | None:
    """HR voxels of the cover to store as fill: under no-data LR pixels or skipped tiles."""
    halo = lattice.halo
    mask = no_data(raw[:, halo : halo + cover.shape[1], halo : halo + cover.shape[2]])
    if skipped is not None and skipped.any():
        (sections, height, width), (ty, tx) = cover.shape, lattice.core
        grid = skipped.reshape(sections, height // ty, width // tx)
        tiles = np.repeat(np.repeat(grid, ty, axis=1), tx, axis=2)
        mask = tiles if mask is None else mask | tiles
    if mask is None:
        return None
    return np.repeat(np.repeat(mask, scale, axis=1), scale, axis=2)


def check_finite(values: np.ndarray, box: Box, precision: str) -> None:
    """Nothing non-finite is ever stored: the input was bounded, so this is the model."""
    if not np.isfinite(values).all():
        raise DataError(
            f"the model produced NaN or Inf for output box {box} from bounded input (its "
            f"weights overflow at --precision {precision}); try --precision fp32, or retrain"
        )


def compute_box(
    task: BlockTask, predictor: Predictor, raw: np.ndarray, cover: Box, box: Box, dtype: np.dtype
) -> np.ndarray:
    """The stored values of the HR `box`, from the raw LR region read for `cover`.

    No-data LR pixels give fill; tiles seeing only zeros and no data are skipped and give
    fill unless `task.compute_empty`."""
    skipped = None if task.compute_empty else empty_tiles(raw, task.lattice)
    sr = super_resolve_region(
        predictor, task.intensity.normalize(raw), task.lattice, cover, skipped
    )
    s = task.scale
    origin = (cover.begin[0], s * cover.begin[1], s * cover.begin[2])
    crop = box.shift(_negate(origin)).slices()
    check_finite(sr[crop], box, task.precision)
    stored = task.intensity.denormalize(sr[crop], dtype)
    check_finite(stored, box, task.precision)
    mask = fill_mask(raw, skipped, task.lattice, cover, s)
    if mask is not None:
        stored[mask[crop]] = FILL_VALUE
    return stored


def process_block(task: BlockTask, block: PlannedBlock) -> BlockOutcome:
    """Super-resolve the block's HR write box (whole chunks) from its LR read box and write
    it; returns once every write is durable, so the caller may mark the block done."""
    started = time.perf_counter()
    source, target = cached_volume(task.input_url), cached_volume(task.output_url)
    predictor = cached_predictor(
        task.checkpoint_dir, task.checkpoint_sha256, task.device, task.batch_size, task.precision
    )
    steps = block_slabs(task, block.write, target.info.chunk[0])
    covers = [slab_cover(block, slab, task.lattice.halo) for slab in steps]
    pending = start_lr_read(source, covers[0], task.lattice)
    writes = []
    for index, (slab, cover) in enumerate(zip(steps, covers, strict=True)):
        raw = pending.result()
        if index + 1 < len(steps):
            pending = start_lr_read(source, covers[index + 1], task.lattice)
        result = compute_box(task, predictor, raw, cover, slab, target.info.dtype)
        writes.append(target.write_async(slab.slices(), result))
    for write in writes:
        write.commit.result()
    computed = sum(task.lattice.computed_pixels(s.in_plane_footprint(task.scale)) for s in steps)
    return BlockOutcome(block.write, block.write.size, computed, time.perf_counter() - started)


def _negate(offset: tuple[int, int, int]) -> tuple[int, int, int]:
    return (-offset[0], -offset[1], -offset[2])
