"""Intensity mappings: stored LR values to the model's [0, 1], the model's output back to
stored HR values, and what counts as no data.

Normalising per block or per section would change results with the block shape and amplify
noise in dim regions; a mapping is therefore fixed once per run and travels with the plan.
By default it is the one the model was trained with, recorded in the checkpoint: the LR
mapping for the input and the HR mapping for the output, so values come back in the units
the model learned to produce.

No data: NaN, ±Inf and finite float values of magnitude ≥ `NO_DATA_MAGNITUDE` (float32's
extremes, ±3.4e38, are a common no-data fill) are never fed to the model as they are; they
enter it as the mapping's low end and their output voxels are written as `FILL_VALUE`.
Other values far outside the mapping are clipped to `MODEL_INPUT_RANGE` after normalising,
so no finite input can overflow the model's arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))

NO_DATA_MAGNITUDE = 1e38
"""Finite float values at least this large in magnitude are no data, like NaN and ±Inf."""

FILL_VALUE = 0
"""What the pipeline stores where there is no data (the fill value of every output)."""

MODEL_INPUT_RANGE = (-1.0, 2.0)
"""Normalised input is clipped to this range: one full mapping width beyond each end keeps
real outliers (a percentile mapping leaves 0.2 % of voxels outside [0, 1]) while bounding
extreme values, which would otherwise turn whole windows of the output into NaN."""


@dataclass(frozen=True)
class IntensityRange:
    """Stored values `low` and `high` map to 0 and 1."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not np.isfinite([self.low, self.high]).all() or self.high <= self.low:
            raise ValueError(
                f"intensity range needs finite low < high, got {self.low}, {self.high}"
            )

    @classmethod
    def of_dtype(cls, dtype: np.dtype) -> IntensityRange:
        """The full range of an integer dtype; [0, 1] for floats."""
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return cls(float(info.min), float(info.max))
        return cls(0.0, 1.0)

    @classmethod
    def from_dict(cls, record: dict) -> IntensityRange:
        return cls(float(record["low"]), float(record["high"]))

    def normalize(self, values: np.ndarray) -> np.ndarray:
        scale = np.float32(1.0 / (self.high - self.low))
        return (values.astype(np.float32) - np.float32(self.low)) * scale

    def denormalize(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Back to stored values of `dtype`; integers are clipped and rounded, never wrapped."""
        dtype = np.dtype(dtype)
        stored = values.astype(np.float32) * np.float32(self.high - self.low) + np.float32(self.low)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(stored), info.min, info.max).astype(dtype)
        return stored.astype(dtype)

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high}


def no_data(values: np.ndarray) -> np.ndarray | None:
    """The mask of no-data voxels of `values`, or None when every voxel holds data."""
    if values.dtype.kind != "f":
        return None
    with np.errstate(invalid="ignore"):
        mask = ~(np.abs(values) < NO_DATA_MAGNITUDE)
    return mask if mask.any() else None


def is_empty(values: np.ndarray) -> bool:
    """True when `values` hold nothing but zeros and no data (an aligned stack's margin)."""
    with np.errstate(invalid="ignore"):
        return not bool(((values != 0) & (np.abs(values) < NO_DATA_MAGNITUDE)).any())


def training_dtype(record: dict) -> np.dtype:
    """The dtype a recorded mapping was made for: stored since the record has `dtype`,
    inferred for older records (a dtype's full range means that dtype, anything else float32)."""
    if "dtype" in record:
        return np.dtype(record["dtype"])
    recorded = IntensityRange.from_dict(record)
    for dtype in SUPPORTED_DTYPES:
        if IntensityRange.of_dtype(dtype) == recorded and dtype.kind != "f":
            return dtype
    return np.dtype("float32")


def mapping_record(mapping: IntensityRange, dtype: np.dtype) -> dict:
    """How a checkpoint records one side's mapping: the range and the dtype it applies to."""
    return {**mapping.to_dict(), "dtype": np.dtype(dtype).name}


@dataclass(frozen=True)
class IntensityMapping:
    """The run's mapping: LR stored values → model input, model output → HR stored values.

    `source` says where it came from: "checkpoint" (the training mapping), or an explicit
    `--normalization` ("dtype", "percentile") that maps both sides with the input's range.
    """

    lr: IntensityRange
    hr: IntensityRange
    input_dtype: str
    output_dtype: str
    source: str

    @classmethod
    def from_checkpoint(cls, normalization: dict) -> IntensityMapping:
        """The training mapping; a record without an HR side (older checkpoints, trained on
        pairs of one dtype) uses its LR side for both. KeyError/ValueError if malformed."""
        lr = normalization["lr"]
        hr = normalization.get("hr", lr)
        return cls(
            IntensityRange.from_dict(lr),
            IntensityRange.from_dict(hr),
            training_dtype(lr).name,
            training_dtype(hr).name,
            "checkpoint",
        )

    @classmethod
    def symmetric(cls, mapping: IntensityRange, dtype: np.dtype, source: str) -> IntensityMapping:
        """One range for both sides; the output keeps the input's dtype."""
        name = np.dtype(dtype).name
        return cls(mapping, mapping, name, name, source)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Model input: normalised, no data at the low end, clipped to `MODEL_INPUT_RANGE`."""
        values = self.lr.normalize(raw)
        mask = no_data(raw)
        if mask is not None:
            values[mask] = 0.0
        return np.clip(values, *MODEL_INPUT_RANGE, out=values)

    def denormalize(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return self.hr.denormalize(values, dtype)

    def to_dict(self) -> dict:
        return {
            "lr": mapping_record(self.lr, self.input_dtype),
            "hr": mapping_record(self.hr, self.output_dtype),
            "source": self.source,
        }
