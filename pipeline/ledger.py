"""The done ledger: one byte per block, stored with the output, written only by the client.

A block is marked done strictly after its worker returned, and a worker returns only once
its write is durable; so a crash can at worst leave a written block unmarked (it is redone),
never a marked block unwritten. The ledger lives under a path named by the hash of
everything that determines the output's values (input, checkpoint, tile lattice,
normalisation, block grid), so a changed configuration can never reuse another's marks.
Only the client writes it, so workers never race on its chunks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator

import numpy as np
import tensorstore as ts

from pipeline.omezarr import ARRAY_PATH
from pipeline.urls import child_kvstore, parse_volume_url

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
    """Which blocks of one configuration are durably written."""

    def __init__(self, store: ts.TensorStore, flush_seconds: float = 2.0) -> None:
        self.store = store
        self.done = store.read().result()
        self.flush_seconds = flush_seconds
        self._dirty: set[int] = set()
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
        return cls(ts.open(spec, open=True, create=True).result())

    @property
    def done_count(self) -> int:
        return int(np.count_nonzero(self.done))

    def is_done(self, index: int) -> bool:
        return bool(self.done[index])

    def pending(self, indices: Iterable[int]) -> Iterator[int]:
        return (i for i in indices if not self.done[i])

    def mark_done(self, index: int) -> None:
        """Record a durably written block; persisted in batches (see `flush`)."""
        self.done[index] = 1
        self._dirty.add(index // LEDGER_CHUNK)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every ledger chunk with new marks; called periodically and at the end."""
        size = len(self.done)
        spans = [(c * LEDGER_CHUNK, min(size, (c + 1) * LEDGER_CHUNK)) for c in sorted(self._dirty)]
        writes = [self.store[a:b].write(self.done[a:b]) for a, b in spans]
        for write in writes:
            write.result()
        self._dirty.clear()
        self._last_flush = time.monotonic()
