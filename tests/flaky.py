"""Fault injection for block tasks, used by the reliability tests.

`FaultyBlocks` has `process_block`'s signature, so `Dispatcher(..., submit=FaultyBlocks(...))`
runs it on real Dask worker processes. To reach the workers of an `emsr` command (SLURM jobs
included), `faulty_environment` makes this module a worker preload that puts a `FaultyBlocks`
in place of `pipeline.block.process_block`: tasks name that function by reference, so the
workers run the faulty one while the product code is unchanged. Nothing is shared in memory
between those processes:
every attempt of a block appends one byte to a file named after the block, so a block's
first attempt is recognised on any worker and the test can count every attempt afterwards.

Which blocks fail, and how, follows from a hash of the block's box, so a run is repeatable.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.block import BlockOutcome, BlockTask, process_block
from pipeline.geometry import Box
from pipeline.plan import PlannedBlock
from pipeline.volumes import open_volume

HANG_S = 3600.0


def block_name(box: Box) -> str:
    """A file name for the block writing `box`."""
    return "block-" + "-".join(map(str, (*box.begin, *box.end)))


def _digest(box: Box) -> bytes:
    return hashlib.sha256(block_name(box).encode()).digest()


def picked(box: Box, rate: float) -> bool:
    """Whether the block writing `box` is one of the `rate` fraction that fail once."""
    return int.from_bytes(_digest(box)[:4], "big") < rate * 2**32


def fault_kind(box: Box) -> str:
    """'read' (fail before touching anything) or 'write' (garbage in a chunk, then fail)."""
    return "read" if _digest(box)[4] % 2 == 0 else "write"


def record_attempt(record_dir: str, box: Box) -> int:
    """Count this attempt of the block; returns how many attempts came before it."""
    with open(Path(record_dir) / block_name(box), "ab") as record:
        earlier = record.tell()
        record.write(b".")
    return earlier


def attempts(record_dir: str | Path) -> dict[str, int]:
    """Attempts per block name, as recorded by every worker."""
    return {path.name: path.stat().st_size for path in Path(record_dir).glob("block-*")}


def writes(record_dir: str | Path) -> dict[str, int]:
    """Completed writes per block name (attempts that returned)."""
    found = Path(record_dir).glob("written-block-*")
    return {path.name.removeprefix("written-"): path.stat().st_size for path in found}


def write_garbage_into_first_chunk(task: BlockTask, write: Box) -> Box:
    """Overwrite the block's first output chunk with noise, as a write cut short would."""
    target = open_volume(task.output_url)
    first = Box.from_shape(target.info.chunk, write.begin).intersect(write)
    rng = np.random.default_rng(list(_digest(write)[:8]))
    limit = np.iinfo(target.info.dtype).max if target.info.dtype.kind == "u" else 1.0
    garbage = (rng.random(first.shape) * limit).astype(target.info.dtype)
    target.write(first.slices(), garbage)
    return first


@dataclass(frozen=True)
class FaultyBlocks:
    """`process_block` with injected `OSError`s and a hang.

    record_dir: a directory shared by all workers, for the attempt records.
    rate: fraction of blocks whose first attempt fails (and whose retry then succeeds).
    always_failing: the output box of a block that fails on every attempt.
    hanging: the output box of a block whose first attempt hangs (a wedged read or GPU).
    pace_seconds: a pause before every block, so a run lasts long enough to be disturbed.
    """

    record_dir: str
    rate: float = 0.0
    always_failing: Box | None = None
    hanging: Box | None = None
    pace_seconds: float = 0.0

    def __call__(self, task: BlockTask, block: PlannedBlock) -> BlockOutcome:
        box = block.write
        earlier = record_attempt(self.record_dir, box)
        time.sleep(self.pace_seconds)
        if box == self.hanging and earlier == 0:
            time.sleep(HANG_S)
        if box == self.always_failing or (earlier == 0 and picked(box, self.rate)):
            if fault_kind(box) == "read":
                raise OSError(f"injected read error in block {box}")
            chunk = write_garbage_into_first_chunk(task, box)
            raise OSError(f"injected write error after a partial write of {chunk}")
        outcome = process_block(task, block)
        with open(Path(self.record_dir) / f"written-{block_name(box)}", "ab") as record:
            record.write(b".")
        return outcome


@dataclass(frozen=True)
class SleepyBlocks:
    """A block that only takes `seconds` (no I/O): for tests of the window and of workers
    that come and go, where what is measured is scheduling, not data."""

    seconds: float

    def __call__(self, task: BlockTask, block: PlannedBlock) -> BlockOutcome:
        time.sleep(self.seconds)
        return BlockOutcome(block.write, block.write.size, 0, self.seconds)


FAULTS_ENV = "EMSR_TEST_FAULTS"


def faulty_environment(faults: FaultyBlocks) -> dict[str, str]:
    """Environment that makes every Dask worker started under it run `faults`."""
    fields = {
        "record_dir": faults.record_dir, "rate": faults.rate,
        "pace_seconds": faults.pace_seconds,
        "always_failing": str(faults.always_failing) if faults.always_failing else None,
        "hanging": str(faults.hanging) if faults.hanging else None,
    }  # fmt: skip
    return {"DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([__file__]),
            FAULTS_ENV: json.dumps(fields)}  # fmt: skip


def dask_setup(worker: object) -> None:
    """Dask's preload hook: replace `process_block` on this worker when the environment asks."""
    fields = json.loads(os.environ.get(FAULTS_ENV) or "null")
    if fields:
        import pipeline.block

        boxes = {name: Box.parse(fields[name]) if fields[name] else None
                 for name in ("always_failing", "hanging")}  # fmt: skip
        pipeline.block.process_block = FaultyBlocks(**{**fields, **boxes})
