"""A validated request for a new volume: what to create, independent of the format.

`create_volume` checks its arguments once, here, and each format's module turns the result
into its own metadata documents (see `pipeline.omezarr`, `pipeline.precomputed`). A new
creation option is a new field with a default, checked in `VolumeSpec.checked`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import VolumeError
from pipeline.geometry import Triple

Voxel = tuple[float, float, float]

ALLOWED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


@dataclass(frozen=True)
class VolumeSpec:
    """Shape, dtype, voxel size (nm), storage chunk and optional shard, all in (z, y, x)."""

    shape: Triple
    dtype: np.dtype
    voxel_size_nm: Voxel
    chunk: Triple
    shard: Triple | None

    @classmethod
    def checked(cls, shape, dtype, voxel_size_nm, chunk, shard) -> VolumeSpec:
        dtype = np.dtype(dtype)
        if dtype not in ALLOWED_DTYPES:
            raise VolumeError(f"dtype {dtype} is not supported: use uint8, uint16 or float32")
        for name, values in (
            ("shape", shape),
            ("chunk", chunk),
            ("shard", shard or chunk),
            ("voxel size (nm)", voxel_size_nm),
        ):
            if len(values) != 3 or min(values) <= 0:
                raise VolumeError(f"{name} must be 3 positive (z, y, x) numbers, not {values}")
        if shard and any(s % c for s, c in zip(shard, chunk, strict=True)):
            raise VolumeError(f"shard {tuple(shard)} must be a multiple of chunk {tuple(chunk)}")
        return cls(
            _ints(shape),
            dtype,
            tuple(map(float, voxel_size_nm)),
            _ints(chunk),
            _ints(shard) if shard else None,
        )


def _ints(values) -> Triple:
    return tuple(int(v) for v in values)
