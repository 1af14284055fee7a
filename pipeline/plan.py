"""Block plans: the output volume cut into blocks of whole storage chunks, in a fixed order.

A block's write region is a whole number of output chunks (or shards), so no two blocks
ever write parts of the same chunk — the cause of silent data loss in concurrent chunked
writes. An ROI is widened to whole chunks for the same reason: two runs over neighbouring
ROIs may both write a chunk they share, but whole and with the same values, never one
run's stale copy over the other's. Blocks are generated lazily from their index, so a plan
of 10⁷ blocks costs nothing until it is walked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
class PlannedBlock:
    """One block as the worker needs it: where it reads and where it writes.

    index: the block's position in the plan (z-major), its key in the done ledger.
    write: the HR region it computes and writes, whole output chunks (cut only at the
        volume's edge); with an ROI, only the chunks of the block that meet the ROI.
    read: the LR region it reads, tile cores covering `write` plus the halo; it may reach
        beyond the volume, where pixels are mirrored.
    whole: whether `write` is the block's full region, so the ledger can mark it done.
    """

    index: int
    write: Box
    read: Box
    whole: bool

    @property
    def part(self) -> Box | None:
        """What the ledger records for this block: None for the whole block, else its box."""
        return None if self.whole else self.write


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of `block` voxels over the output `volume`, restricted to `roi` if given.

    scale, tile and halo say how HR writes map to LR reads: the output is `scale` times finer
    in y and x, and the model reads whole LR tile cores of `tile` (y, x) pixels plus `halo`
    (a `TileLattice`'s core and halo; required, so no plan reads what its blocks do not use).
    """

    volume: Box
    block: Triple
    chunk: Triple
    roi: Box | None = None
    scale: int = field(kw_only=True)
    tile: tuple[int, int] = field(kw_only=True)
    halo: int = field(kw_only=True)

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

    @property
    def written_region(self) -> Box:
        """What the plan writes: the volume, or the ROI widened to whole chunks."""
        if self.roi is None:
            return self.volume
        return self.roi.snap_out(self.chunk, self.volume.begin).intersect(self.volume)

    def full_box(self, index: int) -> Box:
        """Block `index`'s whole region, cut only to the volume."""
        _, gy, gx = self.grid
        position = (index // (gy * gx), index // gx % gy, index % gx)
        begin = tuple(v + p * b for v, p, b in zip(self.volume.begin, position, self.block))
        return Box.from_shape(self.block, begin).intersect(self.volume)  # type: ignore[arg-type]

    def read_box(self, write: Box) -> Box:
        """The LR pixels the HR `write` box is computed from: whole tile cores plus the halo."""
        footprint = write.scale_down((1, self.scale, self.scale))
        return footprint.snap_out((1, *self.tile)).grow((0, self.halo, self.halo))

    def planned(self, index: int) -> PlannedBlock:
        """Block `index` with its read and write boxes; no I/O."""
        full = self.full_box(index)
        write = full.intersect(self.written_region)
        return PlannedBlock(index, write, self.read_box(write), write == full)

    def blocks(self) -> Iterator[PlannedBlock]:
        """The blocks that meet the ROI, in z-major order, lazily."""
        return (self.planned(index) for index in self.indices())

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
