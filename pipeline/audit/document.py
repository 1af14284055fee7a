"""The audit's results: global numbers reduced from the score store, the quality-map volume,
and `metrics.json` (a summary; every block's numbers stay in the score store).

Identical images have infinite PSNR, which JSON cannot hold: it is written as
`PSNR_IDENTICAL_DB` (999 dB), far above any finite PSNR of real data (one uint16 grey level
of error in 10¹⁵ voxels is 246 dB), so 999 can only mean "no difference at all".

The quality map is a float32 volume with one voxel per audit block (resolution in nm, NaN
where none was measured) whose voxel size is the block's, so Neuroglancer overlays it on the
SR volume cell for cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emsr.errors import EMSRError
from pipeline.audit.grid import AuditGrid
from pipeline.audit.measure import COLUMN
from pipeline.audit.sections import FRCComparison, in_plane_pixel_nm
from pipeline.geometry import Triple
from pipeline.urls import confine
from pipeline.volumes import create_volume

PSNR_IDENTICAL_DB = 999.0
QUALITY_MAP = "quality_map.zarr"
MAP_CHUNK = (16, 256, 256)


class AuditOutputError(EMSRError):
    """An audit output folder that cannot be created or written."""


def psnr_from_error(squared_error: float, voxels: float, value_range: float) -> float:
    """PSNR of `voxels` voxels whose squared errors sum to `squared_error` (inf if none)."""
    if squared_error == 0:
        return math.inf
    return 10.0 * math.log10(value_range**2 * voxels / squared_error)


def json_psnr(value: float) -> float:
    return PSNR_IDENTICAL_DB if math.isinf(value) else value


@dataclass
class Reduction:
    """Global sums and per-cell grids, accumulated over the stored rows chunk by chunk.

    `squared_error` and `voxels` are per audit-grid column (y, x) summed over z, for the
    PSNR heat map; `resolution_nm` is the quality map, one value per audit block."""

    grid: AuditGrid
    pixel_nm: float
    total_error: float = 0.0
    scored_voxels: float = 0.0
    ssim_weighted: float = 0.0
    ssim_voxels: float = 0.0
    blocks: int = 0
    squared_error: np.ndarray = field(init=False)
    voxels: np.ndarray = field(init=False)
    resolution_nm: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        depth, rows, columns = self.grid.block_grid
        self.squared_error, self.voxels = np.zeros((rows, columns)), np.zeros((rows, columns))
        self.resolution_nm = np.full((depth, rows, columns), np.nan, dtype=np.float32)

    def add(self, rows: np.ndarray) -> None:
        begin, end = rows[:, 0:3], rows[:, 3:6]
        voxels = np.prod(end - begin, axis=1)
        cells = (begin // self.grid.block).astype(np.int64)
        self.blocks += len(rows)
        self.resolution_nm[tuple(cells.T)] = rows[:, COLUMN["resolution_px"]] * self.pixel_nm
        error = rows[:, COLUMN["squared_error"]]
        scored = np.isfinite(error)
        self.total_error += math.fsum(error[scored])
        self.scored_voxels += float(voxels[scored].sum())
        np.add.at(self.squared_error, (cells[scored, 1], cells[scored, 2]), error[scored])
        np.add.at(self.voxels, (cells[scored, 1], cells[scored, 2]), voxels[scored])
        similarity = rows[:, COLUMN["ssim"]]
        weighted = np.isfinite(similarity)
        self.ssim_weighted += float(np.dot(voxels[weighted], similarity[weighted]))
        self.ssim_voxels += float(voxels[weighted].sum())

    def psnr(self, value_range: float | None) -> float | None:
        if not self.scored_voxels or value_range is None:
            return None
        return psnr_from_error(self.total_error, self.scored_voxels, value_range)

    def ssim(self) -> float | None:
        return self.ssim_weighted / self.ssim_voxels if self.ssim_voxels else None

    def column_psnr(self, value_range: float) -> np.ndarray:
        """PSNR per (y, x) grid column from its squared errors summed over z (NaN: unscored)."""
        psnr = np.full(self.voxels.shape, np.nan)
        for cell in zip(*np.nonzero(self.voxels)):
            psnr[cell] = psnr_from_error(self.squared_error[cell], self.voxels[cell], value_range)
        return psnr


def reduce_scores(grid: AuditGrid, pixel_nm: float | None, chunks: Iterable[np.ndarray]):
    """The `Reduction` of the stored rows (resolutions in px if the pixel size is unknown)."""
    reduction = Reduction(grid, pixel_nm or 1.0)
    for rows in chunks:
        reduction.add(rows)
    return reduction


def map_statistics(resolution_nm: np.ndarray) -> dict:
    measured = resolution_nm[np.isfinite(resolution_nm)]
    if not measured.size:
        return {"blocks": 0, "median_nm": None, "p10_nm": None, "p90_nm": None}
    p10, median, p90 = (float(v) for v in np.percentile(measured, [10, 50, 90]))
    return {"blocks": int(measured.size), "median_nm": median, "p10_nm": p10, "p90_nm": p90}


def write_quality_map(
    out_dir: Path,
    resolution_nm: np.ndarray,
    block: Triple,
    voxel_nm: tuple[float, float, float],
    origin_nm: tuple[float, float, float],
) -> str:
    """The map as an OME-Zarr volume whose voxel is one audit block, at the SR's world
    origin; returns its path."""
    path = str(Path(out_dir) / QUALITY_MAP)
    cell_nm = tuple(v * b for v, b in zip(voxel_nm, block))
    chunk = tuple(min(c, n) for c, n in zip(MAP_CHUNK, resolution_nm.shape))
    volume = create_volume(
        path, resolution_nm.shape, "float32", cell_nm, chunk,  # type: ignore[arg-type]
        origin_nm=origin_nm, overwrite=True,
    )  # fmt: skip
    volume.write((slice(None),) * 3, resolution_nm)
    return path


def frc_entry(comparison: FRCComparison, pixel_nm: float | None) -> dict:
    def in_nm(px: float) -> float | None:
        return px * pixel_nm if pixel_nm else None

    crop_y, crop_x = comparison.crop
    return {
        "pair": list(comparison.pair),
        "resolution_nm": in_nm(comparison.resolution_px),
        "resolution_half_bit_nm": in_nm(comparison.resolution_half_bit_px),
        "resolution_px": comparison.resolution_px,
        "resolution_half_bit_px": comparison.resolution_half_bit_px,
        "sections": comparison.sections,
        "crop_yx": f"{crop_y.start}:{crop_y.stop},{crop_x.start}:{crop_x.stop}",
    }


def metrics_document(
    context: dict,
    reduction: Reduction,
    value_range: float | None,
    comparisons: list[FRCComparison],
    voxel_nm: tuple[float, float, float] | None,
) -> dict:
    """The contents of metrics.json; keys that cannot be computed are null. `context` holds
    the inputs, shape, block, region and where the scores and map are.

    `frc_resolution_nm` is the SR result's: SR vs SR 2 if given, else SR vs reference 2; the
    acquisition's own (reference vs reference 2) is under `frc` with every other pair.
    """
    psnr_db = reduction.psnr(value_range)
    pixel_nm = in_plane_pixel_nm(voxel_nm)
    frc = {c.name: frc_entry(c, pixel_nm) for c in comparisons}
    headline = next((frc[name] for name in ("sr_vs_sr2", "sr_vs_reference2") if name in frc), {})
    return {
        "psnr": None if psnr_db is None else json_psnr(psnr_db),
        "ssim": reduction.ssim(),
        "frc_resolution_nm": headline.get("resolution_nm"),
        "frc_resolution_half_bit_nm": headline.get("resolution_half_bit_nm"),
        **context,
        "voxel_size_nm": list(voxel_nm) if voxel_nm else None,
        "data_range": value_range,
        "blocks": reduction.blocks,
        "quality_map": map_statistics(reduction.resolution_nm),
        "frc": frc,
    }


def prepared_output(out_dir: Path) -> Path:
    """The output folder, created now so an unwritable one fails before any work is done."""
    confine(out_dir)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AuditOutputError(
            f"cannot create {out_dir}: {error.strerror}; choose a writable --out"
        ) from None
    return Path(out_dir)


def write_json(path: Path, document: dict) -> None:
    try:
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as error:
        raise AuditOutputError(f"cannot write {path}: {error.strerror}") from None
