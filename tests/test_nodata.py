"""No data and extreme values: NaN, ±Inf and float32's extremes become fill, far outliers are
clipped, tiles that see nothing are skipped, and nothing non-finite is ever stored."""

from __future__ import annotations

import numpy as np
import pytest

from emsr.intensity import FILL_VALUE
from pipeline.errors import BlockFailedError
from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import open_volume, write_array

ALL = (slice(None),) * 3
SMALL = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu"}


def run(lr_url, output, checkpoint, cluster, **options) -> np.ndarray:
    options = {**SMALL, **options}
    super_resolve(SuperResolveRequest(str(lr_url), str(output), str(checkpoint),
                                      cluster=cluster, **options))  # fmt: skip
    return open_volume(str(output)).read(ALL)


def upscaled(mask: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(mask, scale, axis=1), scale, axis=2)


NO_DATA = {(1, 10, 10): np.nan, (1, 40, 60): np.inf, (3, 5, 70): -np.inf,
           (2, 30, 30): -3.4028235e38, (4, 50, 15): 3e38}  # fmt: skip
OUTLIERS = {(0, 20, 20): 1e30, (5, 60, 40): -1e30}
"""Finite but far outside the mapping: fed to the model clipped to (-1, 2)."""


def test_no_data_becomes_fill_and_leaves_every_other_voxel_as_if_it_were_dark(
    phantom, checkpoint_dir, cluster_address, tmp_path
):
    """Until now one NaN stopped the run, and -3.4e38 or 3e38 turned most of a section's
    output into NaN. The pipeline feeds no data to the model as the mapping's low end (0)
    and stores fill under it; so the output equals a run on the input with 0 there."""
    clean = phantom.lr.astype(np.float32) / 255
    bad, reference = clean.copy(), clean.copy()
    for voxel, value in NO_DATA.items():
        bad[voxel], reference[voxel] = value, 0.0
    for voxel, value in OUTLIERS.items():
        bad[voxel], reference[voxel] = value, np.clip(value, -1.0, 2.0)
    write_array(str(tmp_path / "bad.zarr"), bad, phantom.lr_voxel_nm)
    write_array(str(tmp_path / "ref.zarr"), reference, phantom.lr_voxel_nm)

    output = run(tmp_path / "bad.zarr", tmp_path / "a.zarr", checkpoint_dir, cluster_address,
                 normalization="dtype")  # fmt: skip
    expected = run(tmp_path / "ref.zarr", tmp_path / "b.zarr", checkpoint_dir, cluster_address,
                   normalization="dtype")  # fmt: skip

    assert np.isfinite(output).all()
    fill = upscaled(~(np.abs(bad) < 1e38))
    assert fill.sum() == 4 * len(NO_DATA)
    assert (output[fill] == FILL_VALUE).all()
    assert np.array_equal(output[~fill], expected[~fill])


def test_tiles_that_see_only_zeros_are_skipped_as_fill_unless_asked(
    phantom, checkpoint_dir, cluster_address, tmp_path
):
    """An aligned stack's zero margin (the LR's first 64 columns): the tiles that see only
    the margin, halo included (LR columns 0-31 with 32-px tiles and a 16-px halo), are not
    computed (the model would write its response to zeros there), the rest is unchanged,
    and the output still does not depend on the block shape."""
    margin = phantom.lr.copy()
    margin[:, :, :64] = 0
    source = tmp_path / "margin.zarr"
    write_array(str(source), margin, phantom.lr_voxel_nm)

    skipped = run(source, tmp_path / "a.zarr", checkpoint_dir, cluster_address)
    other_blocks = run(source, tmp_path / "b.zarr", checkpoint_dir, cluster_address,
                       block=(4, 96, 128))  # fmt: skip
    computed = run(source, tmp_path / "c.zarr", checkpoint_dir, cluster_address,
                   compute_empty=True)  # fmt: skip

    assert (skipped[:, :, :64] == FILL_VALUE).all()
    assert computed[:, :, :64].any()
    assert np.array_equal(skipped[:, :, 64:], computed[:, :, 64:])
    assert np.array_equal(skipped, other_blocks)


def test_a_model_that_overflows_stores_nothing_and_says_so(
    lr_url, overflowing_checkpoint, cluster_address, tmp_path
):
    with pytest.raises(BlockFailedError, match=r"produced NaN or Inf .* --precision fp32"):
        run(lr_url, tmp_path / "sr.zarr", overflowing_checkpoint, cluster_address, retries=0)
    assert not open_volume(str(tmp_path / "sr.zarr")).read(ALL).any()
