"""Fleet behaviour of the dispatcher on real Dask clusters: the window follows the workers
alive now, a run left without workers fails after a bounded wait, a hung block is
rescheduled and its worker restarted, and the batch size and timeout follow the blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster
from faults import wait_for
from flaky import FaultyBlocks, SleepyBlocks, attempts, block_name

from emsr.intensity import IntensityRange
from pipeline.batches import MAX_BLOCKS_PER_TASK, BlockTimes
from pipeline.block import BlockTask
from pipeline.dispatch import Dispatcher, RunProgress
from pipeline.errors import ClusterError
from pipeline.failures import FailurePolicy
from pipeline.geometry import Box
from pipeline.ledger import DoneLedger, configuration_hash
from pipeline.plan import BlockPlan
from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.tiles import TileLattice
from pipeline.volumes import open_volume

ALL = (slice(None),) * 3
RUN_TIMEOUT_S = 240
NO_READS = {"scale": 1, "tile": (32, 32), "halo": 0}  # blocks that read nothing


def sleepy_run(tmp_path: Path, blocks: int) -> tuple[BlockPlan, DoneLedger, BlockTask]:
    """A plan of `blocks` one-chunk blocks and a real ledger; the task is never opened."""
    plan = BlockPlan(Box.from_shape((blocks, 32, 32)), (1, 32, 32), (1, 32, 32), **NO_READS)
    output = str(tmp_path / "out.zarr")
    ledger = DoneLedger.open(output, configuration_hash({"test": str(tmp_path)}), blocks)
    task = BlockTask(output, output, "unused", "0" * 64, 1, TileLattice((32, 32), 0),
                     IntensityRange(0.0, 1.0))  # fmt: skip
    return plan, ledger, task


def in_background(function, *args) -> tuple[threading.Thread, dict]:
    """Run `function(*args)` in a thread; its result or error lands in the returned dict."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = function(*args)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_window_follows_workers_scaled_from_one_to_six(tmp_path):
    plan, ledger, task = sleepy_run(tmp_path, 240)
    updates: list[RunProgress] = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        dispatcher = Dispatcher(client, task, plan, ledger, submit=SleepyBlocks(0.25))
        thread, outcome = in_background(
            dispatcher.run, plan.blocks(), plan.block_count, 0, updates.append
        )
        time.sleep(4)
        cluster.scale(6)
        thread.join(RUN_TIMEOUT_S)
    assert "error" not in outcome and outcome["result"].blocks_computed == 240
    one = [u.blocks_in_flight for u in updates if u.slots == 1 and u.workers == 1]
    six = [u.blocks_in_flight for u in updates if u.slots == 6 and u.workers == 6]
    assert one and six, [(u.workers, u.slots) for u in updates]
    assert max(six) >= 4 * max(one), (max(one), max(six))
    assert max(u.utilisation for u in updates if u.slots == 6) == 1.0


def test_run_without_workers_says_so_and_fails_after_a_bounded_wait(tmp_path):
    plan, ledger, task = sleepy_run(tmp_path, 400)
    updates: list[RunProgress] = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        dispatcher = Dispatcher(client, task, plan, ledger, worker_wait=3,
                                submit=SleepyBlocks(0.1))  # fmt: skip
        thread, outcome = in_background(
            dispatcher.run, plan.blocks(), plan.block_count, 0, updates.append
        )
        time.sleep(2)
        cluster.scale(0)
        started = time.monotonic()
        thread.join(60)
        waited = time.monotonic() - started
    assert not thread.is_alive(), "the run hangs without workers"
    error = outcome["error"]
    assert isinstance(error, ClusterError) and "\n" not in str(error)
    assert str(error).startswith("no Dask worker has been alive for")
    assert waited < 30
    assert any("no workers alive; waiting up to 3 s" in u.note for u in updates)
    done = ledger.done_count
    assert 0 < done < 400 and f"({done} of 400 blocks done and recorded)" in str(error)


@pytest.mark.slow
def test_hung_block_is_rescheduled_its_worker_restarted_and_nothing_else_redone(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    options = {"chunk": (1, 32, 32), "block": (1, 32, 32), "tile": 32, "halo": 8,
               "device": "cpu"}  # fmt: skip
    reference = tmp_path / "reference.zarr"
    super_resolve(SuperResolveRequest(lr_url, str(reference), str(checkpoint_dir),
                                      cluster=cluster_address, **options))  # fmt: skip
    job = SuperResolveRequest(lr_url, str(tmp_path / "sr.zarr"), str(checkpoint_dir), **options)
    run = prepare(job)
    hanging = run.plan.planned(40).write
    records = tmp_path / "attempts"
    records.mkdir()
    ledger = DoneLedger.open(job.output_url, run.key, run.plan.block_count)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        dispatcher = Dispatcher(client, run.task, run.plan, ledger, block_timeout=8,
                                submit=FaultyBlocks(str(records), hanging=hanging))  # fmt: skip
        report = dispatcher.run(run.plan.blocks(), run.plan.block_count, 0)
    assert report.failures == {} and report.blocks_computed == run.plan.block_count
    tries = attempts(records)
    assert tries.pop(block_name(hanging)) == 2
    assert set(tries.values()) == {1}, "blocks that finished beside the hung one were redone"
    assert np.array_equal(open_volume(job.output_url).read(ALL),
                          open_volume(str(reference)).read(ALL))  # fmt: skip


def test_batches_grow_until_a_task_lasts_a_second_and_the_timeout_follows_the_median():
    times = BlockTimes(timeout=None, minimum_timeout=5.0)
    assert (times.batch_size(), times.timeout()) == (1, None)
    for _ in range(5):
        times.add(0.1)
    assert (times.batch_size(), times.timeout()) == (10, 5.0)
    for _ in range(20):
        times.add(2.0)
    assert (times.batch_size(), times.timeout()) == (1, 20.0)
    for _ in range(256):
        times.add(0.0)
    assert times.batch_size() == MAX_BLOCKS_PER_TASK
    assert BlockTimes(timeout=7.0, minimum_timeout=60.0).timeout() == 7.0


def test_failure_policy_backs_off_then_records_the_block_with_its_last_error():
    plan = BlockPlan(Box.from_shape((2, 32, 32)), (1, 32, 32), (1, 32, 32), **NO_READS)
    policy = FailurePolicy(retries=1, max_failures=1)
    block = plan.planned(1)
    policy.failed_attempt(block, "OSError: first")
    assert policy.due(10) == [] and policy.waiting == 1  # backing off
    time.sleep(1.1)
    assert policy.due(10) == [block]
    policy.failed_attempt(block, "OSError: second")
    assert policy.waiting == 0 and policy.too_many
    failed = policy.failed[1]
    assert (failed.attempts, failed.error, failed.box) == (2, "OSError: second", "1:2,0:32,0:32")


def start_workers(scheduler_file: Path, count: int) -> list[subprocess.Popen]:
    """`dask worker` commands (each a nanny and its worker), each in its own process group."""
    command = [str(Path(sys.executable).with_name("dask")), "worker", "--scheduler-file",
               str(scheduler_file), "--nthreads", "1", "--no-dashboard"]  # fmt: skip
    return [
        subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(count)
    ]


def kill_groups(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_tcp_cluster_whose_workers_are_killed_and_restarted_finishes_bit_identical(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    options = {"chunk": (1, 32, 32), "block": (1, 64, 64), "tile": 32, "device": "cpu"}
    reference = tmp_path / "reference.zarr"
    super_resolve(SuperResolveRequest(lr_url, str(reference), str(checkpoint_dir),
                                      cluster=cluster_address, **options))  # fmt: skip
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).with_name("dask")), "scheduler", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        wait_for(scheduler_file.exists, 60, "the scheduler's address file")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = start_workers(scheduler_file, 2)
        job = SuperResolveRequest(lr_url, str(tmp_path / "sr.zarr"), str(checkpoint_dir),
                                  cluster=address, worker_wait=300, **options)  # fmt: skip
        updates: list[RunProgress] = []
        thread, outcome = in_background(super_resolve, job, None, updates.append)
        wait_for(lambda: any(u.blocks_done >= 4 for u in updates), RUN_TIMEOUT_S, "4 blocks")
        kill_groups(workers)
        wait_for(lambda: any(u.workers == 0 for u in updates[-3:]), 60, "the workers' loss")
        workers = start_workers(scheduler_file, 2)
        thread.join(RUN_TIMEOUT_S)
        assert "error" not in outcome, outcome
        report = outcome["result"]
        assert report.blocks_computed == report.blocks_total == 36
        assert any(u.workers == 0 for u in updates) and updates[-1].workers == 2
        assert np.array_equal(open_volume(job.output_url).read(ALL),
                              open_volume(str(reference)).read(ALL))  # fmt: skip
    finally:
        kill_groups([*workers, scheduler])
