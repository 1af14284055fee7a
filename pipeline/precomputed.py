"""Neuroglancer precomputed at the storage edge: the `info` document, sharding, chunk files.

Precomputed stores (x, y, z, channel) with a global `voxel_offset`; the rest of the
pipeline sees (z, y, x) from 0, and this module and `pipeline.volumes` do the conversion.
"""

from __future__ import annotations

import math

from pipeline.errors import VolumeError
from pipeline.geometry import Triple
from pipeline.urls import VolumeSource, redact
from pipeline.volume_spec import VolumeSpec


def info_document(spec: VolumeSpec, attributes: dict) -> dict:
    """The `info` of a single-scale, single-channel image volume, with our provenance."""
    resolution = [int(v) if v.is_integer() else v for v in spec.voxel_size_nm[::-1]]
    scale = {
        "key": "_".join(f"{v:g}" for v in resolution),
        "resolution": resolution,
        "size": spec.shape[::-1],
        "voxel_offset": [0, 0, 0],
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


def first_scale(source: VolumeSource, url: str) -> dict:
    """The full-resolution scale of the `info`, checked to be one tensorstore reads right."""
    scale = source.read_json("info")[0]["scales"][0]
    _refuse_gzip_files(source, scale, url)
    return scale


def _refuse_gzip_files(source: VolumeSource, scale: dict, url: str) -> None:
    """CloudVolume writes `<chunk>.gz` files on file:// by default; tensorstore reads zeros."""
    if source.kvstore["driver"] != "file" or "sharding" in scale:
        return
    extents = zip(scale["voxel_offset"], scale["chunk_sizes"][0], scale["size"], strict=True)
    first_chunk = f"{scale['key']}/" + "_".join(f"{o}-{o + min(c, n)}" for o, c, n in extents)
    if not source.exists(first_chunk) and source.exists(f"{first_chunk}.gz"):
        raise VolumeError(
            f"{redact(url)} holds gzip-compressed chunk files, which tensorstore "
            "reads as zeros: rewrite it uncompressed (CloudVolume compress=False)"
        )
