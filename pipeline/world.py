"""World coordinates: positions in nm, the frame a viewer shows and every volume shares.

A volume's voxel (i, j, k) covers the world box `origin_nm + (i, j, k) × voxel_size_nm` to
`origin_nm + (i + 1, j + 1, k + 1) × voxel_size_nm`: `origin_nm` is the *corner* of voxel 0.
Precomputed stores that corner (`voxel_offset × resolution`); OME-Zarr stores voxel centres
(`translation` is the centre of voxel 0), converted at the storage edge.

The ×s output of EMSR covers the same field as its input, so both share the corner: HR voxel
(z, s·y + a, s·x + b) lies inside LR voxel (z, y, x). Their voxel centres are then half an HR
voxel apart along y and x for s = 2 ((s − 1)/2 HR voxels in general).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from pipeline.errors import PlanError
from pipeline.geometry import Box

Voxel = tuple[float, float, float]
NM_PER_UNIT = MappingProxyType(
    {
        "nanometer": 1.0,
        "nm": 1.0,
        "angstrom": 0.1,
        "picometer": 1e-3,
        "micrometer": 1e3,
        "um": 1e3,
        "µm": 1e3,
        "micron": 1e3,
        "millimeter": 1e6,
        "mm": 1e6,
        "meter": 1e9,
    }
)
"""Nanometres per unit, by the names OME-Zarr (UDUNITS) and N5 writers use."""


def parse_voxel_size(text: str, name: str = "--voxel-size") -> Voxel:
    """ "Z,Y,X" → (z, y, x) positive nm, with a one-line error naming the option."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise PlanError(f"{name} must be three positive numbers Z,Y,X in nm, got {text!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class WorldBox:
    """A half-open box in world nm, (z, y, x)."""

    begin: Voxel
    end: Voxel

    @classmethod
    def parse(cls, text: str, name: str = "--roi-nm") -> WorldBox:
        """ "z0:z1,y0:y1,x0:x1" in nm → WorldBox; one line naming the option if malformed."""
        try:
            pairs = [tuple(float(v) for v in part.split(":")) for part in text.split(",")]
            begin, end = zip(*pairs, strict=True)
        except ValueError:
            pairs, begin, end = [], (), ()
        if len(pairs) != 3 or not all(math.isfinite(v) for p in pairs for v in p):
            raise PlanError(f"{name} must look like z0:z1,y0:y1,x0:x1 in nm, got {text!r}")
        if any(b >= e for b, e in zip(begin, end)):
            raise PlanError(f"{name} {text} is empty: each end must be greater than its start")
        return cls(begin, end)  # type: ignore[arg-type]

    def voxels(self, origin_nm: Voxel, voxel_size_nm: Voxel) -> Box:
        """The smallest box of whole voxels of a volume (its corner, its voxel size) that
        covers this world box."""
        frame = list(zip(origin_nm, voxel_size_nm))
        begin = [math.floor(round((b - o) / v, 6)) for b, (o, v) in zip(self.begin, frame)]
        end = [math.ceil(round((e - o) / v, 6)) for e, (o, v) in zip(self.end, frame)]
        return Box(tuple(begin), tuple(end))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return ",".join(f"{b:g}:{e:g}" for b, e in zip(self.begin, self.end))
