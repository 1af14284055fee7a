"""Measuring one audit unit on a worker: read the SR (and the reference, second SR or LR) of
the unit once, then score each of its audit blocks.

Per block: the squared error and SSIM against the reference (its global PSNR pools squared
errors, so it is that of all voxels, not a mean of block PSNRs), the FRC resolution against
the reference (against a clean truth, the yardstick the quality map is validated with), and
the reference-free resolution of `quality`. What a block cannot give is NaN: no reference,
no second scan, or a block too thin for the metric.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from emsr.errors import DataError
from emsr.intensity import IntensityRange
from emsr.metrics import SSIM_WINDOW, ssim
from pipeline.audit.grid import AuditGrid
from pipeline.audit.quality import (
    pair_resolution_px,
    recorrupted_resolution_px,
    recorruption_read_box,
)
from pipeline.block import cached_predictor, cached_volume
from pipeline.geometry import Box, Triple
from pipeline.plan import PlannedBlock

FIELDS = (
    "z0", "y0", "x0", "z1", "y1", "x1",
    "squared_error", "ssim", "frc_reference_px", "resolution_px",
)  # fmt: skip
"""The columns of one block's row in the score store."""
COLUMN = {name: index for index, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class AuditTask:
    """What every unit of one audit shares. `reference_origin` is where the reference's first
    voxel lies in SR voxels; `lr_url` with `checkpoint_dir` asks for the single-scan quality
    map (see `quality`); `scale` is the SR's over the LR (1 when no model is run)."""

    sr_url: str
    grid: AuditGrid
    reference_url: str | None = None
    reference_origin: Triple = (0, 0, 0)
    value_range: float | None = None
    sr2_url: str | None = None
    lr_url: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_sha256: str = ""
    intensity: IntensityRange | None = None
    scale: int = 1
    device: str = "auto"
    batch_size: int = 4


@dataclass(frozen=True)
class UnitScores:
    """A unit's rows (one per audit block, padded with NaN to `blocks_per_unit`), plus the
    counts the dispatcher reports."""

    box: Box
    rows: np.ndarray
    voxels_written: int
    lr_pixels_computed: int
    seconds: float


def measure_unit(task: AuditTask, unit: PlannedBlock) -> UnitScores:
    """Score every audit block of `unit` (its `write` box: the unit cut to the region)."""
    box = unit.write
    started = time.perf_counter()
    sr = cached_volume(task.sr_url).read(box.slices())
    reference = read_placed(task.reference_url, box, task.reference_origin)
    sr2 = cached_volume(task.sr2_url).read(box.slices()) if task.sr2_url else None
    cells = task.grid.blocks_in(box)
    rows = np.full((task.grid.blocks_per_unit, len(FIELDS)), np.nan)
    origin = tuple(-b for b in box.begin)
    for row, (_, cell) in zip(rows, cells):
        local = cell.shift(origin).slices()  # type: ignore[arg-type]
        row[:6] = (*cell.begin, *cell.end)
        if reference is not None:
            row[6:9] = reference_scores(sr[local], reference[local], task, cell)
        if sr2 is not None:
            row[COLUMN["resolution_px"]] = pair_resolution_px(sr[local], sr2[local])
        elif task.lr_url:
            row[COLUMN["resolution_px"]] = single_scan_resolution(task, cell)
    return UnitScores(box, rows, box.size, 0, time.perf_counter() - started)


def read_placed(url: str | None, box: Box, origin: Triple) -> np.ndarray | None:
    """`box` (SR voxels) of a volume whose first voxel lies at `origin` in SR voxels."""
    if url is None:
        return None
    return cached_volume(url).read(box.shift(tuple(-o for o in origin)).slices())  # type: ignore[arg-type]


def reference_scores(
    sr: np.ndarray, reference: np.ndarray, task: AuditTask, cell: Box
) -> tuple[float, float, float]:
    """(squared error, SSIM, FRC resolution in px) of one block against the reference; a
    block the metrics refuse (NaN) is named in the one-line error."""
    if not (np.isfinite(sr).all() and np.isfinite(reference).all()):
        raise DataError(
            f"SR {task.sr_url}, block {cell}: NaN or infinite values; fill them before auditing"
        )
    a, b = sr.astype(np.float64), reference.astype(np.float64)
    error = float(np.sum((a - b) ** 2))
    thin = min(a.shape[1:]) < SSIM_WINDOW
    similarity = math.nan if thin else ssim(a, b, task.value_range or 1.0)
    return error, similarity, pair_resolution_px(a, b)


def single_scan_resolution(task: AuditTask, cell: Box) -> float:
    """The block's resolution (SR px) from SR pairs of its recorrupted LR."""
    lr = cached_volume(task.lr_url)
    predictor = cached_predictor(
        task.checkpoint_dir, task.checkpoint_sha256, task.device, task.batch_size
    )
    lr_box = recorruption_read_box(cell, task.scale, lr.info.shape)
    region = task.intensity.normalize(lr.read(lr_box.slices()))
    return recorrupted_resolution_px(predictor, region, lr_box, cell)
