"""Several blocks per Dask task, run on the worker: cheap dispatch for short blocks.

A Dask task costs a few milliseconds of scheduling whatever it does; blocks that take less
are sent in batches sized so a task lasts about `TASK_SECONDS`. Each block's result or error
comes back on its own, so one bad block never hides its neighbours. While a batch runs, the
worker keeps what it has finished in `FINISHED`, which the client reads (through
`Client.run`, served by the worker's event loop even when its task thread hangs) when a batch
overruns its timeout: the blocks done before the hang are kept, not computed again.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from emsr.errors import EMSRError
from pipeline.block import BlockOutcome, BlockTask
from pipeline.errors import VolumeError
from pipeline.plan import PlannedBlock

TASK_SECONDS = 1.0
"""Target duration of one task: long enough that scheduling is a small share of it."""
MAX_BLOCKS_PER_TASK = 256
BlockFunction = Callable[[BlockTask, PlannedBlock], BlockOutcome]


@dataclass(frozen=True)
class BlockResult:
    """One block of a batch: its outcome, or the error it raised (as text, always picklable).

    fatal: the error says the input or the settings are wrong (an `EMSRError` other than a
    storage error), so retrying cannot help.
    """

    index: int
    outcome: BlockOutcome | None = None
    error: str | None = None
    fatal: bool = False


FINISHED: dict[str, list[BlockResult]] = {}
"""On a worker: task key → results of the blocks that task has finished so far."""


def is_fatal(error: BaseException) -> bool:
    """Bad input or settings: every `EMSRError` but a `VolumeError`. A volume the client
    opened and checked before dispatch that a worker cannot open, read or write is storage or
    network trouble on that worker, worth a bounded retry."""
    return isinstance(error, EMSRError) and not isinstance(error, VolumeError)


def run_batch(
    function: BlockFunction, task: BlockTask, blocks: list[PlannedBlock], key: str
) -> list[BlockResult]:
    """Run `blocks` one after another on this worker; every block gets a result."""
    results = FINISHED.setdefault(key, [])
    try:
        for block in blocks:
            try:
                results.append(BlockResult(block.index, outcome=function(task, block)))
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                results.append(BlockResult(block.index, error=message, fatal=is_fatal(error)))
        return results
    finally:
        FINISHED.pop(key, None)


def finished_so_far(key: str) -> list[BlockResult]:
    """On a worker (through `Client.run`): what the task `key` has finished until now."""
    return list(FINISHED.get(key, ()))


class BlockTimes:
    """Recent block durations: the batch size that makes a task last `TASK_SECONDS`, and the
    timeout after which a block counts as hung."""

    def __init__(self, timeout: float | None, minimum_timeout: float) -> None:
        self.fixed_timeout, self.minimum_timeout = timeout, minimum_timeout
        self.recent: deque[float] = deque(maxlen=256)

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)

    @property
    def median(self) -> float | None:
        return statistics.median(self.recent) if len(self.recent) >= 5 else None

    def batch_size(self) -> int:
        """Blocks per task: one until a few blocks were measured, then enough for ~1 s."""
        median = self.median
        if median is None:
            return 1
        return max(1, min(MAX_BLOCKS_PER_TASK, math.ceil(TASK_SECONDS / max(median, 1e-6))))

    def timeout(self) -> float | None:
        """Seconds a block may run: as configured, else 10 × the median (at least the
        minimum, which absorbs a new worker's start-up), else none before 5 blocks are done."""
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        median = self.median
        return None if median is None else max(self.minimum_timeout, 10 * median)


def deadline(submitted: float, blocks: int, per_block: float | None) -> float:
    """When a task of `blocks` blocks submitted at `submitted` is overdue (`inf`: never); one
    block's worth of slack covers the wait behind the task ahead of it on its worker."""
    return math.inf if per_block is None else submitted + per_block * (blocks + 1)
