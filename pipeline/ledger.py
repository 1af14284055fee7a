"""The done ledger: one byte per block, stored with the output, written only by the client.

A block is marked done strictly after its worker returned, and a worker returns only once
its write is durable; so a crash can at worst leave a written block unmarked (it is redone),
never a marked block unwritten. The ledger lives under a path named by the hash of
everything that determines the output's values (input, checkpoint, tile lattice,
normalisation, block grid), so a changed configuration can never reuse another's marks.
Only the client writes it, so workers never race on its chunks.

A block cut by an ROI writes only its chunks that meet the ROI; it is recorded as a part
(block index and written box) in a small JSON record of its own run, next to the ledger.
Each run writes only its own record, so concurrent runs over different ROIs never overwrite
each other's marks; a later run skips a cut block whose needed box one record covers.
Flushing merges with the stored marks, so a concurrent run's marks are kept too.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import tensorstore as ts

from pipeline.geometry import Box
from pipeline.omezarr import ARRAY_PATH
from pipeline.urls import child_kvstore, parse_volume_url

if TYPE_CHECKING:
    from pipeline.plan import PlannedBlock

LEDGER_DIR = "emsr_ledger"
LEDGER_CHUNK = 1 << 16


def ledger_root(output_url: str) -> dict:
    """The kvstore under which an output's ledgers live: inside the output, so that
    `--overwrite` removes them with it. In an OME-Zarr image that is inside its
    full-resolution array, where no Zarr reader looks for members (a folder in the image
    group itself is an unknown object to zarr-python, which warns)."""
    source = parse_volume_url(output_url)
    if source.format == "zarr3":
        return source.child(f"{ARRAY_PATH}/{LEDGER_DIR}")
    return source.child(LEDGER_DIR)


def configuration_hash(configuration: dict) -> str:
    """A stable sha256 of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(configuration, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class DoneLedger:
    """Which blocks (or parts of ROI-cut blocks) of one configuration are durably written."""

    def __init__(
        self, store: ts.TensorStore, parts: ts.KvStore, flush_seconds: float = 2.0
    ) -> None:
        self.store, self.parts_store = store, parts
        self.done = store.read().result()
        self.parts = _read_parts(parts)
        self.flush_seconds = flush_seconds
        self._record = f"{uuid.uuid4().hex}.json"
        self._own_parts: dict[int, list[Box]] = {}
        self._dirty: set[int] = set()
        self._parts_dirty = False
        self._last_flush = time.monotonic()

    @classmethod
    def open(cls, output_url: str, key: str, block_count: int) -> DoneLedger:
        """Open (or create) the ledger of configuration `key` inside the output's location."""
        spec = {
            "driver": "zarr3",
            "kvstore": child_kvstore(ledger_root(output_url), key[:24]),
            "metadata": {
                "shape": [block_count],
                "data_type": "uint8",
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {"chunk_shape": [min(block_count, LEDGER_CHUNK)]},
                },
                "fill_value": 0,
            },
        }
        parts = child_kvstore(ledger_root(output_url), f"{key[:24]}-parts")
        return cls(ts.open(spec, open=True, create=True).result(), ts.KvStore.open(parts).result())

    @property
    def done_count(self) -> int:
        return int(np.count_nonzero(self.done))

    def is_done(self, index: int, part: Box | None = None) -> bool:
        """Whether block `index` is durably written: whole, or, for an ROI-cut block that
        needs only `part`, by a recorded part that covers it."""
        if self.done[index]:
            return True
        return part is not None and any(p.contains(part) for p in self.parts.get(index, ()))

    def pending(self, indices: Iterable[int]) -> Iterator[int]:
        return (i for i in indices if not self.done[i])

    def pending_blocks(self, blocks: Iterable[PlannedBlock]) -> Iterator[PlannedBlock]:
        return (block for block in blocks if not self.is_done(block.index, block.part))

    def mark_done(self, index: int, part: Box | None = None) -> None:
        """Record a durably written block, or only `part` of it; persisted in batches (see
        `flush`)."""
        if part is None:
            self.done[index] = 1
            self._dirty.add(index // LEDGER_CHUNK)
        else:
            self.parts.setdefault(index, []).append(part)
            self._own_parts.setdefault(index, []).append(part)
            self._parts_dirty = True
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every ledger chunk with new marks (merged with the stored ones, so marks of a
        concurrent run stay) and this run's part record; periodically and at the end."""
        size = len(self.done)
        spans = [(c * LEDGER_CHUNK, min(size, (c + 1) * LEDGER_CHUNK)) for c in sorted(self._dirty)]
        for a, b in spans:
            self.done[a:b] |= self.store[a:b].read().result()
        writes = [self.store[a:b].write(self.done[a:b]) for a, b in spans]
        if self._parts_dirty:
            record = [[i, str(box)] for i, boxes in self._own_parts.items() for box in boxes]
            writes.append(self.parts_store.write(self._record, json.dumps(record).encode()))
        for write in writes:
            write.result()
        self._dirty.clear()
        self._parts_dirty = False
        self._last_flush = time.monotonic()


def _read_parts(store: ts.KvStore) -> dict[int, list[Box]]:
    """Every run's recorded parts of ROI-cut blocks: block index → written boxes."""
    parts: dict[int, list[Box]] = {}
    for key in store.list().result():
        for index, box in json.loads(store.read(key).result().value):
            parts.setdefault(index, []).append(Box.parse(box))
    return parts
