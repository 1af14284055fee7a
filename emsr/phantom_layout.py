"""Phantom geometry: which objects exist, where they lie, how they drift through z, and how
each one looks (its intensities and textures), as arrays of one row per object."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from emsr.phantom import PhantomSpec

_MAX_AXON_RADIUS = 60.0
_MAX_SMALL_RADIUS = 8.0


class Kind(IntEnum):
    MYELINATED = 0
    UNMYELINATED = 1
    CELL = 2


@dataclass
class Objects:
    """Per-object geometry and appearance, one row per object (arrays of length n)."""

    kind: np.ndarray
    centre: np.ndarray  # (n, z, 2): (y, x) of the centre in each section
    radius: np.ndarray  # mean outer radius, px
    profile: np.ndarray  # (n, z): radius factor per section (calibre changes, a cell's sphere)
    elongation: np.ndarray  # √(major / minor): oblique cuts and flattened processes
    angle: np.ndarray
    wobble: np.ndarray  # (n, 4): amplitude and phase of the 2- and 3-fold outline modes
    look: dict[str, np.ndarray]  # name → (n + 1,) values; the last row is the background

    def __len__(self) -> int:
        return len(self.kind)


def layout(spec: PhantomSpec, rng: np.random.Generator) -> Objects:
    """Cells first (rare, big), then myelinated axons packed largest first, then small
    unmyelinated processes in the gaps; all drift together with a common bundle direction.

    Axons are packed beyond the field's edge by the largest radius plus the drift, so that
    large axons cut by the edge, and axons drifting in from outside, are not missing."""
    depth, height, width = spec.shape
    bundle_velocity = _bundle_velocity(rng)
    sections = np.arange(depth, dtype=np.float32)
    drift_reach = 0.5 * depth * (np.hypot(*bundle_velocity) + 0.3) + 2.0
    field_size = np.array([height, width], dtype=float)

    cells = _cell_discs(spec, rng)
    low, high = -(_MAX_AXON_RADIUS + drift_reach), field_size + _MAX_AXON_RADIUS + drift_reach
    axon_radii = _axon_radii(rng, area=np.prod(high - low))
    axon_centres, axon_radii = _pack_discs(axon_radii, cells, low, high, rng)
    taken = (np.concatenate([cells[0], axon_centres]), np.concatenate([cells[1], axon_radii]))
    low, high = -(_MAX_SMALL_RADIUS + drift_reach), field_size + _MAX_SMALL_RADIUS + drift_reach
    small_centres, small_radii = _fill_gaps(taken, low, high, rng)

    kind = np.concatenate(
        [
            np.full(len(cells[1]), Kind.CELL),
            np.full(len(axon_radii), Kind.MYELINATED),
            np.full(len(small_radii), Kind.UNMYELINATED),
        ]
    ).astype(np.int8)
    mid_centre = np.concatenate([cells[0], axon_centres, small_centres]).astype(np.float32)
    radius = np.concatenate([cells[1], axon_radii, small_radii]).astype(np.float32)
    profile = _calibre(len(kind), sections, rng)
    is_cell = kind == Kind.CELL
    profile[is_cell] = _sphere_profile(radius[is_cell], cells[2], sections, spec.hr_voxel_nm)
    elongation, angle, wobble = _outline_shapes(kind, rng)
    return Objects(
        kind=kind,
        centre=_trajectories(mid_centre, bundle_velocity, sections, rng),
        radius=radius,
        profile=profile,
        elongation=elongation,
        angle=angle,
        wobble=wobble,
        look=_looks(kind, radius, rng),
    )


def _outline_shapes(
    kind: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elongation, orientation and outline wobble per object: most axons are cut nearly
    across (almost round); about one in eight obliquely (an ellipse up to 1.8:1)."""
    n = len(kind)
    oblique = rng.random(n) < 0.12
    elongation = np.where(oblique, rng.uniform(1.1, 1.35, n), rng.uniform(1.0, 1.08, n))
    angle = rng.uniform(0, np.pi, n)
    wobble = np.column_stack(
        [
            rng.uniform(0.0, 0.06, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0.0, 0.04, n),
            rng.uniform(0, 2 * np.pi, n),
        ]
    )
    wobble[kind == Kind.UNMYELINATED, 0] *= 2.5  # glial and bare processes are irregular
    return elongation.astype(np.float32), angle.astype(np.float32), wobble.astype(np.float32)


def _bundle_velocity(rng: np.random.Generator) -> np.ndarray:
    """In-plane drift per section shared by the bundle: axons run nearly, not exactly, along z."""
    angle = rng.uniform(0, 2 * np.pi)
    return rng.uniform(0.1, 0.4) * np.array([np.sin(angle), np.cos(angle)])


def _cell_discs(
    spec: PhantomSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (in the field), radii and z-centres of the rare large cells."""
    depth, height, width = spec.shape
    count = rng.poisson(spec.nuclei_per_mpx * height * width / 1e6)
    radius = rng.uniform(50.0, 85.0, count)
    centre = rng.uniform(0, 1, (count, 2)) * np.array([height, width])
    z_centre = rng.uniform(0, depth - 1, count) if depth > 1 else np.zeros(count)
    return centre, radius, z_centre


def _axon_radii(rng: np.random.Generator, area: float) -> np.ndarray:
    """Log-normal outer radii (≈ 5–60 px, median 13: 0.2–2 µm diameters at 15 nm), largest
    first, enough to cover the area about 1.6 times over (the packing rejects many)."""
    mean_area = np.pi * 13.0**2 * np.exp(2 * 0.5**2)
    count = int(1.6 * area / mean_area) + 1
    radii = np.clip(13.0 * np.exp(0.5 * rng.standard_normal(count)), 5.0, _MAX_AXON_RADIUS)
    return np.sort(radii)[::-1]


def _pack_discs(
    radii: np.ndarray,
    obstacles: tuple[np.ndarray, np.ndarray, np.ndarray],
    low: np.ndarray,
    high: np.ndarray,
    rng: np.random.Generator,
    tries: int = 48,
    overlap: float = 0.86,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential packing: each disc takes the first of `tries` random spots where it
    overlaps no placed disc by more than (1 - `overlap`) of the radii sum; else it is dropped.

    A little overlap lets neighbours press into each other, as myelinated axons do.
    """
    capacity = len(obstacles[1]) + len(radii)
    centres = np.empty((capacity, 2))
    placed_radii = np.empty(capacity)
    n = len(obstacles[1])
    centres[:n], placed_radii[:n] = obstacles[0], obstacles[1]
    first_axon = n
    for radius in radii:
        candidates = rng.uniform(low, high, (tries, 2))
        gaps = np.linalg.norm(candidates[:, None, :] - centres[None, :n], axis=-1)
        fits = np.all(gaps >= overlap * (radius + placed_radii[:n]), axis=1)
        if fits.any():
            centres[n], placed_radii[n] = candidates[np.argmax(fits)], radius
            n += 1
    return centres[first_axon:n], placed_radii[first_axon:n]


def _fill_gaps(
    taken: tuple[np.ndarray, np.ndarray],
    low: np.ndarray,
    high: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Small unmyelinated processes (radius 2.5–8 px) seeded in the space the axons leave.

    Seeds may overlap each other; the tessellation turns overlaps into shared membranes.
    """
    area = np.prod(high - low)
    seeds = rng.uniform(low, high, (rng.poisson(area / 60.0), 2))
    clearance = np.full(len(seeds), np.inf)
    for start in range(0, len(taken[1]), 256):
        centres, radii = taken[0][start : start + 256], taken[1][start : start + 256]
        distance = np.linalg.norm(seeds[:, None, :] - centres[None], axis=-1) - radii
        clearance = np.minimum(clearance, distance.min(axis=1))
    in_gap = clearance > 2.5
    radii = np.minimum(rng.uniform(2.5, _MAX_SMALL_RADIUS, len(seeds)), clearance + 1.0)[in_gap]
    return seeds[in_gap], radii


def _trajectories(
    mid_centre: np.ndarray,
    bundle_velocity: np.ndarray,
    sections: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, z, 2) centres: the common drift, a small own drift and a slow sideways wiggle."""
    n = len(mid_centre)
    z = sections - sections.mean()
    own_velocity = 0.06 * rng.standard_normal((n, 2))
    velocity = bundle_velocity[None] + own_velocity
    period = rng.uniform(30.0, 90.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    amplitude = rng.uniform(0.0, 1.5, n)
    direction = rng.standard_normal((n, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wiggle = amplitude[:, None] * (
        np.sin(2 * np.pi * z[None] / period[:, None] + phase[:, None]) - np.sin(phase)[:, None]
    )
    centre = (
        mid_centre[:, None, :]
        + velocity[:, None, :] * z[None, :, None]
        + wiggle[..., None] * direction[:, None, :]
    )
    return centre.astype(np.float32)


def _calibre(n: int, sections: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slow ±5 % changes of an axon's radius along its length (varicosities)."""
    period = rng.uniform(20.0, 60.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    swing = rng.uniform(0.0, 0.05, n)
    angle = 2 * np.pi * sections[None] / period[:, None] + phase[:, None]
    return (1 + swing[:, None] * np.sin(angle)).astype(np.float32)


def _sphere_profile(
    radius: np.ndarray,
    z_centre: np.ndarray,
    sections: np.ndarray,
    voxel_nm: tuple[float, float, float],
) -> np.ndarray:
    """A cell is a sphere: its section's radius shrinks away from its equator."""
    height_px = (sections[None] - z_centre[:, None]) * (voxel_nm[0] / voxel_nm[1])
    return np.sqrt(np.clip(1 - (height_px / radius[:, None]) ** 2, 0.0, 1.0)).astype(np.float32)


def _looks(kind: np.ndarray, radius: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Appearance per object, plus a last row for the background between objects.

    ``ring`` is the thickness of the outer layer: the myelin sheath (1 - g-ratio of the radius,
    g ≈ 0.65–0.82) or a cell's cytoplasm around its nucleus; ``outer``/``inner`` are the mean
    intensities of that layer and of the inside; ``*_line`` darken the outline and the inner
    boundary (membranes, the nuclear envelope); ``*_fine``/``*_coarse`` scale the textures.
    """
    n = len(kind)
    myelinated, cell = kind == Kind.MYELINATED, kind == Kind.CELL
    unmyelinated = kind == Kind.UNMYELINATED
    look = {
        name: np.zeros(n + 1, np.float32)
        for name in (
            "ring",
            "outer",
            "inner",
            "outer_line",
            "inner_line",
            "outer_fine",
            "inner_fine",
            "outer_coarse",
            "inner_coarse",
        )
    }

    def put(name: str, where: np.ndarray, values: np.ndarray | float) -> None:
        look[name][:n][where] = values

    count = int(myelinated.sum())
    put("ring", myelinated, (1 - rng.uniform(0.65, 0.82, count)) * radius[myelinated])
    put("outer", myelinated, rng.uniform(0.07, 0.15, count))
    put("inner", myelinated, rng.uniform(0.66, 0.80, count))
    put("outer_line", myelinated, -0.04)  # a faint light seam where two sheaths meet
    put("inner_line", myelinated, 0.08)  # the axolemma and inner tongue
    put("outer_fine", myelinated, 0.015)
    put("inner_fine", myelinated, 0.045)
    put("inner_coarse", myelinated, 0.015)

    count = int(unmyelinated.sum())
    tone = rng.uniform(0.42, 0.58, count)
    put("outer", unmyelinated, tone)
    put("inner", unmyelinated, tone)
    put("outer_line", unmyelinated, 0.3)
    put("outer_fine", unmyelinated, 0.035)
    put("inner_fine", unmyelinated, 0.035)
    put("outer_coarse", unmyelinated, 0.03)
    put("inner_coarse", unmyelinated, 0.03)

    count = int(cell.sum())
    put("ring", cell, rng.uniform(6.0, 12.0, count))
    put("outer", cell, rng.uniform(0.42, 0.5, count))
    put("inner", cell, rng.uniform(0.58, 0.66, count))
    put("outer_line", cell, 0.25)
    put("inner_line", cell, 0.3)
    put("outer_fine", cell, 0.04)
    put("inner_fine", cell, 0.06)
    put("outer_coarse", cell, 0.03)
    put("inner_coarse", cell, 0.07)

    look["outer"][n] = look["inner"][n] = 0.45
    look["outer_fine"][n] = look["inner_fine"][n] = 0.03
    look["outer_coarse"][n] = look["inner_coarse"][n] = 0.045
    return look
