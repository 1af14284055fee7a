"""Dispatch overhead: no-op blocks through `pipeline.dispatch.Dispatcher` on a LocalCluster with
a real `DoneLedger`: milliseconds per block and the client's peak memory; and the time to plan
and enumerate a 10⁶-block plan.

    python bench/dispatch_scaling.py [--blocks 100000] [--plan-blocks 10000000] [--quick]

Every block runs `noop_block`, so all the time measured is dispatch: pickling and submitting
the task, the scheduler's round trip, the worker's bookkeeping, fetching the result, marking
the ledger. The dispatch runs three times: timed over `--blocks`, with this process's RSS
sampled every 20 ms in a thread; over the first `--memory-blocks` blocks of a plan of
`--plan-blocks` (10⁷) blocks, RSS sampled the same way (the plan and the ledger's marks are
sized by the whole plan); then over `--traced-blocks` under tracemalloc (which slows Python
down, so that run's time is reported apart). `client_rss_peak_mib_by_quarter` shows whether
memory levels off or keeps growing with the blocks dispatched. LocalCluster runs its
scheduler inside this process, so the RSS includes the scheduler's memory (and its bounded
logs: transitions, recent computations): an upper bound on the client's. For scale,
`dask_floor_ms_per_task` is the same no-op sent as one `client.map` and gathered: Dask's own
cost per task on this machine, without any window. `--quick` dispatches 5000
blocks, traces 1000 and enumerates 10⁵.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import numpy as np
import psutil
import torch
from distributed import Client
from model_throughput import cpu_name

from emsr.intensity import IntensityMapping, IntensityRange
from pipeline.block import BlockOutcome, BlockTask
from pipeline.cluster import connect
from pipeline.dispatch import Dispatcher
from pipeline.geometry import Box
from pipeline.ledger import DoneLedger, configuration_hash
from pipeline.plan import BlockPlan, PlannedBlock
from pipeline.tiles import TileLattice

BLOCK, CHUNK = (16, 2048, 2048), (1, 512, 512)
GRID_YX = 10
"""Plans are GRID_YX × GRID_YX blocks in-plane and as many block rows in z as needed."""
MiB = 1 << 20


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def noop_block(task: BlockTask, block: PlannedBlock) -> BlockOutcome:
    """Stands in for `process_block`: returns at once, so only dispatch is measured."""
    return BlockOutcome(block.write, block.write.size, 0, 0.0)


def grid_plan(blocks: int) -> BlockPlan:
    """A plan of at least `blocks` blocks of the default ×2 block shape."""
    sections = -(-blocks // GRID_YX**2)
    volume = (BLOCK[0] * sections, BLOCK[1] * GRID_YX, BLOCK[2] * GRID_YX)
    return BlockPlan(Box.from_shape(volume), BLOCK, CHUNK, scale=2, tile=(512, 512), halo=16)


def stand_in_task(output_url: str) -> BlockTask:
    """A realistic (picklable, same-sized) task; its volumes and checkpoint are never opened."""
    return BlockTask(
        input_url=output_url, output_url=output_url, checkpoint_dir="unused",
        checkpoint_sha256="0" * 64, scale=2, lattice=TileLattice((512, 512), 16),
        intensity=IntensityMapping.symmetric(IntensityRange(0.0, 255.0), np.uint8, "dtype"),
        device="cpu",
    )  # fmt: skip


class RSSSampler:
    """Samples this process's resident memory in a thread, every `interval` seconds, so the
    peak and the growth over the run (bounded, or linear in the blocks?) can be read off."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.samples.append(process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples)

    def quarter_peaks(self) -> list[float]:
        """Peak MiB in each quarter of the run: flat when memory is bounded."""
        quarters = np.array_split(np.asarray(self.samples), 4)
        return [round(int(q.max()) / MiB, 1) for q in quarters if q.size]


def dispatch(
    client: Client, blocks: int, workdir: Path, name: str, plan_blocks: int | None = None
) -> tuple[float, int]:
    """Dispatch the first `blocks` blocks of a plan of `plan_blocks` (default: `blocks`) as
    no-ops with a fresh ledger; the dispatcher's seconds and peak blocks in flight."""
    plan = grid_plan(plan_blocks or blocks)
    output_url = str(workdir / f"{name}.zarr")
    key = configuration_hash({"bench": "dispatch_scaling", "run": name})
    ledger = DoneLedger.open(output_url, key, plan.block_count)
    dispatcher = Dispatcher(client, stand_in_task(output_url), plan, ledger, submit=noop_block)
    report = dispatcher.run(
        islice(ledger.pending_blocks(plan.blocks()), blocks), plan.block_count, 0
    )
    if report.failures or ledger.done_count != blocks:
        raise RuntimeError(f"dispatch lost blocks: {report.failures or ledger.done_count}")
    return report.seconds, dispatcher.peak_in_flight_blocks


def noop_task(index: int) -> int:
    return index


def dask_floor(client: Client, tasks: int) -> float:
    """Seconds per task of one bulk `client.map` of no-ops, gathered: Dask's own cost."""
    started = time.perf_counter()
    client.gather(client.map(noop_task, range(tasks), pure=False))
    return (time.perf_counter() - started) / tasks


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def enumeration(blocks: int, workdir: Path) -> dict:
    """Seconds to build a plan of `blocks` blocks, open its ledger, and walk every block's
    boxes through the ledger's pending filter, as `Dispatcher` does."""
    plan_seconds = timed(lambda: grid_plan(blocks).block_count)
    plan = grid_plan(blocks)
    ledger_seconds = timed(
        lambda: DoneLedger.open(str(workdir / "enumerate.zarr"), "0" * 64, plan.block_count)
    )
    ledger = DoneLedger.open(str(workdir / "enumerate.zarr"), "0" * 64, plan.block_count)

    def walk() -> None:
        for _ in ledger.pending_blocks(plan.blocks()):
            pass

    walk_seconds = timed(walk)
    return {
        "enumerated_blocks": plan.block_count, "plan_seconds": round(plan_seconds, 4),
        "ledger_open_seconds": round(ledger_seconds, 3),
        "enumerate_seconds": round(walk_seconds, 2),
        "enumerate_us_per_block": round(1e6 * walk_seconds / plan.block_count, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--traced-blocks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--plan-blocks", type=int, default=10_000_000,
        help="the memory run dispatches --memory-blocks blocks of a plan this large",
    )  # fmt: skip
    parser.add_argument("--memory-blocks", type=int, default=100_000)
    parser.add_argument("--enumerate", type=int, default=1_000_000, help="blocks to enumerate")
    parser.add_argument("--quick", action="store_true", help="smoke test in < 1 min")
    args = parser.parse_args()
    blocks = 5000 if args.quick else args.blocks
    traced_blocks = min(blocks, 1000 if args.quick else args.traced_blocks)
    enumerated = 100_000 if args.quick else args.enumerate
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        workdir = Path(directory)
        with connect("local", args.workers) as client:
            baseline = psutil.Process().memory_info().rss
            with RSSSampler() as rss:
                seconds, in_flight = dispatch(client, blocks, workdir, "timed")
            memory_blocks = 5000 if args.quick else args.memory_blocks
            with RSSSampler() as big_rss:
                big_seconds, _ = dispatch(client, memory_blocks, workdir, "big", args.plan_blocks)
            tracemalloc.start()
            traced_seconds, _ = dispatch(client, traced_blocks, workdir, "traced")
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            floor = dask_floor(client, min(blocks, 5000))
        row = {
            "bench": "dispatch_scaling", "blocks": blocks, "workers": args.workers,
            "threads_per_worker": 1, "peak_blocks_in_flight": in_flight,
            "seconds": round(seconds, 2), "ms_per_block": round(1e3 * seconds / blocks, 3),
            "blocks_per_second": round(blocks / seconds, 1),
            "big_plan_blocks": args.plan_blocks, "big_plan_dispatched": memory_blocks,
            "big_plan_blocks_per_second": round(memory_blocks / big_seconds, 1),
            "big_plan_client_rss_peak_mib": round(big_rss.peak / MiB, 1),
            "big_plan_client_rss_peak_mib_by_quarter": big_rss.quarter_peaks(),
            "dask_floor_ms_per_task": round(1e3 * floor, 3),
            "client_rss_before_mib": round(baseline / MiB, 1),
            "client_rss_peak_mib": round(rss.peak / MiB, 1),
            "client_rss_growth_mib": round((rss.peak - baseline) / MiB, 1),
            "client_rss_peak_mib_by_quarter": rss.quarter_peaks(),
            "tracemalloc_blocks": traced_blocks,
            "tracemalloc_peak_mib": round(traced_peak / MiB, 1),
            "tracemalloc_run_ms_per_block": round(1e3 * traced_seconds / traced_blocks, 3),
            **enumeration(enumerated, workdir),
            "quick": args.quick, "machine": machine(),
        }  # fmt: skip
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
