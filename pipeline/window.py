"""How much work to keep in flight: sized from the workers alive now, re-read as they come
and go (SLURM jobs end at their lifetime and new ones join; a `tcp://` cluster's workers
may be restarted by someone else).

A slot is one GPU (workers advertising the `GPU` resource) or else one worker thread. Two
tasks per slot keep every slot busy: one running, one waiting on the worker for its turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from distributed import Client

from pipeline.cluster import GPU_RESOURCE

TASKS_PER_SLOT = 2
REFRESH_S = 1.0


@dataclass(frozen=True)
class Capacity:
    workers: int
    slots: int

    @property
    def tasks(self) -> int:
        """Tasks to keep in flight."""
        return TASKS_PER_SLOT * self.slots


def live_capacity(client: Client) -> Capacity:
    """The workers connected now and their slots (GPUs if any worker has one, else threads)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpus = sum(worker.get("resources", {}).get(GPU_RESOURCE, 0) for worker in workers)
    threads = sum(worker.get("nthreads", 0) for worker in workers)
    return Capacity(len(workers), int(gpus) if gpus else threads)


class Window:
    """The live capacity, re-read at most every `REFRESH_S` seconds (it is a scheduler round
    trip), and how long the cluster has had no worker at all."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.capacity = live_capacity(client)
        self._read_at = time.monotonic()
        self._empty_since: float | None = None
        self.slot_seconds = 0.0  # ∫ slots dt: the denominator of utilisation

    def refresh(self) -> Capacity:
        clock = time.monotonic()
        if clock - self._read_at >= REFRESH_S:
            self.slot_seconds += self.capacity.slots * (clock - self._read_at)
            self.capacity = live_capacity(self.client)
            self._read_at = clock
            if self.capacity.workers:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = clock
        return self.capacity

    def seconds_without_workers(self) -> float:
        return 0.0 if self._empty_since is None else time.monotonic() - self._empty_since

    def close(self) -> None:
        """Count the slot time up to now."""
        self.slot_seconds += self.capacity.slots * (time.monotonic() - self._read_at)
        self._read_at = time.monotonic()
