"""Boxes in voxel coordinates, (z, y, x), as small immutable values with arithmetic.

Code that plans blocks should read like geometry (grow, intersect, snap), not like index
juggling; every box is half-open, [begin, end).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PlanError

Triple = tuple[int, int, int]


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

    def in_plane_footprint(self, scale: int) -> Box:
        """The LR box whose pixels the HR box `self` is made from (z unchanged)."""
        (z0, y0, x0), (z1, y1, x1) = self.begin, self.end
        return Box((z0, y0 // scale, x0 // scale), (z1, -(-y1 // scale), -(-x1 // scale)))

    def __str__(self) -> str:
        return ",".join(f"{b}:{e}" for b, e in zip(self.begin, self.end))
