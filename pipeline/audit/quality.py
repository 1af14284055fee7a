"""Reference-free resolution of one audit block: FRC between two results with independent noise.

With two LR scans, the pair is their two SR results (`sr`, `sr2`). With one, the pair is made
from the single scan by *recorruption* (Pang et al., "Recorrupted-to-Recorrupted", CVPR
2021): for a scan y = x + n with white Gaussian noise n of std σ, and a fresh draw z of the
same std, y + z and y − z carry the noises n + z and n − z, which are uncorrelated, hence
independent. The block's σ is estimated from its own LR (the MAD of the finest Laplacian
residual, `estimate_noise_sigma`), the run's model super-resolves both, and their FRC is the
block's resolution. Each result has √2 × the scan's noise, so the estimate is conservative
(an upper bound in nm), but it follows what the run's quality depends on: the model, the
local content and the local noise. `RECORRUPTION_DRAWS` pairs are averaged (their FRC curves,
like sections of one stack), which halves the estimate's scatter between blocks.

Why not the SR of complementary sub-samplings of the LR (even vs odd pixels)? At EM sampling
the LR is not oversampled, so the two halves alias differently: their correlation at high
frequency then measures aliasing, not noise. On the phantom that map ranked blocks with
Spearman ρ 0.28 against the truth's, recorruption 0.57-0.73 offline (EXPERIMENTS.md). A checkerboard
split of the SR output fails too: the network mixes neighbouring pixels, so the two halves'
noise correlates.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from emsr.degradations import estimate_noise_sigma
from emsr.errors import DataError
from emsr.inference import Predictor
from emsr.metrics import frc_resolution
from pipeline.geometry import Box

FRC_MIN_SIDE = 8  # emsr.metrics refuses smaller images: no ring would hold enough pixels
RECORRUPTION_MARGIN_LR = 16  # LR context around a block, so model edge effects fall outside
RECORRUPTION_DRAWS = 2


def pair_resolution_px(a: np.ndarray, b: np.ndarray) -> float:
    """1/7-threshold FRC resolution of two (z, y, x) stacks in their pixels; NaN if too small."""
    if min(a.shape[-2:]) < FRC_MIN_SIDE:
        return math.nan
    try:
        return frc_resolution(a, b, 1.0, "1/7")
    except DataError:
        return math.nan


def recorruption_read_box(block: Box, scale: int, lr_shape: tuple[int, int, int]) -> Box:
    """The LR box read for `block` (SR voxels): its footprint plus a margin, cut to the volume."""
    footprint = block.in_plane_footprint(scale)
    begin = [footprint.begin[0]] + [max(0, b - RECORRUPTION_MARGIN_LR) for b in footprint.begin[1:]]
    end = [footprint.end[0]] + [
        min(n, e + RECORRUPTION_MARGIN_LR) for e, n in zip(footprint.end[1:], lr_shape[1:])
    ]
    return Box(tuple(begin), tuple(end))  # type: ignore[arg-type]


def recorrupted_resolution_px(
    predictor: Predictor, lr: np.ndarray, lr_box: Box, block: Box
) -> float:
    """Resolution (SR px) of `block` from SR pairs of the recorrupted, normalised LR region
    `lr` read for `lr_box`. The draws are seeded by the block's position: a rerun (or a
    resumed audit) measures the same value."""
    scale = predictor.scale
    footprint = block.in_plane_footprint(scale).shift(tuple(-b for b in lr_box.begin))  # type: ignore[arg-type]
    own = lr[footprint.slices()]
    if min(own.shape[1:]) < 3:
        return math.nan
    # σ of the block's own pixels: the margin may hold neighbours of other noise levels, and
    # a z weaker than the block's noise leaves shared noise in both results
    sigma = np.float32(estimate_noise_sigma(own))
    rng = np.random.default_rng(zlib.crc32(str(block).encode()))
    origin = (lr_box.begin[0], scale * lr_box.begin[1], scale * lr_box.begin[2])
    crop = block.shift(tuple(-o for o in origin)).slices()  # type: ignore[arg-type]
    firsts, seconds = [], []
    for _ in range(RECORRUPTION_DRAWS):
        noise = sigma * rng.standard_normal(lr.shape, dtype=np.float32)
        firsts.append(predictor(lr + noise)[crop])
        seconds.append(predictor(lr - noise)[crop])
    return pair_resolution_px(np.concatenate(firsts), np.concatenate(seconds))
