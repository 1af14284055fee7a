"""Model tiles from one global lattice anchored at the volume origin.

Every LR section is cut into tile *cores* of a fixed size on a grid that starts at (0, 0);
each tile is fed to the model with `halo` extra pixels on every side and only its core's
output is kept. Because the lattice is global, the model sees exactly the same pixels for a
given tile whichever block computes it — so blockwise output does not depend on the block
shape — and because core origins and the halo are multiples of the 4×4 attention window,
windows line up with whole-section inference. Beyond the volume's edge, pixels are mirrored
by one global rule (`emsr.inference.reflected_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emsr.inference import reflected_indices
from pipeline.errors import PlanError
from pipeline.geometry import Box


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TileLattice:
    """Tile cores of `core` (y, x) LR pixels, each read with `halo` LR pixels around it."""

    core: tuple[int, int]
    halo: int
    window: int = 4

    def __post_init__(self) -> None:
        if any(c <= 0 or c % self.window for c in self.core) or self.halo % self.window:
            raise PlanError(
                f"tile {self.core} and halo {self.halo} must be positive multiples of the "
                f"{self.window}-pixel attention window"
            )

    @classmethod
    def for_section(
        cls, section_shape: tuple[int, int], tile: int, halo: int, window: int = 4
    ) -> TileLattice:
        """The lattice for LR sections of `section_shape`: cores of `tile` pixels, shrunk to the
        section (rounded up to the window) so small volumes do not compute padding."""
        tile = round_up(tile, window)
        core = tuple(min(tile, round_up(extent, window)) for extent in section_shape)
        return cls(core, round_up(halo, window), window)  # type: ignore[arg-type]

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.core[0] + 2 * self.halo, self.core[1] + 2 * self.halo)

    def index_range(self, footprint: Box) -> tuple[range, range]:
        """Tile indices (rows, columns) whose cores meet the LR `footprint`."""
        (_, y0, x0), (_, y1, x1) = footprint.begin, footprint.end
        ty, tx = self.core
        return range(y0 // ty, -(-y1 // ty)), range(x0 // tx, -(-x1 // tx))

    def cover(self, footprint: Box) -> Box:
        """The LR box of whole tile cores covering `footprint`."""
        return footprint.snap_out((1, *self.core))

    def computed_pixels(self, footprint: Box) -> int:
        """LR pixels the model processes for `footprint` (halos included): the cost side of
        the redundant-compute ratio."""
        rows, columns = self.index_range(footprint)
        height, width = self.input_shape
        return footprint.shape[0] * len(rows) * len(columns) * height * width


def read_window_indices(
    lattice: TileLattice, cover: Box, lr_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices into the LR volume for `cover` plus the halo, mirrored at the
    volume's edges by the global rule."""
    halo = lattice.halo
    rows = reflected_indices(cover.begin[1] - halo, cover.end[1] + halo, lr_shape[1])
    columns = reflected_indices(cover.begin[2] - halo, cover.end[2] + halo, lr_shape[2])
    return rows, columns


def cut_tiles(region: np.ndarray, lattice: TileLattice) -> np.ndarray:
    """(z, Y, X) region of whole tiles plus halo → (n, h, w) model inputs, in (z, row, col)
    order."""
    ty, tx = lattice.core
    height, width = lattice.input_shape
    rows = (region.shape[1] - 2 * lattice.halo) // ty
    columns = (region.shape[2] - 2 * lattice.halo) // tx
    return np.stack(
        [
            region[z, r * ty : r * ty + height, c * tx : c * tx + width]
            for z in range(region.shape[0])
            for r in range(rows)
            for c in range(columns)
        ]
    )


def stitch_cores(
    outputs: np.ndarray, lattice: TileLattice, cover_shape: tuple[int, int, int], scale: int
) -> np.ndarray:
    """Model outputs of `cut_tiles` order → the SR array of the cover, keeping each core only
    (crop-and-stitch: no blending, so every output pixel comes from exactly one tile)."""
    ty, tx = lattice.core
    sections, height, width = cover_shape
    rows, columns = height // ty, width // tx
    halo, s = lattice.halo, scale
    cores = outputs[:, s * halo : s * (halo + ty), s * halo : s * (halo + tx)]
    grid = cores.reshape(sections, rows, columns, s * ty, s * tx)
    return grid.transpose(0, 1, 3, 2, 4).reshape(sections, s * height, s * width)
