"""Seam agreement: how closely tiled inference on the global lattice matches whole-section
inference, and the smallest halo that keeps the seams at the target.

A tile sees only `halo` LR px of its neighbours, so where a trained model looks further than
that, its output near a tile-core boundary differs from whole-section inference. Whether a
halo is enough is a property of the trained weights (the theoretical receptive field, ~58 LR
px for `small` and ~100 for `paper`, is an upper bound that training rarely uses in full), so
it is measured on real sections rather than derived from the architecture.

The measure: sections are super-resolved whole (reflected by `halo` px at their edges) and
tiled exactly as blocks are (`TileLattice`, mirrored reads, crop-and-stitch), both clipped to
[0, 1] as outputs are; PSNR (data range 1) is taken over the seams only — output pixels within
`SEAM_BAND` LR px of an interior core boundary — so large tiles do not dilute it. Tiles of
`MEASURE_TILE` px put every measured pixel closer to other seams than in any larger tile: a
halo that passes there passes for larger tiles too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emsr.checkpoint import Checkpoint, ValidatedHalo, read_checkpoint, record_validated_halo
from emsr.inference import Predictor, reflected_indices, super_resolve_image
from emsr.intensity import IntensityRange
from emsr.network import EMSR
from pipeline.block import super_resolve_region
from pipeline.errors import PlanError
from pipeline.geometry import Box
from pipeline.tiles import TileLattice, read_window_indices, round_up

DEFAULT_HALO = 16
"""LR px of context around every tile when --halo is not given, unless the checkpoint needs
more: a margin over the 8 px that `small` models typically need."""
SEAM_TARGET_DB = 50.0
"""Tiled output must agree with whole-section inference to at least this PSNR on the seams."""
MEASURE_TILE = 64
"""LR tile core used to measure (or the run's tile where that is smaller)."""
SEAM_BAND = 4
"""LR px on each side of an interior core boundary counted as the seam."""
HALO_LIMIT = 96
"""The largest halo tried (LR px): past the `paper` receptive field's half-width of ~50."""
SAMPLE_TILES = 3
"""Sample crops span this many measurement tiles per axis (two interior seams each way)."""
SAMPLE_SECTIONS = 2


@dataclass(frozen=True)
class SeamCheck:
    """Seam PSNR (dB; inf where tiled and whole agree exactly) of one halo."""

    halo: int
    psnr_db: float

    @property
    def passes(self) -> bool:
        return self.psnr_db >= SEAM_TARGET_DB


@dataclass(frozen=True)
class HaloValidation:
    """Each halo measured, smallest first, ending at the first that passes (if any)."""

    tile: int
    checks: tuple[SeamCheck, ...]
    seconds: float

    @property
    def passing(self) -> SeamCheck | None:
        last = self.checks[-1] if self.checks else None
        return last if last is not None and last.passes else None

    def record(self) -> ValidatedHalo | None:
        """What a checkpoint stores: the validated halo and its evidence."""
        passing = self.passing
        if passing is None:
            return None
        finite = passing.psnr_db if np.isfinite(passing.psnr_db) else None
        return ValidatedHalo(passing.halo, self.tile, finite, SEAM_TARGET_DB)

    def summary(self) -> str:
        passing = self.passing
        if passing is None:
            return f"no halo up to {HALO_LIMIT} px keeps seams ≥ {SEAM_TARGET_DB:g} dB"
        return f"halo {passing.halo} px: seams {_db(passing.psnr_db)} ({self.seconds:.1f} s)"


def _db(value: float) -> str:
    return "identical" if not np.isfinite(value) else f"{value:.1f} dB"


def tiled_section(predictor: Predictor, section: np.ndarray, lattice: TileLattice) -> np.ndarray:
    """One normalised LR section through the pipeline's tiling: lattice, mirrored read,
    stitched cores."""
    volume = section[None]
    cover = lattice.cover(Box.from_shape(volume.shape))
    rows, columns = read_window_indices(lattice, cover, volume.shape)
    sr = super_resolve_region(predictor, volume[:, rows][:, :, columns], lattice, cover)
    height, width = section.shape
    return sr[0, : predictor.scale * height, : predictor.scale * width]


def seam_mask(section_shape: tuple[int, int], lattice: TileLattice, scale: int) -> np.ndarray:
    """HR pixels within `SEAM_BAND` LR px of an interior tile-core boundary."""
    axes = []
    for extent, core in zip(section_shape, lattice.core, strict=True):
        lr = np.arange(scale * extent) // scale
        offset = lr % core
        near = np.minimum(offset, core - 1 - offset) < SEAM_BAND
        axes.append(near & (lr >= SEAM_BAND) & (lr < round_up(extent, core) - SEAM_BAND))
    return axes[0][:, None] | axes[1][None, :]


def seam_psnr(predictor: Predictor, sections: np.ndarray, tile: int, halo: int) -> float:
    """PSNR (dB) of tiled against whole-section inference over the seams of `sections`
    ((n, h, w), normalised to [0, 1]); inf where they agree exactly."""
    window = predictor.model.config.window
    squared, count = 0.0, 0
    for section in sections:
        lattice = TileLattice.for_section(section.shape, tile, halo, window)
        mask = seam_mask(section.shape, lattice, predictor.scale)
        whole = np.clip(super_resolve_image(predictor, section, lattice.halo), 0, 1)
        tiled = np.clip(tiled_section(predictor, section, lattice), 0, 1)
        squared += float(np.sum((tiled[mask] - whole[mask]).astype(np.float64) ** 2))
        count += int(mask.sum())
    if count == 0 or squared == 0:
        return float("inf")
    return float(10 * np.log10(count / squared))


def validate_halo(
    model: EMSR, sections: np.ndarray, tile: int = MEASURE_TILE, start: int = 0
) -> HaloValidation:
    """Measure window-aligned halos from `start` up (to `HALO_LIMIT`, or `start` if larger),
    stopping at the first that passes. On the CPU in float32: the seams of the weights, not
    of a reduced precision."""
    started = time.perf_counter()
    predictor = Predictor(model, device="cpu", batch_size=1)
    window = model.config.window
    first = round_up(start, window)
    checks = []
    for halo in range(first, max(first, HALO_LIMIT) + 1, window):
        checks.append(SeamCheck(halo, seam_psnr(predictor, sections, tile, halo)))
        if checks[-1].passes:
            break
    return HaloValidation(tile, tuple(checks), time.perf_counter() - started)


def sample_sections(volume: Any, intensity: IntensityRange, tile: int) -> np.ndarray:
    """Normalised central crops of `SAMPLE_TILES` tiles a side from sections spread through a
    (z, y, x) array-like; sections smaller than that are mirrored out to it (so every sample
    has interior seams), and non-finite values (no data) count as 0."""
    sections, height, width = (int(n) for n in volume.shape)
    size = SAMPLE_TILES * tile
    rows, columns = (slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size))
                     for n in (height, width))  # fmt: skip
    picks = np.unique(np.linspace(0, sections - 1, num=min(SAMPLE_SECTIONS, sections)).astype(int))
    crops = np.stack([np.asarray(volume[int(z), rows, columns]) for z in picks])
    mirrored_rows = reflected_indices(0, size, crops.shape[1])
    mirrored_columns = reflected_indices(0, size, crops.shape[2])
    sample = intensity.normalize(crops[:, mirrored_rows][:, :, mirrored_columns])
    return np.nan_to_num(sample, nan=0.0, posinf=1.0, neginf=0.0)


def record_halo_validation(checkpoint_dir: Path, sections: np.ndarray) -> HaloValidation:
    """Measure a freshly trained checkpoint's validated halo and store it in its config."""
    validation = validate_halo(read_checkpoint(checkpoint_dir).model, sections)
    record = validation.record()
    if record is not None:
        record_validated_halo(checkpoint_dir, record)
    return validation


def choose_halo(
    requested: int | None, checkpoint: Checkpoint, tile: int, sample: Callable[[int], np.ndarray]
) -> int:
    """The run's halo (LR px). An explicit `requested` halo below the checkpoint's validated
    halo is refused, naming the minimum; unset, `DEFAULT_HALO` is raised to the validated halo.
    A checkpoint that stores none (or one measured on larger tiles than this run's) is measured
    here on `sample(measure_tile)`, from the halo asked for upwards."""
    window = checkpoint.model.config.window
    measure_tile = min(round_up(tile, window), MEASURE_TILE)
    floor = round_up(DEFAULT_HALO if requested is None else requested, window)
    stored = checkpoint.validated_halo
    if stored is not None and stored.tile <= measure_tile:
        minimum, evidence = stored.halo, "stored in the checkpoint"
    else:
        validation = validate_halo(checkpoint.model, sample(measure_tile), measure_tile, floor)
        if validation.passing is None:
            raise PlanError(
                f"{checkpoint.path}: {validation.summary()} on a sample of this input; "
                "the model's tiles cannot be stitched within the target"
            )
        minimum, evidence = validation.passing.halo, "measured on a sample of this input"
    if requested is None or floor >= minimum:
        return max(floor, minimum)
    raise PlanError(
        f"--halo {requested} is below the {minimum} px this checkpoint needs for seams "
        f"≥ {SEAM_TARGET_DB:g} dB ({evidence}); use --halo {minimum} or more, or leave it unset"
    )
