"""Progress of long work, shown twice: a rich bar on the terminal and a Prefect progress
artifact in the UI (updated at most every few seconds, so the API is not flooded)."""

from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

if TYPE_CHECKING:
    from pipeline.dispatch import RunProgress

ARTIFACT_INTERVAL_S = 3.0


def console() -> Console:
    """Progress and messages go to stderr, so stdout carries only results."""
    return Console(stderr=True)


def _in_prefect_run() -> bool:
    try:
        get_run_context()
    except Exception:
        return False
    return True


class ProgressReport:
    """A context manager for one long task: `start(total, done)`, then `advance_to(done, ...)`."""

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit = description, unit
        self.bar = Progress(
            # The name never gives way to the operator's figures on a narrow terminal.
            TextColumn(
                "[bold]{task.description}",
                table_column=Column(no_wrap=True, min_width=len(description)),
            ),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console(),
            transient=False,
        )
        self.task = self.bar.add_task(description, total=None, rate="")
        self.artifact_id = None
        self.last_artifact = 0.0

    def __enter__(self) -> ProgressReport:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.bar.stop()

    def start(self, total: int, done: int = 0) -> None:
        """Show the bar once the amount of work is known (nothing is shown for early errors)."""
        self.bar.start()
        self.bar.update(self.task, total=total, completed=done)
        if _in_prefect_run():
            percent = 100.0 * done / total if total else 100.0
            self.artifact_id = create_progress_artifact(
                progress=percent, description=f"{self.description} ({self.unit})"
            )

    def advance_to(self, done: int, rate: str = "") -> None:
        """Move the bar to `done`; `rate` is the status text shown beside it (and, in the
        artifact's description, what a cluster operator reads in the Prefect UI)."""
        self.bar.update(self.task, completed=done, rate=rate)
        total = self.bar.tasks[0].total or 0
        now = time.monotonic()
        if self.artifact_id and (now - self.last_artifact >= ARTIFACT_INTERVAL_S or done >= total):
            update_progress_artifact(
                self.artifact_id,
                progress=100.0 * done / max(total, 1),
                description=f"{self.description} ({self.unit}) {rate}".rstrip(),
            )
            self.last_artifact = now


def run_status(update: RunProgress) -> str:
    """A block run's state in one line: failures, work in flight, workers, busy slots, ETA."""
    eta = (
        ""
        if update.eta_seconds is None
        else f" · ETA {timedelta(seconds=round(update.eta_seconds))}"
    )
    rate = update.voxels_written / max(update.elapsed_seconds, 1e-9) / 1e6
    note = f" · {update.note}" if update.note else ""
    return (
        f"failed {update.blocks_failed} · in flight {update.blocks_in_flight} · "
        f"workers {update.workers} ({update.slots} slots, {update.utilisation:.0%} busy) · "
        f"{rate:.2f} Mvox/s{eta}{note}"
    )
