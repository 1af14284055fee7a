"""Transient and permanent block faults: retried a bounded number of times, never hidden.

Faults are injected into real Dask worker processes (`flaky.FaultyBlocks` stands in for
`process_block` through the Dispatcher's `submit` seam) or made real on disk (a directory
where an output chunk must go). Every output is compared with an undisturbed run's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flaky import FaultyBlocks, attempts, block_name, fault_kind, picked

from emsr.phantom import PhantomSpec, make_phantom
from pipeline.cluster import connect
from pipeline.dispatch import Dispatcher, RunReport, raise_for_failures
from pipeline.errors import BlockFailedError
from pipeline.ledger import DoneLedger
from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.volumes import open_volume, write_array

EMSR = str(Path(sys.executable).with_name("emsr"))
ALL = (slice(None),) * 3
FAULT_RATE = 0.1
SOAK_HR_SHAPE = (6, 256, 224)  # 336 blocks of one (1, 32, 32) chunk each
TINY_BLOCK = (1, 32, 32)
OPTIONS = {"chunk": TINY_BLOCK, "tile": 32, "halo": 8, "device": "cpu", "retries": 2}


def job_for(
    lr: str, output: Path, checkpoint: Path, cluster: str, **options
) -> SuperResolveRequest:
    """A run of tiny blocks, one output chunk each, unless `options` say otherwise."""
    options = {**OPTIONS, "block": TINY_BLOCK, **options}
    return SuperResolveRequest(lr, str(output), str(checkpoint), cluster=cluster, **options)


def dispatch(job: SuperResolveRequest, submit: FaultyBlocks) -> tuple[RunReport, Dispatcher]:
    """`super_resolve`'s own steps, with `submit` in place of `process_block`."""
    run = prepare(job)
    ledger = DoneLedger.open(job.output_url, run.key, run.plan.block_count)
    total = run.plan.block_count
    with connect(job.cluster) as client:
        dispatcher = Dispatcher(client, run.task, run.plan, ledger, retries=job.retries,
                                submit=submit)  # fmt: skip
        report = dispatcher.run(ledger.pending_blocks(run.plan.blocks()), total, ledger.done_count)
    return report, dispatcher


def ledger_of(job: SuperResolveRequest) -> np.ndarray:
    """The done marks as stored (reopened, so only what was flushed counts)."""
    run = prepare(job)
    return DoneLedger.open(job.output_url, run.key, run.plan.block_count).done


@pytest.fixture(scope="module")
def soak_lr(tmp_path_factory) -> str:
    phantom = make_phantom(PhantomSpec(shape=SOAK_HR_SHAPE, scale=2, seed=5))
    path = tmp_path_factory.mktemp("soak") / "lr.zarr"
    write_array(str(path), phantom.lr, phantom.lr_voxel_nm)
    return str(path)


@pytest.fixture(scope="module")
def soak_reference(soak_lr, checkpoint_dir, cluster_address, tmp_path_factory) -> np.ndarray:
    """An undisturbed run in section-sized blocks (the output does not depend on the block)."""
    output = tmp_path_factory.mktemp("reference") / "sr.zarr"
    block = (1, *SOAK_HR_SHAPE[1:])
    super_resolve(job_for(soak_lr, output, checkpoint_dir, cluster_address, block=block))
    return open_volume(str(output)).read(ALL)


def test_blocks_failing_once_are_retried_once_and_the_output_is_exact(
    soak_lr, soak_reference, checkpoint_dir, cluster_address, tmp_path
):
    job = job_for(soak_lr, tmp_path / "sr.zarr", checkpoint_dir, cluster_address)
    records = tmp_path / "attempts"
    records.mkdir()
    report, dispatcher = dispatch(job, FaultyBlocks(str(records), rate=FAULT_RATE))

    plan = dispatcher.plan
    boxes = [plan.planned(i).write for i in range(plan.block_count)]
    injected = [box for box in boxes if picked(box, FAULT_RATE)]
    assert plan.block_count >= 300
    assert 0.05 * len(boxes) <= len(injected) <= 0.15 * len(boxes)
    assert {fault_kind(box) for box in injected} == {"read", "write"}

    assert report.failures == {} and report.blocks_computed == plan.block_count
    assert ledger_of(job).all()
    once_more = {block_name(box) for box in injected}
    assert attempts(records) == {block_name(b): 1 + (block_name(b) in once_more) for b in boxes}
    assert report.retried == len(injected)
    assert np.array_equal(open_volume(job.output_url).read(ALL), soak_reference)


def test_block_failing_every_time_is_recorded_as_failed_and_the_run_goes_on(
    soak_lr, soak_reference, checkpoint_dir, cluster_address, tmp_path
):
    job = job_for(soak_lr, tmp_path / "sr.zarr", checkpoint_dir, cluster_address,
                  block=(1, 64, 64))  # fmt: skip
    plan = prepare(job).plan
    index = next(
        i for i in range(8, plan.block_count) if fault_kind(plan.planned(i).write) == "write"
    )
    box = plan.planned(index).write
    records = tmp_path / "attempts"
    records.mkdir()
    report, _ = dispatch(job, FaultyBlocks(str(records), always_failing=box))

    with pytest.raises(BlockFailedError) as failure:
        raise_for_failures(report)
    message = str(failure.value)
    assert "\n" not in message
    attempted = job.retries + 1
    named = f"1 block failed: block {index} (output box {box}) after {attempted} attempts: OSError"
    assert message.startswith(named)
    assert [(f.index, f.box) for f in failure.value.failed] == [(index, str(box))]
    assert attempts(records)[block_name(box)] == job.retries + 1

    done = ledger_of(job)
    assert not done[index] and done.sum() == report.blocks_computed == plan.block_count - 1
    output = open_volume(job.output_url).read(ALL)
    for i in np.flatnonzero(done):
        block = plan.planned(int(i)).write.slices()
        assert np.array_equal(output[block], soak_reference[block])

    rerun = super_resolve(job)
    assert rerun.blocks_computed == plan.block_count - int(done.sum())
    assert np.array_equal(open_volume(job.output_url).read(ALL), soak_reference)


def test_user_error_in_a_block_is_not_retried(
    phantom, overflowing_checkpoint, cluster_address, tmp_path
):
    """A model that overflows (its output would be NaN), on an input that is blank (so
    skipped) except in block 0's corner: only block 0 fails."""
    huge = overflowing_checkpoint
    corner = np.zeros_like(phantom.lr)
    corner[:2, :8, :8] = phantom.lr[:2, :8, :8]
    lr = tmp_path / "corner.zarr"
    write_array(str(lr), corner, phantom.lr_voxel_nm)
    job = job_for(str(lr), tmp_path / "sr.zarr", huge, cluster_address, block=(2, 64, 64))
    records = tmp_path / "attempts"
    records.mkdir()
    report, _ = dispatch(job, FaultyBlocks(str(records)))

    assert report.fatal.index == 0 and "DataError" in report.fatal.error
    assert report.retried == 0
    assert max(attempts(records).values()) == 1
    with pytest.raises(
        BlockFailedError, match=r"^block 0 \(output box \S+\) failed: DataError: .*NaN"
    ):
        raise_for_failures(report)
    assert not ledger_of(job)[0]


@pytest.mark.parametrize("cluster", ["session", "local"])
def test_command_exits_with_one_line_naming_a_block_that_cannot_be_written(
    cluster, lr_url, checkpoint_dir, cluster_address, prefect_server, tmp_path
):
    """`local` workers share the command's terminal: their logs must not reach it either."""
    cluster_address = cluster_address if cluster == "session" else "local"
    output = tmp_path / "sr.zarr"
    job = job_for(lr_url, output, checkpoint_dir, cluster_address, block=(2, 64, 64))
    plan = prepare(job).plan
    index = 1
    box = plan.planned(index).write
    # A directory where one of the block's chunks must be stored: every write of it fails.
    chunk_key = "/".join(str(b // c) for b, c in zip(box.begin, TINY_BLOCK))
    (output / "0" / "c" / chunk_key / "obstacle").mkdir(parents=True)

    options = ["--chunk", "1,32,32", "--block", "2,64,64", "--tile", "32", "--halo", "8",
               "--device", "cpu", "--cluster", cluster_address]  # fmt: skip
    result = subprocess.run(
        [EMSR, "super-resolve", lr_url, str(output), "--checkpoint", str(checkpoint_dir),
         *options],
        capture_output=True, text=True, env=prefect_server.environment(), timeout=300,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    progress = "super-resolve "  # the progress bar's last frame
    errors = [line for line in result.stderr.splitlines() if not line.startswith(progress)]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert f"block {index} (output box {box})" in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    done = ledger_of(job)
    assert not done[index] and done.sum() > 0
