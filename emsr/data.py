"""Training pairs: aligned LR/HR volumes and random, augmented patch pairs drawn from them.

The volumes are any array-likes indexed (z, y, x) that `numpy.asarray` can read (numpy arrays,
tensorstore views, zarr arrays), so training reads only the patches it draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emsr.errors import DataError
from emsr.intensity import SUPPORTED_DTYPES, IntensityRange, mapping_record


def numpy_dtype(volume: Any) -> np.dtype:
    """The NumPy dtype of an array-like (tensorstore's dtypes carry it as `numpy_dtype`)."""
    return np.dtype(getattr(volume.dtype, "numpy_dtype", volume.dtype))


def _check_volume(name: str, volume: Any) -> None:
    if len(volume.shape) != 3:
        raise DataError(f"{name} must be a 3-D (z, y, x) volume, got shape {tuple(volume.shape)}")
    if numpy_dtype(volume) not in SUPPORTED_DTYPES:
        raise DataError(f"{name} has dtype {volume.dtype}; use uint8, uint16 or float32")


@dataclass(frozen=True)
class PairedVolumes:
    """An LR volume and the HR volume of the same field, `scale`× larger in y and x."""

    lr: Any
    hr: Any
    scale: int
    lr_range: IntensityRange
    hr_range: IntensityRange

    @classmethod
    def from_arrays(cls, lr: Any, hr: Any, scale: int) -> PairedVolumes:
        """Pair two volumes, normalising each by its dtype's range (floats are taken as [0, 1])."""
        _check_volume("the LR volume", lr)
        _check_volume("the HR volume", hr)
        expected = (lr.shape[0], lr.shape[1] * scale, lr.shape[2] * scale)
        if tuple(hr.shape) != expected:
            raise DataError(
                f"HR shape {tuple(hr.shape)} is not LR shape {tuple(lr.shape)} × (1, {scale}, "
                f"{scale}) = {expected}; check --scale or the pair of volumes"
            )
        ranges = IntensityRange.of_dtype(numpy_dtype(lr)), IntensityRange.of_dtype(numpy_dtype(hr))
        return cls(lr, hr, scale, *ranges)

    def normalization(self) -> dict:
        """The mappings a checkpoint records, so inference maps intensities as training did."""
        return {
            "lr": mapping_record(self.lr_range, numpy_dtype(self.lr)),
            "hr": mapping_record(self.hr_range, numpy_dtype(self.hr)),
        }

    @property
    def sections(self) -> int:
        return int(self.lr.shape[0])

    def split_sections(self, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) section indices; validation is a contiguous tail in z, at
        least one section, so held-out data is never a neighbour of most training sections."""
        if self.sections < 2:
            raise DataError("training needs at least 2 sections (one is held out for validation)")
        held_out = min(self.sections - 1, max(1, round(self.sections * validation_fraction)))
        indices = np.arange(self.sections)
        return indices[:-held_out], indices[-held_out:]

    def read_pair(self, z: int, y: int, x: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """An LR patch at (z, y, x) of `size` px and its HR counterpart, both in [0, 1]."""
        s = self.scale
        lr = np.asarray(self.lr[z, y : y + size, x : x + size])
        hr = np.asarray(self.hr[z, s * y : s * (y + size), s * x : s * (x + size)])
        return self.lr_range.normalize(lr), self.hr_range.normalize(hr)


def augment(lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The same random rot90 and flip applied to both patches (EM has no preferred direction)."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
    if flip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


class PatchSampler:
    """Random aligned patch pairs from the given sections, as (B, 1, p, p) tensors."""

    def __init__(
        self, pairs: PairedVolumes, sections: np.ndarray, patch: int, rng: np.random.Generator
    ) -> None:
        _, height, width = pairs.lr.shape
        if patch > min(height, width):
            raise DataError(
                f"patch size {patch} LR px exceeds the LR section ({height}×{width}); lower --patch"
            )
        self.pairs, self.sections, self.patch, self.rng = pairs, sections, patch, rng

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, height, width = self.pairs.lr.shape
        lr_patches, hr_patches = [], []
        for _ in range(batch_size):
            z = int(self.rng.choice(self.sections))
            y = int(self.rng.integers(height - self.patch + 1))
            x = int(self.rng.integers(width - self.patch + 1))
            lr, hr = augment(*self.pairs.read_pair(z, y, x, self.patch), self.rng)
            lr_patches.append(np.ascontiguousarray(lr))
            hr_patches.append(np.ascontiguousarray(hr))
        return (
            torch.from_numpy(np.stack(lr_patches)[:, None]),
            torch.from_numpy(np.stack(hr_patches)[:, None]),
        )
