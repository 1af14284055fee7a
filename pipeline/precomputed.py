"""Neuroglancer precomputed at the storage edge: the `info` document, sharding, chunk files.

Precomputed stores (x, y, z, channel) with a global `voxel_offset`; the rest of the
pipeline sees (z, y, x) from 0, and this module and `pipeline.volumes` do the conversion.
tensorstore reads and writes it, except volumes whose chunk files cloud-files compressed
(CloudVolume's default on file://): CloudVolume reads those, behind the same TensorStore API.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import tensorstore as ts

from pipeline.errors import VolumeError
from pipeline.geometry import Triple
from pipeline.urls import VolumeSource
from pipeline.volume_spec import VolumeSpec

COMPRESSED_SUFFIXES = (".gz", ".br", ".zstd", ".xz", ".bz2")
"""What cloud-files appends to a chunk file it compressed (and finds again on reading)."""


def info_document(spec: VolumeSpec, attributes: dict) -> dict:
    """The `info` of a single-scale, single-channel image volume, with our provenance."""
    resolution = [int(v) if v.is_integer() else v for v in spec.voxel_size_nm[::-1]]
    scale = {
        "key": "_".join(f"{v:g}" for v in resolution),
        "resolution": resolution,
        "size": spec.shape[::-1],
        "voxel_offset": voxel_offset(spec)[::-1],
        "chunk_sizes": [spec.chunk[::-1]],
        "encoding": "raw",
    }
    if spec.shard:
        scale["sharding"] = sharding(spec.shape, spec.chunk, spec.shard)[0]
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "num_channels": 1,
        "data_type": spec.dtype.name,
        "scales": [scale],
        "emsr": attributes,
    }


def voxel_offset(spec: VolumeSpec) -> list[int]:
    """The (z, y, x) `voxel_offset` placing voxel 0's corner at `spec.origin_nm`; precomputed
    has only whole voxels, so an origin between them is refused."""
    offset = [o / v for o, v in zip(spec.origin_nm, spec.voxel_size_nm, strict=True)]
    whole = [round(o) for o in offset]
    if not np.allclose(offset, whole, rtol=0, atol=1e-6):
        raise VolumeError(
            f"origin {spec.origin_nm} nm is not a whole number of {spec.voxel_size_nm} nm "
            "voxels, which precomputed cannot store: write OME-Zarr (zarr3://) instead"
        )
    return whole


def origin_nm(scale: dict) -> tuple[float, float, float]:
    """The (z, y, x) corner of voxel 0 in nm: `voxel_offset` × `resolution`."""
    xyz = zip(scale["voxel_offset"], scale["resolution"], strict=True)
    return tuple(float(o) * float(r) for o, r in xyz)[::-1]


def write_chunk(spec: VolumeSpec) -> Triple:
    """The write unit tensorstore will report once `spec` is created: the shard's box of
    chunks (clipped where it spans the whole grid), else the chunk."""
    return sharding(spec.shape, spec.chunk, spec.shard)[1] if spec.shard else spec.chunk


def sharding(shape: Triple, chunk: Triple, shard: Triple) -> tuple[dict, Triple]:
    """The `sharding` spec whose shards are `shard`-sized boxes of chunks, and that box.

    Precomputed numbers chunks by a compressed Morton code (bits interleaved x, y, z, a
    dimension dropping out once its grid is covered), and a shard holds the chunks that share
    all but the low `preshift_bits + minishard_bits` bits. So a shard is a box only if those
    low bits are exactly log2(shard / chunk) bits of each dimension (fewer where the shard
    spans the whole grid). Half of them pick the minishard, so minishard indices stay small.
    """
    xyz = zip(shape[::-1], chunk[::-1], shard[::-1], strict=True)
    grid_bits, ratios = zip(*[((math.ceil(n / c) - 1).bit_length(), s // c) for n, c, s in xyz])
    if any(r & (r - 1) for r in ratios):
        raise VolumeError(f"precomputed shard {shard} must be chunk {chunk} times powers of 2")
    wanted = [min(r.bit_length() - 1, g) for r, g in zip(ratios, grid_bits, strict=True)]
    morton = [d for level in range(max(grid_bits)) for d in range(3) if level < grid_bits[d]]
    low_bits = [morton[: sum(wanted)].count(d) for d in range(3)]
    if low_bits != wanted:
        aligned = tuple(c << b for c, b in zip(chunk, low_bits[::-1], strict=True))
        raise VolumeError(
            f"precomputed shard {shard} is not a Morton-aligned box of chunks in "
            f"this volume: use e.g. shard {aligned}"
        )
    bits = sum(wanted)
    spec = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "identity",
        "preshift_bits": bits - bits // 2,
        "minishard_bits": bits // 2,
        "shard_bits": len(morton) - bits,
        "minishard_index_encoding": "gzip",
        "data_encoding": "raw",
    }
    return spec, tuple(c << b for c, b in zip(chunk, wanted[::-1], strict=True))


def first_scale(source: VolumeSource) -> dict:
    """The full-resolution scale of the `info`."""
    return source.read_json("info")[0]["scales"][0]


def has_compressed_chunk_files(source: VolumeSource, scale: dict) -> bool:
    """Whether the scale's chunks are files compressed by cloud-files (`<chunk>.gz`, CloudVolume's
    default on file://), which tensorstore cannot read: it takes such a chunk for a missing one
    and reads zeros. One such file means the volume was written compressed, so the scan stops
    at the first; only an uncompressed volume is scanned whole (once per open)."""
    if source.kvstore["driver"] != "file" or "sharding" in scale:
        return False
    try:
        with os.scandir(Path(source.kvstore["path"]) / scale["key"]) as entries:
            return any(entry.name.endswith(COMPRESSED_SUFFIXES) for entry in entries)
    except FileNotFoundError:  # no chunk written yet
        return False


def cloudvolume_store(source: VolumeSource, scale: dict) -> ts.TensorStore:
    """A read-only (x, y, z, channel) TensorStore whose chunks CloudVolume reads and decodes
    (so compressed chunk files read right), on the same domain and chunk grid as tensorstore's
    own precomputed driver gives."""
    info = source.read_json("info")[0]
    offset, size = scale["voxel_offset"], scale["size"]
    domain = ts.IndexDomain(
        inclusive_min=[*offset, 0],
        shape=[*size, info["num_channels"]],
        labels=["x", "y", "z", "channel"],
    )
    layout = ts.ChunkLayout(
        read_chunk_shape=[*scale["chunk_sizes"][0], info["num_channels"]],
        grid_origin=[*offset, 0],
    )
    reader = _CloudVolumeChunks("file://" + source.kvstore["path"].rstrip("/"))
    return ts.virtual_chunked(
        reader, dtype=np.dtype(info["data_type"]), domain=domain, chunk_layout=layout
    )


class _CloudVolumeChunks:
    """tensorstore's read callback for `cloudvolume_store`: one CloudVolume per thread (they
    are not shared across threads), rebuilt from the path after pickling."""

    def __init__(self, cloudpath: str) -> None:
        self.cloudpath = cloudpath
        self._local = threading.local()

    def __call__(self, domain: ts.IndexDomain, array: np.ndarray, _params: object) -> None:
        volume = getattr(self._local, "volume", None)
        if volume is None:
            from cloudvolume import CloudVolume  # imported only where such a volume is read

            volume = self._local.volume = CloudVolume(
                self.cloudpath, mip=0, fill_missing=True, progress=False, parallel=1
            )
        (x0, x1), (y0, y1), (z0, z1), (c0, c1) = (
            (d.inclusive_min, d.exclusive_max) for d in domain
        )
        array[...] = np.asarray(volume[x0:x1, y0:y1, z0:z1])[..., c0:c1]

    def __getstate__(self) -> dict:
        return {"cloudpath": self.cloudpath}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cloudpath"])
