"""What happens to a block that fails: bounded retries with back-off, then a record.

Faults of storage, network and workers are retried, each block at most `retries` more
times, waiting longer before each attempt; a block that still fails is recorded with its
box and last error and the run goes on. Bad input or settings (`batches.is_fatal`) stop the
run at once. Memory is O(blocks failing now + blocks failed), never O(blocks).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

from pipeline.errors import BlockFailedError
from pipeline.plan import PlannedBlock

BACKOFF_S = 1.0
"""Wait before a block's first retry; doubled for each further one, up to `MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 30.0
REPORTED_IN_ONE_LINE = 3


@dataclass(frozen=True)
class FailedBlock:
    index: int
    box: str
    attempts: int
    error: str

    def describe(self) -> str:
        tries = f"{self.attempts} attempts"
        return f"block {self.index} (output box {self.box}) after {tries}: {self.error}"


class FailurePolicy:
    """Retries due, their back-off, and the blocks that failed for good."""

    def __init__(self, retries: int, max_failures: int | None = None) -> None:
        self.retries, self.max_failures = retries, max_failures
        self.attempts: dict[int, int] = {}  # failed attempts of blocks not yet settled
        self.failed: dict[int, FailedBlock] = {}
        self._due: list[tuple[float, int, PlannedBlock]] = []
        self._order = itertools.count()

    def failed_attempt(self, block: PlannedBlock, error: str, counts: bool = True) -> None:
        """A block's attempt failed (`counts=False`: it never ran, e.g. behind a hung block)."""
        attempts = self.attempts.get(block.index, 0) + counts
        if attempts > self.retries:
            self.attempts.pop(block.index, None)
            self.failed[block.index] = FailedBlock(block.index, str(block.write), attempts, error)
            return
        self.attempts[block.index] = attempts
        wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** max(0, attempts - 1)) if counts else 0.0
        heapq.heappush(self._due, (time.monotonic() + wait, next(self._order), block))

    def succeeded(self, index: int) -> None:
        self.attempts.pop(index, None)

    def due(self, limit: int) -> list[PlannedBlock]:
        """Up to `limit` blocks whose back-off has passed."""
        ready, clock = [], time.monotonic()
        while self._due and len(ready) < limit and self._due[0][0] <= clock:
            ready.append(heapq.heappop(self._due)[2])
        return ready

    @property
    def waiting(self) -> int:
        """Blocks waiting for their retry."""
        return len(self._due)

    @property
    def too_many(self) -> bool:
        return self.max_failures is not None and len(self.failed) >= self.max_failures


def failure_error(failed: list[FailedBlock], stopped_early: bool) -> BlockFailedError:
    """One line naming the failed blocks (the first few; the report holds them all)."""
    named = "; ".join(block.describe() for block in failed[:REPORTED_IN_ONE_LINE])
    unnamed = len(failed) - REPORTED_IN_ONE_LINE
    more = f"; and {unnamed} more" if unnamed > 0 else ""
    stop = "stopped at --max-failures; " if stopped_early else ""
    count = f"{len(failed)} block{'s' if len(failed) > 1 else ''} failed"
    return BlockFailedError(
        f"{count}: {named}{more}; {stop}finished blocks are recorded, rerun to redo only the "
        "failed and missing ones",
        failed,
    )
