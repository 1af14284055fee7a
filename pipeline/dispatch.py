"""Dispatching blocks to Dask workers: a window sized from the live cluster, batches of short
blocks, timeouts for hung ones, bounded retries, and the ledger updated as blocks come back.

Blocks are submitted as earlier ones finish (never one huge graph), so the client's memory
is O(blocks in flight + blocks failed) for plans of 10⁷ blocks. Tasks carry
`resources={"GPU": 1}` through `Client.map`, where graph optimisation cannot drop the
annotation. A run never hangs: a block past its timeout is rescheduled and its worker
restarted, and a cluster left without workers for `worker_wait` seconds fails the run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from distributed import Client, Future, as_completed

from pipeline.batches import (
    BlockFunction,
    BlockResult,
    BlockTimes,
    deadline,
    finished_so_far,
    run_batch,
)
from pipeline.block import BlockOutcome, BlockTask, process_block
from pipeline.cluster import gpu_task_resources
from pipeline.errors import BlockFailedError, ClusterError
from pipeline.failures import FailedBlock, FailurePolicy, failure_error
from pipeline.ledger import DoneLedger
from pipeline.plan import BlockPlan, PlannedBlock
from pipeline.window import Window

logger = logging.getLogger(__name__)

WORKER_WAIT_S = 600.0
"""How long a run without any worker waits for one to join (SLURM replacing its jobs)."""
MINIMUM_BLOCK_TIMEOUT_S = 60.0
"""The derived timeout is never shorter: a new worker loads its model during its first block."""
RESTART_TIMEOUT_S = 300.0
PROGRESS_INTERVAL_S = 0.25
WAKE_S = 0.25


@dataclass
class RunProgress:
    """The state of a run, for progress bars and artifacts."""

    blocks_done: int
    blocks_total: int
    blocks_failed: int
    blocks_in_flight: int
    workers: int
    slots: int
    utilisation: float
    voxels_written: int
    elapsed_seconds: float
    eta_seconds: float | None
    note: str = ""


@dataclass
class RunReport:
    blocks_total: int
    blocks_skipped: int
    blocks_computed: int = 0
    voxels_written: int = 0
    lr_pixels_computed: int = 0
    lr_pixels_needed: int = 0
    seconds: float = 0.0
    retried: int = 0
    busy_seconds: float = 0.0
    slot_seconds: float = 0.0
    failures: dict[int, FailedBlock] = field(default_factory=dict)
    fatal: FailedBlock | None = None
    stopped_early: bool = False

    @property
    def redundancy(self) -> float:
        """LR pixels the model processed per LR pixel the written output needed."""
        return self.lr_pixels_computed / self.lr_pixels_needed if self.lr_pixels_needed else 0.0

    @property
    def utilisation(self) -> float:
        """Busy slot time (blocks running) ÷ slot time (slots alive) over the run."""
        return self.busy_seconds / self.slot_seconds if self.slot_seconds else 0.0


@dataclass
class InFlight:
    future: Future
    blocks: list[PlannedBlock]
    submitted: float


class Dispatcher:
    """Keeps the live cluster's slots busy with blocks and records each result in the ledger.

    retries: attempts after a block's first failure (storage, network, worker faults).
    max_failures: stop once this many blocks have failed for good (None: go on to the end).
    block_timeout: seconds a block may run (None: 10 × the median block, at least
        `MINIMUM_BLOCK_TIMEOUT_S`, once 5 blocks are done).
    worker_wait: seconds to wait for a worker when none is left before failing the run.
    submit: the per-block function (`process_block`; the audit, tests and benchmarks pass
        others).
    on_outcome: called with each finished block's index and outcome before the ledger marks
        it done (the audit stores its scores this way).
    """

    def __init__(
        self,
        client: Client,
        task: BlockTask,
        plan: BlockPlan,
        ledger: DoneLedger,
        *,
        retries: int = 2,
        max_failures: int | None = None,
        block_timeout: float | None = None,
        worker_wait: float = WORKER_WAIT_S,
        submit: BlockFunction = process_block,
        on_outcome: Callable[[int, BlockOutcome], None] | None = None,
    ) -> None:
        self.client, self.task, self.plan, self.ledger = client, task, plan, ledger
        self.function = submit
        self.on_outcome = on_outcome
        self.resources = gpu_task_resources(client)
        self.window = Window(client)
        self.times = BlockTimes(block_timeout, MINIMUM_BLOCK_TIMEOUT_S)
        self.failures = FailurePolicy(retries, max_failures)
        self.worker_wait = worker_wait
        self.token = uuid.uuid4().hex[:8]
        self.in_flight: dict[str, InFlight] = {}
        self.peak_in_flight_blocks = 0
        self._tasks = 0
        self._pending_left = True

    # --- submitting ---------------------------------------------------------------------------

    def _next_batch(self, pending: Iterator[PlannedBlock], size: int) -> list[PlannedBlock]:
        batch = self.failures.due(size)
        if len(batch) < size and self._pending_left:
            fresh = list(islice(pending, size - len(batch)))
            self._pending_left = len(fresh) == size - len(batch)
            batch += fresh
        return batch

    def _refill(self, pending: Iterator[PlannedBlock], queue: as_completed) -> None:
        """Top the window up to the live cluster's capacity, in one `Client.map`."""
        free = self.window.refresh().tasks - len(self.in_flight)
        size = self.times.batch_size()
        batches = [b for b in (self._next_batch(pending, size) for _ in range(free)) if b]
        if not batches:
            return
        keys = [f"emsr-block-{self.token}-{self._tasks + i}" for i in range(len(batches))]
        self._tasks += len(batches)
        futures = self.client.map(
            run_batch, [self.function] * len(batches), [self.task] * len(batches), batches, keys,
            key=keys, resources=self.resources, pure=False,
        )  # fmt: skip
        submitted = time.monotonic()
        self.in_flight.update(
            (future.key, InFlight(future, batch, submitted))
            for future, batch in zip(futures, batches, strict=True)
        )
        self.peak_in_flight_blocks = max(self.peak_in_flight_blocks, self.blocks_in_flight)
        queue.update(futures)

    @property
    def blocks_in_flight(self) -> int:
        return sum(len(flight.blocks) for flight in self.in_flight.values())

    # --- results ------------------------------------------------------------------------------

    def _settle(self, future: Future, result: object, report: RunReport) -> None:
        flight = self.in_flight.pop(future.key, None)
        if flight is None:  # timed out and rescheduled already
            return
        if future.status == "error":
            error = result[1] if isinstance(result, tuple) else future.exception()
            text = f"{type(error).__name__}: {error}"
            for block in flight.blocks:
                self._failed_attempt(block, text, report)
            return
        self._record(flight.blocks, result, report)  # type: ignore[arg-type]

    def _record(
        self, blocks: list[PlannedBlock], results: list[BlockResult], report: RunReport
    ) -> None:
        by_index = {block.index: block for block in blocks}
        for result in results:
            block = by_index[result.index]
            if result.outcome is not None:
                if self.on_outcome:
                    self.on_outcome(block.index, result.outcome)
                self.ledger.mark_done(block.index, block.part)
                self.failures.succeeded(block.index)
                self.times.add(result.outcome.seconds)
                report.blocks_computed += 1
                report.voxels_written += result.outcome.voxels_written
                report.lr_pixels_computed += result.outcome.lr_pixels_computed
                report.lr_pixels_needed += block.write.in_plane_footprint(self.task.scale).size
                report.busy_seconds += result.outcome.seconds
            elif result.fatal:
                report.fatal = FailedBlock(block.index, str(block.write), 1, result.error or "")
            else:
                self._failed_attempt(block, result.error or "", report)

    def _failed_attempt(
        self, block: PlannedBlock, error: str, report: RunReport, counts: bool = True
    ) -> None:
        self.failures.failed_attempt(block, error, counts)
        if counts and block.index not in self.failures.failed:
            report.retried += 1

    # --- hung blocks and lost workers ---------------------------------------------------------

    def _check_timeouts(self, report: RunReport) -> None:
        per_block = self.times.timeout()
        clock = time.monotonic()
        overdue = [
            key
            for key, flight in self.in_flight.items()
            if clock > deadline(flight.submitted, len(flight.blocks), per_block)
        ]
        if not overdue:
            return
        running = {key: worker for worker, keys in self.client.processing().items() for key in keys}
        for key in overdue:
            if key not in running:  # waiting for a worker, not hung
                self.in_flight[key].submitted = clock
                continue
            self._reschedule_hung(key, running[key], per_block, report)

    def _reschedule_hung(
        self, key: str, worker: str, per_block: float | None, report: RunReport
    ) -> None:
        """Keep what the hung task finished, retry the block it hangs in, restart its worker."""
        flight = self.in_flight.pop(key)
        flight.future.cancel()
        try:
            finished = self.client.run(finished_so_far, key, workers=[worker], on_error="return")
        except (OSError, TimeoutError):
            finished = {}
        results = finished.get(worker, [])
        done = results if isinstance(results, list) else []
        self._record(flight.blocks, done, report)
        settled = {result.index for result in done}
        left = [block for block in flight.blocks if block.index not in settled]
        timeout = f"TimeoutError: no result within {per_block:g} s per block on {worker}"
        for position, block in enumerate(left):
            self._failed_attempt(block, timeout, report, counts=position == 0)
        logger.warning("block %s hung on %s: rescheduled", left[0].index if left else "?", worker)
        threading.Thread(target=self._restart, args=(worker,), daemon=True).start()

    def _restart(self, worker: str) -> None:
        """Restart the worker whose task hung, through its nanny (a worker without one keeps
        its stuck thread; its other slots go on working)."""
        try:
            self.client.restart_workers([worker], timeout=RESTART_TIMEOUT_S)
        except Exception as error:  # a worker without nanny, or one already gone
            logger.warning("could not restart hung worker %s: %s", worker, error)

    def _check_workers(self, report: RunReport) -> None:
        waited = self.window.seconds_without_workers()
        if waited > self.worker_wait:
            done = report.blocks_skipped + report.blocks_computed
            raise ClusterError(
                f"no Dask worker has been alive for {waited:.0f} s ({done} of "
                f"{report.blocks_total} blocks done and recorded); start workers or check the "
                "SLURM queue, then rerun to continue"
            )

    # --- the loop -----------------------------------------------------------------------------

    def _wait(self, queue: as_completed) -> list:
        with queue.thread_condition:
            if not queue.has_ready():
                queue.thread_condition.wait(WAKE_S)
        return queue.next_batch(block=False)

    def progress(self, report: RunReport, started: float, final: bool = False) -> RunProgress:
        """Where the run stands; utilisation is the share of slots busy now (of the whole
        run once `final`)."""
        capacity = self.window.capacity
        done = report.blocks_skipped + report.blocks_computed
        elapsed = time.perf_counter() - started
        left = report.blocks_total - done - len(report.failures)
        rate = report.blocks_computed / elapsed if elapsed else 0.0
        busy = min(len(self.in_flight), capacity.slots) / capacity.slots if capacity.slots else 0.0
        note = "" if capacity.workers else (
            f"no workers alive; waiting up to {self.worker_wait:g} s for new ones"
        )  # fmt: skip
        return RunProgress(
            done, report.blocks_total, len(self.failures.failed), self.blocks_in_flight,
            capacity.workers, capacity.slots, report.utilisation if final else busy,
            report.voxels_written, elapsed, left / rate if rate else None, note,
        )  # fmt: skip

    def run(
        self,
        pending: Iterator[PlannedBlock],
        total: int,
        skipped: int,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> RunReport:
        """Compute the `pending` blocks (`skipped` more of `total` were already done)."""
        report = RunReport(blocks_total=total, blocks_skipped=skipped)
        started = time.perf_counter()
        last_progress = 0.0
        # Results travel with the completion events: a `future.result()` per task would be a
        # synchronous round trip to the worker.
        queue = as_completed(with_results=True, raise_errors=False)
        try:
            while True:
                self._refill(pending, queue)
                if not (self.in_flight or self.failures.waiting or self._pending_left):
                    break
                for future, result in self._wait(queue):
                    self._settle(future, result, report)
                report.failures = self.failures.failed
                if report.fatal or self.failures.too_many:
                    report.stopped_early = not report.fatal
                    break
                self._check_timeouts(report)
                self._check_workers(report)
                if on_progress and time.perf_counter() - last_progress >= PROGRESS_INTERVAL_S:
                    on_progress(self.progress(report, started))
                    last_progress = time.perf_counter()
        finally:
            self.client.cancel([flight.future for flight in self.in_flight.values()])
            self.ledger.flush()
            self.window.close()
        report.failures = self.failures.failed
        report.slot_seconds = self.window.slot_seconds
        report.seconds = time.perf_counter() - started
        if on_progress:
            on_progress(self.progress(report, started, final=True))
        return report


def raise_for_failures(report: RunReport) -> None:
    """A fatal block error, or the blocks that failed for good, as one line."""
    if report.fatal:
        fatal = report.fatal
        raise BlockFailedError(
            f"block {fatal.index} (output box {fatal.box}) failed: {fatal.error}; fix the "
            "input or settings, then rerun (finished blocks are recorded)",
            [fatal],
        )
    if report.failures:
        raise failure_error(list(report.failures.values()), report.stopped_early)
