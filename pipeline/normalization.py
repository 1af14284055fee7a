"""Which intensity mapping a run uses: the checkpoint's (default), the input dtype's range,
or a percentile pass over a bounded sample spread through the whole volume.

The percentile pass reads at most `SAMPLE_SECTIONS` × `PATCHES_PER_SECTION` patches of
`PATCH_PX`² LR pixels (≈ 1 M voxels, whatever the volume's size), one patch at a random
place in each cell of a 4 × 4 grid over a section, from sections spread through z; so a
resin band, a blank section or an aligned stack's zero margin cannot stand for the volume.
No-data voxels and exact zeros (fill) are left out of the sample.
"""

from __future__ import annotations

import numpy as np

from emsr.checkpoint import Checkpoint
from emsr.intensity import NO_DATA_MAGNITUDE, IntensityMapping, IntensityRange
from pipeline.errors import PlanError
from pipeline.geometry import Box
from pipeline.volumes import Volume

NORMALIZATIONS = ("checkpoint", "dtype", "percentile")
SAMPLE_SECTIONS = 16
PATCH_GRID = 4
PATCHES_PER_SECTION = PATCH_GRID * PATCH_GRID
PATCH_PX = 64
PERCENTILES = (0.1, 99.9)
MIN_SAMPLES = 1000
"""Fewer data voxels than this in the whole sample leave the percentiles meaningless."""
MIN_RELATIVE_SPAN = 1e-4
"""A range narrower than this fraction of its magnitude is below float32's useful
resolution after normalising (and a blank volume's noise would be amplified ×10⁴ or more)."""


def sample_boxes(shape: tuple[int, int, int], seed: int = 0) -> list[Box]:
    """The percentile pass's patches: one per grid cell of each sampled section, at a
    random (seeded, so reproducible) place inside the cell."""
    sections, height, width = shape
    rng = np.random.default_rng(seed)
    patch_y, patch_x = min(PATCH_PX, height), min(PATCH_PX, width)
    picks = np.linspace(0, sections - 1, num=min(SAMPLE_SECTIONS, sections)).astype(int)
    boxes = []
    for z in np.unique(picks):
        for row in range(PATCH_GRID):
            for column in range(PATCH_GRID):
                y = _place(rng, row, height, patch_y)
                x = _place(rng, column, width, patch_x)
                boxes.append(Box((int(z), y, x), (int(z) + 1, y + patch_y, x + patch_x)))
    return boxes


def _place(rng: np.random.Generator, cell: int, size: int, patch: int) -> int:
    """A patch start inside grid cell `cell` of an axis of `size` pixels (clamped inside)."""
    begin, end = cell * size // PATCH_GRID, (cell + 1) * size // PATCH_GRID
    return int(min(rng.integers(begin, max(begin + 1, end)), size - patch))


def intensity_sample(source: Volume) -> np.ndarray:
    """The data voxels of the percentile pass's patches (no data and exact zeros left out)."""
    reads = [source.read_async(box.slices()) for box in sample_boxes(source.info.shape)]
    values = np.concatenate([read.result().ravel() for read in reads])
    with np.errstate(invalid="ignore"):
        return values[(np.abs(values) < NO_DATA_MAGNITUDE) & (values != 0)]


def percentile_range(source: Volume) -> IntensityRange:
    """The 0.1–99.9 percentile range of the sample; a degenerate one is refused."""
    sample = intensity_sample(source)
    advice = "pass --normalization checkpoint or dtype to map intensities without sampling"
    if sample.size < MIN_SAMPLES:
        raise PlanError(
            f"the percentile pass found only {sample.size} data voxels in {source.info.url} "
            f"(the rest is zero or no data); {advice}"
        )
    low, high = (float(v) for v in np.percentile(sample.astype(np.float64), PERCENTILES))
    if high - low <= MIN_RELATIVE_SPAN * max(abs(low), abs(high)):
        raise PlanError(
            f"the percentile pass of {source.info.url} found a degenerate range "
            f"({low:.6g}, {high:.6g}): the volume looks blank; {advice}"
        )
    return IntensityRange(low, high)


def checkpoint_mapping(source: Volume, checkpoint: Checkpoint) -> IntensityMapping:
    """The mapping the model was trained with, for an input of the dtype it was trained on."""
    try:
        mapping = IntensityMapping.from_checkpoint(checkpoint.normalization)
    except (KeyError, TypeError, ValueError):
        raise PlanError(
            f"{checkpoint.path} records no usable intensity normalisation; pass "
            "--normalization dtype or percentile to choose one"
        ) from None
    dtype = source.info.dtype.name
    if dtype != mapping.input_dtype:
        raise PlanError(
            f"the checkpoint was trained on {mapping.input_dtype} LR input but "
            f"{source.info.url} is {dtype}; pass --normalization dtype or percentile to map "
            "its intensities explicitly"
        )
    return mapping


def choose_intensity(
    source: Volume, normalization: str, checkpoint: Checkpoint
) -> IntensityMapping:
    """The run's one mapping: the checkpoint's unless `normalization` overrides it."""
    if normalization not in NORMALIZATIONS:
        raise PlanError(
            f"--normalization must be {', '.join(NORMALIZATIONS)}, not {normalization!r}"
        )
    if normalization == "checkpoint":
        return checkpoint_mapping(source, checkpoint)
    dtype = source.info.dtype
    if normalization == "dtype":
        return IntensityMapping.symmetric(IntensityRange.of_dtype(dtype), dtype, normalization)
    return IntensityMapping.symmetric(percentile_range(source), dtype, normalization)
