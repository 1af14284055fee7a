"""Processes die mid-run: no block is lost, nothing recorded as done is wrong, nothing is left
running, and a rerun finishes the job bit for bit.

Real processes and real SIGKILLs: a Dask worker, a whole `emsr super-resolve` process group,
a training process. Every result is compared with an undisturbed run's.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster
from faults import (
    PacedBlocks,
    ledger_marks,
    paced_environment,
    process_tree,
    start_runs_in_step,
    survivors,
    wait_for,
)

from emsr.checkpoint import read_checkpoint, save_checkpoint
from emsr.data import PairedVolumes
from emsr.network import build_model
from emsr.phantom import PhantomSpec, make_phantom
from emsr.training import HISTORY, TrainConfig, train
from pipeline.geometry import Box
from pipeline.plan import BlockPlan
from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import open_volume, write_array

pytestmark = pytest.mark.slow

EMSR = str(Path(sys.executable).with_name("emsr"))
FAULTS_SCRIPT = str(Path(__file__).with_name("faults.py"))
HR_SHAPE = (2, 256, 256)
BLOCK = (1, 64, 64)
BLOCK_COUNT = 2 * 4 * 4
TILE = 32
PACE_S = 0.1
RUN_TIMEOUT_S = 240
RUN_OPTIONS = ["--block", "1,64,64", "--chunk", "1,64,64", "--tile", str(TILE),
               "--device", "cpu", "--workers", "2"]  # fmt: skip
CLOSING = re.compile(r"\((\d+) blocks computed, (\d+) already done\)")
TRAIN = {"steps": 30, "batch_size": 2, "patch": 16, "learning_rate": 1e-3, "device": "cpu",
         "validate_every": 15, "checkpoint_every": 10}  # fmt: skip
KILL_AT_STEP = 15
RACE_ROUNDS = 8


@dataclass(frozen=True)
class Inputs:
    lr: str
    hr: str
    checkpoint: str


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """A 2 × 128 × 128 LR phantom (32 blocks of 1 × 64 × 64 HR) and a very narrow model, so
    that block time is mostly pipeline, not arithmetic."""
    root = tmp_path_factory.mktemp("faults")
    volumes = make_phantom(PhantomSpec(shape=HR_SHAPE, scale=2, seed=5))
    write_array(str(root / "lr.zarr"), volumes.lr, volumes.lr_voxel_nm)
    write_array(str(root / "hr.zarr"), volumes.hr, volumes.hr_voxel_nm)
    torch.manual_seed(1)
    model = build_model("small", 2, channels=8, heads=2, blocks=1)
    save_checkpoint(root / "model", model, preset="small", step=0,
                    normalization={"lr": {"low": 0.0, "high": 255.0}})  # fmt: skip
    return Inputs(str(root / "lr.zarr"), str(root / "hr.zarr"), str(root / "model"))


def request(inputs: Inputs, output: Path, cluster: str) -> SuperResolveRequest:
    return SuperResolveRequest(
        inputs.lr, str(output), inputs.checkpoint, block=BLOCK, chunk=BLOCK, tile=TILE,
        cluster=cluster, device="cpu",
    )  # fmt: skip


def read_all(output: Path) -> np.ndarray:
    return open_volume(str(output)).read((slice(None),) * 3)


@pytest.fixture(scope="module")
def reference(inputs: Inputs, cluster_address: str, tmp_path_factory) -> np.ndarray:
    """The output of an undisturbed run."""
    output = tmp_path_factory.mktemp("reference") / "sr.zarr"
    super_resolve(request(inputs, output, cluster_address))
    return read_all(output)


@pytest.fixture(scope="module")
def env(prefect_server) -> dict[str, str]:
    """Commands report to the session's Prefect server; their Dask workers pace blocks."""
    return prefect_server.environment(paced_environment(PACE_S))


def super_resolve_command(inputs: Inputs, output: Path, *extra: str) -> list[str]:
    return [EMSR, "super-resolve", inputs.lr, str(output), "--checkpoint", inputs.checkpoint,
            *RUN_OPTIONS, *extra]  # fmt: skip


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A command in its own process group (so the group can be killed whole), output to `log`."""
    with log.open("w") as stream:
        return subprocess.Popen(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )


def closing_counts(log: str) -> tuple[int, int]:
    """(blocks computed, blocks already done) from a run's closing line."""
    match = CLOSING.search(log)
    assert match, log
    return int(match[1]), int(match[2])


def marked_count(output: Path) -> int:
    marks = ledger_marks(output)
    return 0 if marks is None else int(np.count_nonzero(marks))


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def killable_cluster() -> Iterator[tuple[LocalCluster, Client]]:
    """Two paced worker processes of our own, so killing one disturbs no other test."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.register_plugin(PacedBlocks(PACE_S))
        yield cluster, client


@pytest.mark.parametrize(
    "allowed_failures", [3, 0], ids=["dask-reschedules", "dispatcher-resubmits"]
)
def test_a_killed_worker_loses_no_block(
    allowed_failures, killable_cluster, inputs, reference, tmp_path
):
    """With Dask's default a lost block is rerun by the scheduler; with no failures allowed
    it comes back to the dispatcher as KilledWorker, which must submit it again. Either way
    every block lands once, bit-identical. (Task keys now number batches, not attempts, so
    which of the two re-ran it is no longer read off the keys.)"""
    cluster, client = killable_cluster
    cluster.scheduler.allowed_failures = allowed_failures
    cluster.scheduler.transition_log.clear()
    output = tmp_path / "sr.zarr"
    killed: list[tuple[int, list[str]]] = []

    def kill_a_busy_worker(update) -> None:
        if update.blocks_done < 4 or killed:
            return
        address, blocks = max(client.processing().items(), key=lambda item: len(item[1]))
        pid = client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, blocks))

    report = super_resolve(
        request(inputs, output, cluster.scheduler_address), on_progress=kill_a_busy_worker
    )
    (victim, blocks_in_flight), *_ = killed
    assert blocks_in_flight and victim not in client.run(os.getpid).values()
    assert not report.failures
    assert report.blocks_computed == report.blocks_total == BLOCK_COUNT
    assert np.array_equal(read_all(output), reference)
    assert np.all(ledger_marks(output) == 1)


def test_a_killed_run_keeps_only_correct_blocks_and_a_rerun_finishes_it(
    inputs, reference, env, tmp_path
):
    output = tmp_path / "sr.zarr"
    command = super_resolve_command(inputs, output)
    run = start(command, env, tmp_path / "killed.log")
    try:
        wait_for(
            lambda: marked_count(output) >= BLOCK_COUNT // 2 or run.poll() is not None,
            RUN_TIMEOUT_S, "half of the blocks done",
        )  # fmt: skip
        assert run.poll() is None, "the run ended before it could be killed"
        tree = process_tree(run.pid)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert len(tree) >= 3, "expected the command and its two Dask worker processes"
    wait_for(lambda: not survivors(tree), 10, "the end of every process of the killed run")

    marks = ledger_marks(output)
    done = np.flatnonzero(marks)
    assert BLOCK_COUNT // 2 <= len(done) < BLOCK_COUNT
    written = read_all(output)
    plan = BlockPlan(Box.from_shape(HR_SHAPE), BLOCK, BLOCK, scale=1, tile=(1, 1), halo=0)
    wrong = [i for i in done if not np.array_equal(*(a[plan.planned(i).write.slices()]
                                                     for a in (written, reference)))]  # fmt: skip
    assert not wrong, f"blocks {wrong} are marked done but hold other data"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert closing_counts(rerun.stderr) == (BLOCK_COUNT - len(done), len(done))
    assert np.array_equal(read_all(output), reference)
    assert np.all(ledger_marks(output) == 1)


def test_two_runs_on_one_output_agree_and_another_configuration_is_refused(
    inputs, reference, env, tmp_path
):
    output = tmp_path / "sr.zarr"
    command = super_resolve_command(inputs, output)
    runs = [start(command, env, tmp_path / f"run-{n}.log") for n in range(2)]
    try:
        codes = [run.wait(timeout=RUN_TIMEOUT_S) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    logs = [(tmp_path / f"run-{n}.log").read_text() for n in range(2)]
    assert codes == [0, 0], logs
    computed = [closing_counts(log)[0] for log in logs]
    assert min(computed) > 0 and sum(computed) >= BLOCK_COUNT, "the runs did not overlap"
    assert np.array_equal(read_all(output), reference)
    assert np.all(ledger_marks(output) == 1)

    before = file_digests(output)
    other = subprocess.run(super_resolve_command(inputs, output, "--halo", "8"), env=env,
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2, other.stderr
    assert len(lines) == 1 and "another configuration" in lines[0], other.stderr
    assert file_digests(output) == before


def start_in_step(requests: list[list[SuperResolveRequest]]) -> list[list[str]]:
    """Each list of runs in its own process, the n-th runs of all lists at the same instant;
    the outcome of every run, per process."""
    context = multiprocessing.get_context("spawn")
    barrier, queues = context.Barrier(len(requests)), [context.Queue() for _ in requests]
    processes = [
        context.Process(target=start_runs_in_step, args=(barrier, runs, queue))
        for runs, queue in zip(requests, queues, strict=True)
    ]
    for process in processes:
        process.start()
    outcomes = [[queue.get(timeout=120) for _ in runs] for runs, queue in zip(requests, queues)]
    for process in processes:
        process.join(timeout=30)
    return outcomes


@pytest.fixture(scope="module")
def simultaneous_starts(inputs, tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    """Two processes start runs at the same instant on fresh outputs, round after round:
    with the same configuration, then with two configurations (the second with --halo 8)."""
    root = tmp_path_factory.mktemp("simultaneous")
    same = [request(inputs, root / f"same-{n}.zarr", "local") for n in range(RACE_ROUNDS)]
    mixed = [request(inputs, root / f"mixed-{n}.zarr", "local") for n in range(RACE_ROUNDS)]
    first, second = start_in_step([same + mixed, same + [replace(r, halo=8) for r in mixed]])
    pairs = list(zip(first, second, strict=True))
    return {"same": pairs[:RACE_ROUNDS], "mixed": pairs[RACE_ROUNDS:]}


def test_runs_started_at_the_same_instant_on_one_output_all_start(simultaneous_starts):
    assert simultaneous_starts["same"] == [("ok", "ok")] * RACE_ROUNDS


def test_of_two_configurations_started_at_the_same_instant_one_is_refused(simultaneous_starts):
    for outcomes in simultaneous_starts["mixed"]:
        (refused,) = [outcome for outcome in outcomes if outcome != "ok"]
        assert "another configuration" in refused, outcomes


@pytest.fixture(scope="module")
def straight_history(inputs, tmp_path_factory) -> list[dict]:
    """The loss history of a training run that nothing interrupted."""
    pairs = PairedVolumes.from_arrays(open_volume(inputs.lr).array, open_volume(inputs.hr).array, 2)
    return train(pairs, TrainConfig(**TRAIN), tmp_path_factory.mktemp("straight")).history


def train_command(inputs: Inputs, out: Path, *extra: str) -> list[str]:
    """The training loop of `emsr train` in its own process, via tests/faults.py, which prints
    each finished step (so a kill lands at a known step) and can kill itself mid-save."""
    return [sys.executable, FAULTS_SCRIPT, inputs.lr, inputs.hr, str(out),
            "--config", json.dumps(TRAIN), *extra]  # fmt: skip


def kill_training(inputs: Inputs, out: Path, crash: str | None) -> subprocess.Popen:
    """SIGKILL a training run between checkpoints (at step KILL_AT_STEP), or let it kill
    itself just before or just after committing its second checkpoint."""
    extra = ["--crash", crash, "--crash-at-commit", "2"] if crash else []
    run = subprocess.Popen(train_command(inputs, out, *extra), stdout=subprocess.PIPE,
                           text=True, start_new_session=True)  # fmt: skip
    try:
        for line in run.stdout:
            if crash is None and line.strip() == f"step {KILL_AT_STEP}":
                os.killpg(run.pid, signal.SIGKILL)
                break
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    return run


@pytest.mark.parametrize(
    "crash",
    [None, "before", "after"],
    ids=["between-checkpoints", "before-checkpoint-commit", "after-checkpoint-commit"],
)
def test_training_killed_mid_way_resumes_to_the_same_losses(
    crash, inputs, straight_history, tmp_path
):
    out = tmp_path / "killed"
    run = kill_training(inputs, out, crash)
    assert run.returncode == -signal.SIGKILL
    assert 0 < read_checkpoint(out).step < TRAIN["steps"]

    resumed = subprocess.run(train_command(inputs, out, "--resume"), capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(out).step == TRAIN["steps"]
    history = json.loads((out / HISTORY).read_text())
    assert [record["step"] for record in history] == list(range(1, TRAIN["steps"] + 1))
    assert history == straight_history
