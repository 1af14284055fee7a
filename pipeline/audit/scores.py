"""The per-block score store: every audit block's row in a Zarr array, written by the client
only, with a done ledger of units so that a rerun of the same audit skips measured units.

The array is (units, blocks per unit, fields) of float64, NaN where nothing was measured,
chunked by thousands of units, so a 10⁷-block audit is a few thousand objects, not a
10⁷-entry JSON. It lives under `block_scores.zarr/<configuration key>`: another SR,
reference or block size never reuses rows. Rows reach storage before their units are marked
done (see `flush`), so a crash can lose marks, never leave a marked unit without its rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorstore as ts

from pipeline.audit.measure import FIELDS, UnitScores
from pipeline.geometry import Box
from pipeline.ledger import DoneLedger
from pipeline.plan import PlannedBlock

SCORES_DIR = "block_scores.zarr"
UNITS_PER_CHUNK = 4096


class ScoreStore:
    """Stored rows plus the units' done ledger; `Dispatcher` uses it as its ledger."""

    def __init__(self, rows: ts.TensorStore, ledger: DoneLedger, flush_seconds: float = 2.0):
        self.rows, self.ledger, self.flush_seconds = rows, ledger, flush_seconds
        self._rows: dict[int, np.ndarray] = {}
        self._marks: list[int] = []
        self._last_flush = time.monotonic()

    @classmethod
    def open(cls, out_dir: Path, key: str, units: int, blocks_per_unit: int) -> ScoreStore:
        location = Path(out_dir) / SCORES_DIR
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(location / key[:24])},
            "metadata": {
                "shape": [units, blocks_per_unit, len(FIELDS)],
                "data_type": "float64",
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {
                        "chunk_shape": [min(units, UNITS_PER_CHUNK), blocks_per_unit, len(FIELDS)]
                    },
                },
                "fill_value": "NaN",
                "dimension_names": ["unit", "block", "field"],
                "attributes": {"fields": list(FIELDS)},
            },
        }
        rows = ts.open(spec, open=True, create=True).result()
        return cls(rows, DoneLedger.open(str(location), key, units))

    @property
    def path(self) -> Path:
        return Path(self.rows.kvstore.path)

    @property
    def done(self) -> np.ndarray:
        return self.ledger.done

    @property
    def done_count(self) -> int:
        return self.ledger.done_count

    def pending(self, units: Iterable[PlannedBlock]) -> Iterator[PlannedBlock]:
        return (unit for unit in units if not self.ledger.done[unit.index])

    def record(self, index: int, scores: UnitScores) -> None:
        self._rows[index] = scores.rows

    def mark_done(self, index: int, part: Box | None = None) -> None:
        """Mark a unit measured whole (`part` None). A unit the region cuts (`part` its box)
        is not marked: its rows hold that cut's blocks only, so the next audit measures it
        again for its own region."""
        if part is not None:
            return
        self._marks.append(index)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the recorded rows, chunk by chunk, then the marks of their units."""
        by_chunk: dict[int, list[int]] = {}
        for index in self._rows:
            by_chunk.setdefault(index // UNITS_PER_CHUNK, []).append(index)
        for chunk, indices in by_chunk.items():
            begin = chunk * UNITS_PER_CHUNK
            end = min(begin + UNITS_PER_CHUNK, self.rows.shape[0])
            stored = self.rows[begin:end].read().result()
            for index in indices:
                stored[index - begin] = self._rows[index]
            self.rows[begin:end].write(stored).result()
        self._rows.clear()
        for index in self._marks:
            self.ledger.mark_done(index)
        self._marks.clear()
        self.ledger.flush()
        self._last_flush = time.monotonic()

    def blocks(self, region: Box) -> Iterator[np.ndarray]:
        """Stored block rows (n, fields) lying inside `region`, a chunk of units at a time."""
        for begin in range(0, self.rows.shape[0], UNITS_PER_CHUNK):
            end = min(begin + UNITS_PER_CHUNK, self.rows.shape[0])
            stored = self.rows[begin:end].read().result()
            rows = stored.reshape(-1, len(FIELDS))
            rows = rows[np.isfinite(rows[:, 0])]
            inside = np.all(rows[:, :3] >= region.begin, axis=1) & np.all(
                rows[:, 3:6] <= region.end, axis=1
            )
            yield rows[inside]


def read_scores(location: Path) -> dict[str, np.ndarray]:
    """Every block row stored at `location` (`AuditResult.scores_path`), one array per field
    (for tests, notebooks and the validation; the summary streams instead)."""
    rows = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(location)}})
    table = rows.result().read().result().reshape(-1, len(FIELDS))
    table = table[np.isfinite(table[:, 0])]
    return {name: table[:, column] for column, name in enumerate(FIELDS)}
