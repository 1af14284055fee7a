"""The global FRC: the resolution of two results with independent noise over a few evenly
spaced whole sections, cropped to a central square, for every pair of volumes given: SR of
two LR scans (`sr`, `sr2`), SR against a second HR scan, and the two HR scans (the
acquisition's own resolution, for comparison). The per-block map is in `quality`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emsr.metrics import FRCCurve, frc_curve, frc_resolution
from pipeline.audit.inputs import ROLE_NAMES
from pipeline.volumes import Volume

FRC_SECTIONS = 5
FRC_MAX_SIDE = 1024  # a 1024² crop already resolves the curve to 1/1024 cycles per pixel
FRC_PAIRS = (("sr", "sr2"), ("sr", "reference2"), ("reference", "reference2"))


@dataclass(frozen=True, eq=False)
class FRCComparison:
    """The FRC of one pair of volumes on `sections` cropped to `crop` (y, x slices), with the
    resolutions in pixels (1/7 and half-bit thresholds)."""

    pair: tuple[str, str]
    sections: list[int]
    crop: tuple[slice, slice]
    curve: FRCCurve
    resolution_px: float
    resolution_half_bit_px: float

    @property
    def name(self) -> str:
        return "_vs_".join(self.pair)

    @property
    def label(self) -> str:
        return " vs ".join(ROLE_NAMES[role] for role in self.pair)


def frc_sections(depth: int, count: int) -> list[int]:
    """`count` sections evenly spaced from the first to the last (fewer if there are fewer)."""
    return sorted({round(z) for z in np.linspace(0, depth - 1, min(count, depth))})


def central_square(height: int, width: int) -> tuple[slice, slice]:
    side = min(height, width, FRC_MAX_SIDE)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return slice(y0, y0 + side), slice(x0, x0 + side)


def read_sections(volume: Volume, sections: list[int], crop: tuple[slice, slice]) -> np.ndarray:
    futures = [volume.read_async((slice(z, z + 1), *crop)) for z in sections]
    return np.concatenate([future.result() for future in futures])


def frc_pairs(volumes: dict[str, Volume]) -> list[tuple[str, str]]:
    """The pairs of `FRC_PAIRS` whose two volumes were given on the SR's whole grid."""
    shape = volumes["sr"].info.shape
    return [
        pair
        for pair in FRC_PAIRS
        if all(role in volumes and volumes[role].info.shape == shape for role in pair)
    ]


def compare_frc(
    volumes: dict[str, Volume], count: int, on_step: Callable[[], None]
) -> list[FRCComparison]:
    """The FRC of every pair of `frc_pairs`, in pixels."""
    depth, height, width = volumes["sr"].info.shape
    sections, crop = frc_sections(depth, count), central_square(height, width)
    comparisons = []
    for pair in frc_pairs(volumes):
        a, b = (read_sections(volumes[role], sections, crop) for role in pair)
        comparisons.append(
            FRCComparison(
                pair,
                sections,
                crop,
                frc_curve(a, b),
                frc_resolution(a, b, 1.0, "1/7"),
                frc_resolution(a, b, 1.0, "half_bit"),
            )
        )
        on_step()
    return comparisons


def in_plane_pixel_nm(voxel_nm: tuple[float, float, float] | None) -> float | None:
    """The pixel size FRC rings are measured in: y and x (their geometric mean if unequal)."""
    return math.sqrt(voxel_nm[1] * voxel_nm[2]) if voxel_nm else None
