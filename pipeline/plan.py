"""Block plans: the output volume cut into blocks of whole storage chunks, in a fixed order.

A block's write region is a whole number of output chunks (or shards), so no two blocks
ever write parts of the same chunk — the cause of silent data loss in concurrent chunked
writes. Blocks are generated lazily from their index, so a plan of 10⁶ blocks costs nothing
until it is walked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import prod

from pipeline.errors import PlanError
from pipeline.geometry import Box, Triple


def aligned_suggestions(block: Triple, chunk: Triple) -> str:
    """The nearest chunk-aligned block shapes below and above `block`, as Z,Y,X strings."""
    lower = tuple(max(c, b // c * c) for b, c in zip(block, chunk))
    upper = tuple(-(-b // c) * c for b, c in zip(block, chunk))
    shapes = dict.fromkeys(",".join(map(str, shape)) for shape in (lower, upper))
    return " or ".join(shapes)


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of `block` voxels over the output `volume`, restricted to `roi` if given."""

    volume: Box
    block: Triple
    chunk: Triple
    roi: Box | None = None

    def __post_init__(self) -> None:
        if any(b % c for b, c in zip(self.block, self.chunk)):
            raise PlanError(
                f"--block {','.join(map(str, self.block))} is not a whole number of output "
                f"chunks {','.join(map(str, self.chunk))}; use "
                f"{aligned_suggestions(self.block, self.chunk)}"
            )
        if self.roi is not None and not self.volume.contains(self.roi):
            raise PlanError(
                f"--roi {self.roi} lies outside the output volume {self.volume} "
                "(the ROI is given in output voxels)"
            )

    @property
    def grid(self) -> Triple:
        return tuple(-(-s // b) for s, b in zip(self.volume.shape, self.block))  # type: ignore[return-value]

    @property
    def block_count(self) -> int:
        return prod(self.grid)

    def chunk_box(self, index: int) -> Box:
        """Block `index`'s whole-chunk region: its full box cut only to the volume."""
        _, gy, gx = self.grid
        position = (index // (gy * gx), index // gx % gy, index % gx)
        begin = tuple(v + p * b for v, p, b in zip(self.volume.begin, position, self.block))
        return Box.from_shape(self.block, begin).intersect(self.volume)  # type: ignore[arg-type]

    def block_box(self, index: int) -> Box:
        """The region block `index` writes: its box cut to the volume and to the ROI."""
        box = self.chunk_box(index)
        return box.intersect(self.roi) if self.roi is not None else box

    def is_whole(self, index: int) -> bool:
        """Whether the ROI leaves the block's in-volume box uncut: only such blocks can be
        recorded as done, since a later run with another ROI needs all of them."""
        return self.roi is None or self.roi.contains(self.chunk_box(index))

    def indices(self) -> Iterator[int]:
        """Indices of the blocks that meet the ROI, in z-major order, lazily."""
        if self.roi is None:
            yield from range(self.block_count)
            return
        first = [
            max(0, (r - v) // b) for r, v, b in zip(self.roi.begin, self.volume.begin, self.block)
        ]
        last = [-(-(r - v) // b) for r, v, b in zip(self.roi.end, self.volume.begin, self.block)]
        _, gy, gx = self.grid
        for z in range(first[0], last[0]):
            for y in range(first[1], last[1]):
                for x in range(first[2], last[2]):
                    yield (z * gy + y) * gx + x

    def to_dict(self) -> dict:
        return {
            "volume": str(self.volume),
            "block": list(self.block),
            "chunk": list(self.chunk),
            "roi": str(self.roi) if self.roi else None,
        }
