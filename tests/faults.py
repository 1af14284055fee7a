"""Process-level fault injection for the kill tests: pacing, the ledger on disk, process trees.

Kills must land mid-run on any machine, fast or loaded. `PacedBlocks` holds every finished
block on its worker for a moment before the worker reports it, so a run lasts long enough to
be killed halfway, and the kill tends to fall in the window that matters most: the block is
written but not yet recorded. It reaches the `emsr` command's own local cluster through Dask's
worker preload setting (`paced_environment`), so the product code runs unchanged.

`start_runs_in_step` starts runs in several processes at the same instant (races on one
output). Run as a script, this module is a training run that prints each finished step and
can kill itself in the middle of a checkpoint save (see `main` and `crash_at_commit`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import psutil
import tensorstore as ts
from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.ledger import ledger_root

PACE_ENV = "EMSR_TEST_BLOCK_PACE_S"
BLOCK_KEY_PREFIX = "emsr-block-"


class PacedBlocks(WorkerPlugin):
    """Delays each block's report to the scheduler by `seconds` after the block returned."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "memory" and str(key).startswith(BLOCK_KEY_PREFIX):
            time.sleep(self.seconds)


async def dask_setup(worker: Worker) -> None:
    """Dask's preload hook: pace this worker when the environment asks for it."""
    seconds = float(os.environ.get(PACE_ENV, "0"))
    if seconds > 0:
        await worker.plugin_add(PacedBlocks(seconds), name="paced-blocks")


def paced_environment(seconds: float) -> dict[str, str]:
    """Environment that makes every Dask worker started under it pace its blocks."""
    return {"DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([__file__]), PACE_ENV: str(seconds)}


def ledger_marks(output: Path) -> np.ndarray | None:
    """The done bytes of the output's one ledger, as on disk now (None before it exists)."""
    ledgers = sorted(Path(ledger_root(str(output))["path"]).glob("*/zarr.json"))
    if not ledgers:
        return None
    (metadata,) = ledgers
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(metadata.parent)}}
    return ts.open(spec, open=True, read=True).result().read().result()


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants, as they are now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def survivors(processes: Iterable[psutil.Process]) -> list[int]:
    """PIDs of those processes that still run (zombies count as gone)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def start_runs_in_step(barrier: Barrier, requests: list, outcomes: Queue) -> None:
    """Start each run (checks, output, ledger) the moment the other process starts its own;
    put "ok" or the user-facing error line into `outcomes`. Runs in a spawned process."""
    from emsr.errors import EMSRError
    from pipeline.ledger import DoneLedger
    from pipeline.superresolve import prepare

    for request in requests:
        barrier.wait(timeout=60)
        try:
            run = prepare(request)
            DoneLedger.open(request.output_url, run.key, run.plan.block_count)
            outcomes.put("ok")
        except EMSRError as error:
            outcomes.put(str(error))


def crash_at_commit(when: str, commit: int) -> None:
    """SIGKILL this process just before or just after its `commit`-th checkpoint commit: the
    rename that puts a new config.json in place, the point where a save becomes real."""
    from emsr.checkpoint import CONFIG

    real_replace, commits = os.replace, itertools.count(1)

    def replace(source: str | Path, destination: str | Path, **kwargs: object) -> None:
        is_commit = Path(destination).name == CONFIG and next(commits) == commit
        if is_commit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, destination, **kwargs)
        if is_commit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def main() -> None:
    """Train on an LR/HR pair like `emsr train`, with a chosen checkpoint interval, printing
    `step N` after each step so a test can kill the run at a known point; `--crash` makes it
    kill itself in the middle of a checkpoint save instead."""
    parser = argparse.ArgumentParser()
    parser.add_argument("lr")
    parser.add_argument("hr")
    parser.add_argument("out")
    parser.add_argument("--config", required=True, help="TrainConfig fields as JSON")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--crash", choices=("before", "after"), help="die around a commit")
    parser.add_argument("--crash-at-commit", type=int, default=1, help="which commit")
    arguments = parser.parse_args()

    import torch

    from emsr.data import PairedVolumes
    from emsr.training import TrainConfig, train
    from pipeline.volumes import open_volume

    torch.set_num_threads(1)
    config = TrainConfig(**json.loads(arguments.config))
    pairs = PairedVolumes.from_arrays(
        open_volume(arguments.lr).array, open_volume(arguments.hr).array, config.scale
    )
    if arguments.crash:
        crash_at_commit(arguments.crash, arguments.crash_at_commit)
    train(
        pairs,
        config,
        arguments.out,
        resume=arguments.resume,
        on_progress=lambda update: print(f"step {update.step}", flush=True),
    )


if __name__ == "__main__":
    main()
