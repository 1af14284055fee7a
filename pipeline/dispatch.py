"""Dispatching blocks to Dask workers: a bounded window of plain tasks, bounded retries, and
the ledger updated as each block comes back.

Blocks are submitted one by one as earlier ones finish (never one huge graph), so the
client's memory stays flat for 10⁶-block plans. Tasks carry `resources={"GPU": 1}` through
`Client.submit`, where graph optimisation cannot drop the annotation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from distributed import Client, Future, as_completed

from emsr.errors import EMSRError
from pipeline.block import BlockOutcome, BlockTask, process_block
from pipeline.cluster import gpu_task_resources
from pipeline.errors import BlockFailedError
from pipeline.ledger import DoneLedger
from pipeline.plan import BlockPlan


@dataclass
class RunProgress:
    """Counts after each finished block, for progress bars and artifacts."""

    blocks_done: int
    blocks_total: int
    voxels_written: int
    elapsed_seconds: float


@dataclass
class RunReport:
    blocks_total: int
    blocks_skipped: int
    blocks_computed: int = 0
    voxels_written: int = 0
    lr_pixels_computed: int = 0
    lr_pixels_needed: int = 0
    seconds: float = 0.0
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def redundancy(self) -> float:
        """LR pixels the model processed per LR pixel the written output needed."""
        return self.lr_pixels_computed / self.lr_pixels_needed if self.lr_pixels_needed else 0.0


def _worker_threads(client: Client) -> int:
    return max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))


class Dispatcher:
    """Keeps up to `window` blocks in flight and records each result in the ledger.

    The window is refilled in batches (one `Client.map`, one scheduler update) once half of
    it has drained: submitting block by block costs a scheduler round of its own per block.
    """

    def __init__(
        self,
        client: Client,
        task: BlockTask,
        plan: BlockPlan,
        ledger: DoneLedger,
        *,
        window: int | None = None,
        retries: int = 2,
        submit: Callable[..., BlockOutcome] = process_block,
    ) -> None:
        self.client, self.task, self.plan, self.ledger = client, task, plan, ledger
        self.window = window or max(16, 4 * _worker_threads(client))
        self.retries = retries
        self.function = submit
        self.resources = gpu_task_resources(client)
        self.token = uuid.uuid4().hex[:8]
        self.attempts: dict[int, int] = {}
        self.index_of: dict[str, int] = {}

    def _submit(self, indices: list[int]) -> list[Future]:
        keys = []
        for index in indices:
            attempt = self.attempts.get(index, 0)
            self.attempts[index] = attempt + 1
            keys.append(f"emsr-block-{self.token}-{index}-{attempt}")
        futures = self.client.map(
            self.function,
            [self.task] * len(indices),
            [self.plan.block_box(index) for index in indices],
            [self.plan.chunk_box(index) for index in indices],
            key=keys,
            resources=self.resources,
            pure=False,
        )
        self.index_of.update(zip(keys, indices, strict=True))
        return futures

    def _refill(self, pending: Iterator[int], queue: as_completed) -> None:
        in_flight = len(self.index_of)
        if in_flight <= self.window // 2:
            batch = list(islice(pending, self.window - in_flight))
            if batch:
                queue.update(self._submit(batch))

    def _fail_or_retry(self, index: int, error: BaseException, queue: as_completed) -> str | None:
        """Resubmit a transient failure; return the reason when the block has failed for good."""
        if isinstance(error, EMSRError):  # the input or settings must change, not luck
            return f"failed: {type(error).__name__}: {error}"
        if self.attempts[index] > self.retries:
            return f"failed after {self.attempts[index]} attempts: {type(error).__name__}: {error}"
        queue.update(self._submit([index]))
        return None

    def run(
        self,
        pending: Iterator[int],
        total: int,
        skipped: int,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> RunReport:
        """Compute the `pending` blocks (`skipped` more of `total` were already done)."""
        report = RunReport(blocks_total=total, blocks_skipped=skipped)
        started = time.perf_counter()
        # Results travel with the completion events: a `future.result()` per block would be a
        # synchronous round trip to the worker.
        queue = as_completed(with_results=True, raise_errors=False)
        self._refill(pending, queue)
        try:
            for future, outcome in queue:
                index = self.index_of.pop(future.key)
                if future.status == "error":
                    reason = self._fail_or_retry(index, future.exception(), queue)
                    if reason:
                        report.failures[index] = reason
                        break
                    continue
                if self.plan.is_whole(index):
                    self.ledger.mark_done(index)
                report.blocks_computed += 1
                report.voxels_written += outcome.voxels_written
                report.lr_pixels_computed += outcome.lr_pixels_computed
                report.lr_pixels_needed += outcome.box.in_plane_footprint(self.task.scale).size
                self._refill(pending, queue)
                if on_progress:
                    on_progress(
                        RunProgress(
                            skipped + report.blocks_computed,
                            total,
                            report.voxels_written,
                            time.perf_counter() - started,
                        )
                    )
        finally:
            for future in list(queue.futures):
                future.cancel()
            self.ledger.flush()
        report.seconds = time.perf_counter() - started
        return report


def raise_for_failures(report: RunReport, plan: BlockPlan) -> None:
    if report.failures:
        index, reason = next(iter(report.failures.items()))
        raise BlockFailedError(
            f"block {index} (output box {plan.block_box(index)}) {reason}; "
            "finished blocks are recorded, rerun to continue"
        )
