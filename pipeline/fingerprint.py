"""A cheap fingerprint of an input volume, so a resumed run notices an input replaced in place.

The fingerprint is the volume's metadata plus the sha256 of `SAMPLED_CHUNKS` whole read
chunks spread through z, y and x (a few MB, whatever the volume's size). An input rewritten
with other data under the same path, shape and dtype changes the sampled chunks, and the
run's configuration key with them, so done blocks computed from the old data are not mixed
with new ones. An edit confined to chunks outside the sample goes unnoticed.
"""

from __future__ import annotations

import hashlib

from pipeline.geometry import Box
from pipeline.volumes import Volume

SAMPLED_CHUNKS = 8
_STRIDES = (1, 3, 5)
"""Chunk k of the sample sits at fraction (k·stride mod n + ½)/n along each axis: strides
coprime with `SAMPLED_CHUNKS` spread the sample over z, y and x instead of one diagonal."""


def sampled_chunks(shape: tuple[int, ...], chunk: tuple[int, ...]) -> list[Box]:
    """The read chunks the fingerprint hashes (fewer when the volume has fewer chunks)."""
    counts = [-(-extent // size) for extent, size in zip(shape, chunk, strict=True)]
    boxes = set()
    for k in range(SAMPLED_CHUNKS):
        index = [
            int(((k * stride) % SAMPLED_CHUNKS + 0.5) / SAMPLED_CHUNKS * count)
            for stride, count in zip(_STRIDES, counts, strict=True)
        ]
        begin = tuple(i * c for i, c in zip(index, chunk, strict=True))
        end = tuple(min(b + c, n) for b, c, n in zip(begin, chunk, shape, strict=True))
        boxes.add(Box(begin, end))  # type: ignore[arg-type]
    return sorted(boxes, key=lambda box: box.begin)


def input_fingerprint(source: Volume) -> dict:
    """Metadata and sampled content of `source`, as JSON-able values for the key."""
    info = source.info
    boxes = sampled_chunks(info.shape, info.read_chunk)
    digest = hashlib.sha256()
    for read in [source.read_async(box.slices()) for box in boxes]:
        digest.update(read.result().tobytes())
    return {
        "shape": list(info.shape),
        "dtype": info.dtype.name,
        "voxel_size_nm": [float(v) for v in info.voxel_size_nm],
        "offset": list(info.offset),
        "origin_nm": [float(v) for v in info.origin_nm],
        "sampled_chunks": len(boxes),
        "content_sha256": digest.hexdigest(),
    }
