"""A validated request for a new volume: what to create, independent of the format.

`create_volume` checks its arguments once, here, and each format's module turns the result
into its own metadata documents (see `pipeline.omezarr`, `pipeline.precomputed`). A new
creation option is a new field with a default, checked in `VolumeSpec.checked`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import VolumeError
from pipeline.geometry import Triple
from pipeline.world import Voxel

ALLOWED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


@dataclass(frozen=True)
class VolumeSpec:
    """Shape, dtype, voxel size (nm), storage chunk, optional shard and the world position
    of voxel 0's corner (nm, see `pipeline.world`), all in (z, y, x)."""

    shape: Triple
    dtype: np.dtype
    voxel_size_nm: Voxel
    chunk: Triple
    shard: Triple | None
    origin_nm: Voxel = (0.0, 0.0, 0.0)

    @classmethod
    def checked(
        cls, shape, dtype, voxel_size_nm, chunk, shard, origin_nm=(0.0, 0.0, 0.0)
    ) -> VolumeSpec:
        dtype = np.dtype(dtype)
        if dtype not in ALLOWED_DTYPES:
            raise VolumeError(f"dtype {dtype} is not supported: use uint8, uint16 or float32")
        for name, values in (
            ("shape", shape),
            ("chunk", chunk),
            ("shard", shard or chunk),
            ("voxel size (nm)", voxel_size_nm),
        ):
            if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
                raise VolumeError(f"{name} must be 3 positive (z, y, x) numbers, not {values}")
        if shard and any(s % c for s, c in zip(shard, chunk, strict=True)):
            raise VolumeError(f"shard {tuple(shard)} must be a multiple of chunk {tuple(chunk)}")
        if len(origin_nm) != 3 or not all(np.isfinite(origin_nm)):
            raise VolumeError(f"origin (nm) must be 3 finite (z, y, x) numbers, not {origin_nm}")
        return cls(
            _ints(shape),
            dtype,
            tuple(map(float, voxel_size_nm)),
            _ints(chunk),
            _ints(shard) if shard else None,
            tuple(map(float, origin_nm)),
        )


def _ints(values) -> Triple:
    return tuple(int(v) for v in values)
