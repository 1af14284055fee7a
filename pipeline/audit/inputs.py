"""The audit's inputs: open the volumes, check that they image one grid, place a reference that
covers only part of the SR volume by its origin, and find the intensity range PSNR uses.

Volumes are compared on the SR's voxel grid. A reference (an HR scan) may be any box of it,
placed by the two volumes' world origins (voxel 0's corner in nm: precomputed's
`voxel_offset`, OME-Zarr's translation), and only where the two overlap is audited. Second
scans (`sr2`, `reference2`) and the LR of the single-scan quality map must cover the SR
volume exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from emsr.errors import DataError
from pipeline.geometry import Box, Triple
from pipeline.volumes import Volume, VolumeInfo

INTEGER_RANGES = MappingProxyType({np.dtype("uint8"): 255.0, np.dtype("uint16"): 65535.0})
ROLE_NAMES = MappingProxyType(
    {"sr": "SR", "reference": "reference", "reference2": "reference 2", "sr2": "SR 2", "lr": "LR"}
)


def check_voxel_size(sr: VolumeInfo, other: VolumeInfo, role: str, factor: int = 1) -> None:
    """The same voxel size (×`factor` in plane for LR) where both volumes know theirs."""
    if not (sr.voxel_size_known and other.voxel_size_known):
        return
    expected = np.multiply(sr.voxel_size_nm, (1, factor, factor))
    if not np.allclose(other.voxel_size_nm, expected, rtol=1e-3):
        raise DataError(
            f"{role} {other.url} has voxel size {other.voxel_size_nm} nm but SR "
            f"{sr.url} needs {tuple(expected.tolist())} nm: compare volumes at the same "
            "resolution"
        )


def check_same_grid(sr: VolumeInfo, other: VolumeInfo, role: str, factor: int = 1) -> None:
    """The SR's shape (÷`factor` in plane for LR) and voxel size; else one line."""
    expected = (sr.shape[0], sr.shape[1] // factor, sr.shape[2] // factor)
    if other.shape != expected:
        raise DataError(
            f"{role} {other.url} has shape {other.shape} but SR {sr.url} has "
            f"{sr.shape}: compare volumes of the same field on the same grid"
        )
    check_voxel_size(sr, other, role, factor)


def reference_box(sr: VolumeInfo, reference: VolumeInfo) -> Box:
    """Where the reference lies in SR voxels (by the two origins); it must meet the SR."""
    check_voxel_size(sr, reference, ROLE_NAMES["reference"])
    if reference.dtype != sr.dtype:
        raise DataError(
            f"reference {reference.url} is {reference.dtype} but SR {sr.url} is "
            f"{sr.dtype}: PSNR and SSIM need both on the same intensity scale"
        )
    voxels = np.subtract(reference.origin_nm, sr.origin_nm) / np.asarray(sr.voxel_size_nm)
    origin = np.rint(voxels).astype(int)
    if not np.allclose(voxels, origin, atol=1e-3):
        raise DataError(
            f"reference {reference.url} starts at {reference.origin_nm} nm, "
            f"{tuple(voxels.round(3).tolist())} SR voxels from SR {sr.url}'s origin: it must "
            "lie on the SR's voxel grid"
        )
    placed = Box.from_shape(reference.shape, tuple(origin.tolist()))  # type: ignore[arg-type]
    if placed.intersect(Box.from_shape(sr.shape)).empty:
        raise DataError(
            f"reference {reference.url} (voxels {placed} of the SR grid) does not overlap SR "
            f"{sr.url} (shape {sr.shape}): check the reference's origin"
        )
    return placed


def audited_region(sr: VolumeInfo, placed_reference: Box | None, roi: Box | None) -> Box:
    """The SR volume, cut to the reference's box and to the ROI."""
    volume = Box.from_shape(sr.shape)
    region = volume.intersect(placed_reference) if placed_reference else volume
    if roi is not None:
        if not volume.contains(roi):
            raise DataError(f"--roi {roi} lies outside SR {sr.url} (shape {sr.shape})")
        region = region.intersect(roi)
        if region.empty:
            raise DataError(f"--roi {roi} does not meet the reference's box {placed_reference}")
    return region


def voxel_size(volumes: dict[str, Volume]) -> tuple[float, float, float] | None:
    """The first known voxel size among the inputs on the SR grid; None if none records one."""
    known = [
        volume.info.voxel_size_nm
        for role, volume in volumes.items()
        if role != "lr" and volume.info.voxel_size_known
    ]
    return known[0] if known else None


def data_range(
    reference: Volume, boxes: list[Box], origin: Triple, on_step: Callable[[], None]
) -> float:
    """The intensity range PSNR and SSIM are relative to: the dtype's for integers; for
    float32 the reference's own max - min over the audited `boxes` (SR voxels)."""
    info = reference.info
    if info.dtype in INTEGER_RANGES:
        return INTEGER_RANGES[info.dtype]
    low, high = math.inf, -math.inf
    for box in boxes:
        block = reference.read(box.shift(tuple(-o for o in origin)).slices())  # type: ignore[arg-type]
        if not np.isfinite(block).all():
            raise DataError(
                f"reference {info.url} has NaN or infinite values in {box}: fill "
                "them before auditing"
            )
        low, high = min(low, float(block.min())), max(high, float(block.max()))
        on_step()
    if high <= low:
        raise DataError(
            f"reference {info.url} is constant ({low}): PSNR and SSIM need a "
            "reference with contrast"
        )
    return high - low
