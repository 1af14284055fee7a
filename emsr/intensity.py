"""One intensity mapping per volume: to [0, 1] for the model and back to the stored dtype.

Normalising per block or per section would change results with the block shape and amplify
noise in dim regions; the mapping is therefore fixed once (from the dtype's range or a
percentile pass over the whole volume) and travels with the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


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
    def from_percentiles(
        cls, sample: np.ndarray, lower: float = 0.1, upper: float = 99.9
    ) -> IntensityRange:
        low, high = np.percentile(sample, [lower, upper])
        return cls(float(low), float(high) if high > low else float(low) + 1.0)

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
