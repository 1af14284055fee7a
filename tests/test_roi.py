"""Runs over an ROI: only the chunks that meet it are written (whole, never read-modify-
written), they are recorded as done, and concurrent runs over disjoint ROIs both land."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.geometry import Box
from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.volumes import open_volume

ALL = (slice(None),) * 3
OPTIONS = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu"}
# Disjoint ROIs that cut the same blocks and even meet the same chunks (y 32:64, x 64:96).
ROI_A = Box((0, 10, 20), (4, 50, 90))
ROI_B = Box((0, 50, 20), (4, 120, 90))


def request(lr_url: str, output: Path, checkpoint: Path, cluster: str, roi: Box | None):
    return SuperResolveRequest(
        lr_url, str(output), str(checkpoint), cluster=cluster, roi=roi, **OPTIONS
    )


@pytest.fixture(scope="module")
def full_run(lr_url, checkpoint_dir, cluster_address, tmp_path_factory) -> np.ndarray:
    output = tmp_path_factory.mktemp("full") / "sr.zarr"
    super_resolve(request(lr_url, output, checkpoint_dir, cluster_address, None))
    return open_volume(str(output)).read(ALL)


def chunks_met(roi: Box, shape: tuple[int, int, int]) -> np.ndarray:
    inside = np.zeros(shape, bool)
    inside[roi.snap_out(OPTIONS["chunk"]).slices()] = True
    return inside


def test_roi_writes_whole_chunks_it_meets_and_nothing_else(
    lr_url, checkpoint_dir, cluster_address, full_run, tmp_path
):
    job = request(lr_url, tmp_path / "roi.zarr", checkpoint_dir, cluster_address, ROI_A)
    report = super_resolve(job)
    part = open_volume(job.output_url).read(ALL)
    inside = chunks_met(ROI_A, part.shape)
    assert np.array_equal(part[inside], full_run[inside])
    assert not part[~inside].any()
    assert report.blocks_computed == report.blocks_total > 0


def test_roi_cut_blocks_are_recorded_so_a_rerun_computes_nothing(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    job = request(lr_url, tmp_path / "roi.zarr", checkpoint_dir, cluster_address, ROI_A)
    first = super_resolve(job)
    assert not all(block.whole for block in prepare(job).plan.blocks())
    rerun = super_resolve(job)
    assert (rerun.blocks_skipped, rerun.blocks_computed) == (first.blocks_total, 0)
    inner = Box((1, 20, 30), (3, 40, 60))  # inside ROI_A: covered by the recorded parts
    assert super_resolve(replace(job, roi=inner)).blocks_computed == 0


def run_in_process(job: SuperResolveRequest, start: multiprocessing.Barrier) -> None:
    start.wait(timeout=120)
    super_resolve(job)


def test_concurrent_runs_over_disjoint_rois_keep_both_regions_and_both_marks(
    lr_url, checkpoint_dir, cluster_address, full_run, tmp_path
):
    output = tmp_path / "sr.zarr"
    jobs = [request(lr_url, output, checkpoint_dir, cluster_address, roi) for roi in (ROI_A, ROI_B)]
    prepare(jobs[0])  # create the output once; both runs then find it
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    runs = [context.Process(target=run_in_process, args=(job, start)) for job in jobs]
    for process in runs:
        process.start()
    for process in runs:
        process.join(timeout=300)
    assert [process.exitcode for process in runs] == [0, 0]

    written = open_volume(str(output)).read(ALL)
    inside = chunks_met(ROI_A, written.shape) | chunks_met(ROI_B, written.shape)
    assert np.array_equal(written[inside], full_run[inside])
    assert not written[~inside].any()
    for job in jobs:
        assert super_resolve(job).blocks_computed == 0
