"""The audit grid: audit blocks on a lattice anchored at the SR volume's origin, grouped into
units of whole blocks that span about one storage chunk each (a unit is one Dask task).

The units are a `BlockPlan` (blocks of whole audit blocks, restricted to the audited region
as its ROI), so the audit walks, dispatches and resumes exactly like a super-resolve run.
Blocks smaller than a chunk share their unit's single read, so no chunk is fetched once per
block. Because the lattice is anchored at the volume's origin, block (i, j, k) is the same
box whatever region is audited, and the quality map is one voxel per lattice cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from math import prod

from emsr.metrics import SSIM_WINDOW
from pipeline.errors import PlanError
from pipeline.geometry import Box, Triple
from pipeline.plan import BlockPlan

AUDIT_SIDE = 256  # largest in-plane side of a default audit block, px
MIN_AUDIT_SIDE = 64  # smallest default side: a small volume still gives a map of several blocks
EXACT = (1, 1, 1)
"""The plan's write lattice: the audit writes nothing into the volume, so a unit is cut to the
region exactly (never widened to whole chunks), and only an uncut unit is whole (done)."""


def default_block(shape: Triple, read_chunk: Triple) -> Triple:
    """One storage chunk deep; in plane a quarter of the shorter side, kept within 64-256 px,
    so that a small volume still gives a map of several blocks a side."""
    side = min(max(min(shape[1:]) // 4, MIN_AUDIT_SIDE), AUDIT_SIDE)
    return tuple(min(b, n) for b, n in zip((read_chunk[0], side, side), shape))  # type: ignore[return-value]


def check_block(block: Triple) -> None:
    if len(block) != 3 or min(block) <= 0:
        raise PlanError(f"--block must be three positive sizes Z,Y,X, got {block}")
    if min(block[1:]) < SSIM_WINDOW:
        raise PlanError(
            f"--block {','.join(map(str, block))} is too small in plane: SSIM "
            f"needs at least {SSIM_WINDOW} px in y and x"
        )


@dataclass(frozen=True)
class AuditGrid:
    """Audit blocks of `block` voxels over a volume of `shape`, in units (`plan`)."""

    shape: Triple
    block: Triple
    plan: BlockPlan

    @classmethod
    def build(cls, shape: Triple, block: Triple, read_chunk: Triple, region: Box) -> AuditGrid:
        """Units of `read_chunk // block` blocks a side (at least one), over `region`."""
        check_block(block)
        unit = tuple(max(1, c // b) * b for b, c in zip(block, read_chunk))
        volume = Box.from_shape(shape)
        roi = None if region == volume else region
        plan = BlockPlan(volume, unit, EXACT, roi, scale=1, tile=(1, 1), halo=0)  # type: ignore[arg-type]
        return cls(shape, block, plan)

    @property
    def block_grid(self) -> Triple:
        """Audit blocks along z, y and x over the whole volume (the quality map's shape)."""
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block))  # type: ignore[return-value]

    @property
    def blocks_per_unit(self) -> int:
        return prod(u // b for u, b in zip(self.plan.block, self.block))

    def blocks_in(self, unit_box: Box) -> list[tuple[Triple, Box]]:
        """The lattice cells meeting `unit_box` (a unit cut to the region), each as its grid
        position and its box cut to `unit_box`, z-major."""
        ranges = [
            range(begin // b, -(-end // b))
            for begin, end, b in zip(unit_box.begin, unit_box.end, self.block)
        ]
        cells = []
        for position in product(*ranges):
            cell = Box.from_shape(self.block, tuple(p * b for p, b in zip(position, self.block)))  # type: ignore[arg-type]
            cells.append((position, cell.intersect(unit_box)))
        return cells  # type: ignore[return-value]
