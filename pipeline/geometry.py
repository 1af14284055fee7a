"""Boxes in voxel coordinates, (z, y, x), as small immutable values with arithmetic.

Code that plans blocks should read like geometry (grow, intersect, snap), not like index
juggling; every box is half-open, [begin, end).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PlanError

Triple = tuple[int, int, int]
"""(z, y, x) voxels: shapes, offsets, chunk and block sizes."""


def parse_triple(text: str, name: str) -> Triple:
    """ "Z,Y,X" → (z, y, x) of positive integers, with a one-line error naming the option."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise PlanError(f"{name} must be three positive integers Z,Y,X, got {text!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Box:
    begin: Triple
    end: Triple

    @classmethod
    def from_shape(cls, shape: Triple, begin: Triple = (0, 0, 0)) -> Box:
        return cls(begin, tuple(b + s for b, s in zip(begin, shape)))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> Box:
        """ "z0:z1,y0:y1,x0:x1" (the --roi syntax) → Box."""
        try:
            pairs = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
            begin, end = zip(*pairs, strict=True)
        except ValueError:
            pairs, begin, end = [], (), ()
        if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
            raise PlanError(f"--roi must look like z0:z1,y0:y1,x0:x1, got {text!r}")
        box = cls(begin, end)  # type: ignore[arg-type]
        if box.empty:
            raise PlanError(f"--roi {text} is empty: each end must be greater than its start")
        return box

    @property
    def shape(self) -> Triple:
        return tuple(max(0, e - b) for b, e in zip(self.begin, self.end))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    def intersect(self, other: Box) -> Box:
        begin = tuple(max(a, b) for a, b in zip(self.begin, other.begin))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Box(begin, tuple(max(b, e) for b, e in zip(begin, end)))  # type: ignore[arg-type]

    def contains(self, other: Box) -> bool:
        return all(a <= b for a, b in zip(self.begin, other.begin)) and all(
            a >= b for a, b in zip(self.end, other.end)
        )

    def shift(self, offset: Triple) -> Box:
        return Box(
            tuple(b + o for b, o in zip(self.begin, offset)),  # type: ignore[arg-type]
            tuple(e + o for e, o in zip(self.end, offset)),  # type: ignore[arg-type]
        )

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end))  # type: ignore[return-value]

    def grow(self, amount: Triple) -> Box:
        """The box widened by `amount` on every side (a halo); negative shrinks."""
        return Box(
            tuple(b - a for b, a in zip(self.begin, amount)),  # type: ignore[arg-type]
            tuple(e + a for e, a in zip(self.end, amount)),  # type: ignore[arg-type]
        )

    def snap_out(self, grid: Triple, origin: Triple = (0, 0, 0)) -> Box:
        """The smallest box of whole `grid` cells (anchored at `origin`) containing this one."""
        begin = (o + (b - o) // g * g for b, g, o in zip(self.begin, grid, origin))
        end = (o - (-(e - o) // g) * g for e, g, o in zip(self.end, grid, origin))
        return Box(tuple(begin), tuple(end))  # type: ignore[arg-type]

    def scale_up(self, factor: Triple) -> Box:
        """The same region on a grid `factor` times finer (LR → HR)."""
        return Box(
            tuple(b * f for b, f in zip(self.begin, factor)),  # type: ignore[arg-type]
            tuple(e * f for e, f in zip(self.end, factor)),  # type: ignore[arg-type]
        )

    def scale_down(self, factor: Triple) -> Box:
        """The box of the coarser grid (`factor` times; HR → LR) whose voxels cover this one."""
        return Box(
            tuple(b // f for b, f in zip(self.begin, factor)),  # type: ignore[arg-type]
            tuple(-(-e // f) for e, f in zip(self.end, factor)),  # type: ignore[arg-type]
        )

    def relative_to(self, origin: Triple) -> Box:
        """This box in the coordinates of an array that starts at `origin`."""
        return self.shift(tuple(-o for o in origin))  # type: ignore[arg-type]

    def in_plane_footprint(self, scale: int) -> Box:
        """The LR box whose pixels the HR box `self` is made from (z unchanged)."""
        return self.scale_down((1, scale, scale))

    def __str__(self) -> str:
        return ",".join(f"{b}:{e}" for b, e in zip(self.begin, self.end))
