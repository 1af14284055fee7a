"""EM-like 3-D test volumes with a known clean truth: a phantom of rat white matter (SBEM).

The project has no real data it may ship, so tests, the demo and benchmarks use this phantom:
densely packed myelinated axons cut mostly across (light, finely textured axoplasm in a dark
myelin ring), small unmyelinated processes separated by thin dark membranes, a grey textured
background, mitochondria, vesicles and now and then a large cell with its nucleus.

Geometry is a set of objects (elliptic cross-sections with a wobbly outline) that run through
z along slowly drifting centres, so consecutive sections are correlated like serial sections.
Each voxel belongs to its nearest object by signed distance to the outline; where objects
overlap, the boundary is where both distances are equal, so packed axons press into polygons
and their sheaths meet in a double layer, as in tissue. Outlines are drawn with a one-pixel
linear ramp of the signed distance (the pixel's covered area), so edges are anti-aliased.

Acquisition, with the default noise (additive, zero-mean Gaussian, in units of the [0, 1] range;
the clean truth's std is about 0.25, so both noise variances stay well below the signal's, as the
no-clean-reference training assumes):

- ``hr_clean``: the truth at the HR pixel size, blurred by the HR PSF (σ = 0.8 px);
- ``hr``, ``hr2``: two scans of the same field, ``hr_clean`` + N(0, 0.035²) each, independent;
- ``lr``: the same field through a wider PSF (σ = 1.4 HR px), integrated over s×s HR pixels,
  then + N(0, 0.08²) per LR pixel (a fast, short-dwell scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from emsr.degradations import Degradation, add_gaussian_noise, gaussian_blur
from emsr.errors import DataError

_FAR = np.float32(1e4)  # signed distance of voxels no object reaches
_RAMP_MARGIN_PX = 3.0  # how far outside an outline its anti-aliasing and membrane line reach
_MEMBRANE_WIDTH_PX = 0.6
_MIN_INPLANE_PX = 16
_MAX_AXON_RADIUS = 60.0
_MAX_SMALL_RADIUS = 8.0


class _Kind(IntEnum):
    MYELINATED = 0
    UNMYELINATED = 1
    CELL = 2


@dataclass(frozen=True)
class PhantomSpec:
    """What to render and how it is "acquired". Sizes in HR voxels (z, y, x).

    PSF sigmas are in HR pixels; noise stds are in units of the [0, 1] intensity range, the LR
    one per LR pixel. `nuclei_per_mpx` is the expected number of large cells per 10⁶ HR pixels
    of section area (about 0.5 in a 512² field): rare, as in white matter.
    """

    shape: tuple[int, int, int]
    scale: int = 2
    seed: int = 0
    hr_voxel_nm: tuple[float, float, float] = (50.0, 15.0, 15.0)
    hr_psf_sigma_px: float = 0.8
    hr_noise_std: float = 0.035
    lr_psf_sigma_px: float = 1.4
    lr_noise_std: float = 0.08
    nuclei_per_mpx: float = 2.0

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"phantom shape must be three positive sizes (z, y, x), got {shape}")
        object.__setattr__(self, "shape", shape)
        if int(self.scale) != self.scale or self.scale < 1:
            raise DataError(f"phantom scale must be a positive integer, got {self.scale}")
        z, y, x = shape
        s = int(self.scale)
        if min(y, x) < max(_MIN_INPLANE_PX, s):
            raise DataError(f"phantom y and x must be at least {_MIN_INPLANE_PX} px, got {shape}")
        if y % s or x % s:
            fitted = (z, -(-y // s) * s, -(-x // s) * s)
            raise DataError(
                f"phantom y and x {(y, x)} must be multiples of scale {s}: use shape {fitted}"
            )
        if int(self.seed) != self.seed or self.seed < 0:
            raise DataError(f"phantom seed must be a non-negative integer, got {self.seed}")
        if len(self.hr_voxel_nm) != 3 or min(self.hr_voxel_nm) <= 0:
            raise DataError(f"hr_voxel_nm must be three positive sizes, got {self.hr_voxel_nm}")
        acquisition = (
            self.hr_psf_sigma_px,
            self.hr_noise_std,
            self.lr_psf_sigma_px,
            self.lr_noise_std,
            self.nuclei_per_mpx,
        )
        if min(acquisition) < 0:
            raise DataError("phantom PSF sigmas, noise stds and nucleus density must be >= 0")

    @property
    def lr_shape(self) -> tuple[int, int, int]:
        z, y, x = self.shape
        return (z, y // self.scale, x // self.scale)

    @property
    def lr_voxel_nm(self) -> tuple[float, float, float]:
        z, y, x = self.hr_voxel_nm
        return (float(z), float(y) * self.scale, float(x) * self.scale)


@dataclass
class PhantomVolumes:
    """The clean truth, two independent noisy HR scans and a noisy LR scan, all uint8 (z, y, x)."""

    hr_clean: np.ndarray
    hr: np.ndarray
    hr2: np.ndarray
    lr: np.ndarray
    hr_voxel_nm: tuple[float, float, float]
    lr_voxel_nm: tuple[float, float, float]


@dataclass
class _Objects:
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


def make_phantom(spec: PhantomSpec) -> PhantomVolumes:
    """Render the phantom of `spec` and acquire it at HR (twice) and LR; same seed, same volumes."""
    geometry_rng, texture_rng, hr_rng, hr2_rng, lr_rng = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(spec.seed).spawn(5)
    )
    objects = _layout(spec, geometry_rng)
    label, signed_distance = _tessellate(objects, spec.shape)
    fine, coarse = _texture(spec.shape, texture_rng)
    tissue = _shade(objects, label, signed_distance, fine, coarse)
    _add_mitochondria(tissue, label, objects, fine, geometry_rng)
    _add_vesicles(tissue, geometry_rng)
    np.clip(tissue, 0.0, 1.0, out=tissue)

    hr_clean = np.clip(gaussian_blur(tissue, spec.hr_psf_sigma_px), 0.0, 1.0)
    lr_scan = Degradation(
        psf_sigma_px=spec.lr_psf_sigma_px,
        scale=spec.scale,
        downsample_method="area",
        noise="gaussian",
        noise_sigma=spec.lr_noise_std,
    )
    return PhantomVolumes(
        hr_clean=_to_uint8(hr_clean),
        hr=_to_uint8(add_gaussian_noise(hr_clean, spec.hr_noise_std, hr_rng)),
        hr2=_to_uint8(add_gaussian_noise(hr_clean, spec.hr_noise_std, hr2_rng)),
        lr=_to_uint8(lr_scan.apply(tissue, lr_rng)),
        hr_voxel_nm=tuple(float(v) for v in spec.hr_voxel_nm),
        lr_voxel_nm=spec.lr_voxel_nm,
    )


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# --- layout: which objects exist, where, and how they drift through z -----------------------


def _layout(spec: PhantomSpec, rng: np.random.Generator) -> _Objects:
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
            np.full(len(cells[1]), _Kind.CELL),
            np.full(len(axon_radii), _Kind.MYELINATED),
            np.full(len(small_radii), _Kind.UNMYELINATED),
        ]
    ).astype(np.int8)
    mid_centre = np.concatenate([cells[0], axon_centres, small_centres]).astype(np.float32)
    radius = np.concatenate([cells[1], axon_radii, small_radii]).astype(np.float32)
    profile = _calibre(len(kind), sections, rng)
    is_cell = kind == _Kind.CELL
    profile[is_cell] = _sphere_profile(radius[is_cell], cells[2], sections, spec.hr_voxel_nm)
    elongation, angle, wobble = _outline_shapes(kind, rng)
    return _Objects(
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
    wobble[kind == _Kind.UNMYELINATED, 0] *= 2.5  # glial and bare processes are irregular
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
    myelinated, cell = kind == _Kind.MYELINATED, kind == _Kind.CELL
    unmyelinated = kind == _Kind.UNMYELINATED
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


# --- rendering ------------------------------------------------------------------------------


def _outline_distance(
    dy: np.ndarray,
    dx: np.ndarray,
    radius: np.ndarray,
    elongation: float,
    angle: float,
    wobble: np.ndarray,
) -> np.ndarray:
    """Signed distance (px, negative inside) to a wobbly ellipse, measured along the ray from
    its centre: exact for circles, and for an oblique cut it stretches the sheath with the axon."""
    cos_a, sin_a = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = dx * cos_a + dy * sin_a
    v = dy * cos_a - dx * sin_a
    reach = np.sqrt(u * u + v * v)
    safe = np.maximum(reach, np.float32(1e-3))
    c, s = u / safe, v / safe
    c = np.where(reach > 1e-3, c, np.float32(1.0))
    ellipse = radius / np.sqrt((c / elongation) ** 2 + (s * elongation) ** 2)
    amp2, phase2, amp3, phase3 = wobble
    cos2, sin2 = c * c - s * s, 2 * c * s
    cos3, sin3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
    outline = ellipse * (
        1
        + amp2 * (cos2 * np.cos(phase2) - sin2 * np.sin(phase2))
        + amp3 * (cos3 * np.cos(phase3) - sin3 * np.sin(phase3))
    )
    return reach - outline


def _patch(
    objects: _Objects, index: int, shape: tuple[int, int, int], extra: float
) -> tuple[slice, slice] | None:
    """The (y, x) box that holds object `index` in every section, `extra` px around it."""
    widest = objects.radius[index] * objects.elongation[index] * objects.profile[index].max()
    reach = widest * (1 + objects.wobble[index, [0, 2]].sum()) + extra
    centre = objects.centre[index]
    y0, x0 = np.floor(centre.min(axis=0) - reach).astype(int)
    y1, x1 = np.ceil(centre.max(axis=0) + reach).astype(int) + 1
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, shape[1]), min(x1, shape[2])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _local_offsets(centre: np.ndarray, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """(z, h, w) offsets of the box's pixels from a per-section centre of shape (z, 2)."""
    ys = np.arange(box[0].start, box[0].stop, dtype=np.float32)
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float32)
    dy = ys[None, :, None] - centre[:, 0, None, None]
    dx = xs[None, None, :] - centre[:, 1, None, None]
    return dy, dx


def _tessellate(objects: _Objects, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's nearest object and its signed distance to that object's region boundary.

    With d₁ ≤ d₂ the two smallest outline distances, the boundary shared with the runner-up lies
    about (d₂ - d₁)/2 away, so the distance to the own region is max(d₁, (d₁ - d₂)/2).
    """
    nearest = np.full(shape, len(objects), dtype=np.int32)
    best = np.full(shape, _FAR, dtype=np.float32)
    second = np.full(shape, _FAR, dtype=np.float32)
    for index in range(len(objects)):
        box = _patch(objects, index, shape, _RAMP_MARGIN_PX + 1)
        if box is None:
            continue
        dy, dx = _local_offsets(objects.centre[index], box)
        radius = (objects.radius[index] * objects.profile[index])[:, None, None]
        distance = _outline_distance(
            dy, dx, radius, objects.elongation[index], objects.angle[index], objects.wobble[index]
        )
        distance = np.where(radius > 0.5, distance, _FAR)
        best_box, second_box, nearest_box = best[:, *box], second[:, *box], nearest[:, *box]
        closer = distance < best_box
        np.minimum(second_box, np.where(closer, best_box, distance), out=second_box)
        np.copyto(best_box, distance, where=closer)
        np.copyto(nearest_box, np.int32(index), where=closer)
    own_region = np.maximum(best, np.float32(0.5) * (best - second))
    return nearest, own_region


def _texture(
    shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-std random textures: fine grain (filaments, ribosomes) and coarse mottling;
    both correlated over about one section in z, as 50 nm sections of the same tissue are."""
    textures = []
    for sigma in ((0.6, 0.8, 0.8), (1.0, 3.0, 3.0)):
        grain = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
        textures.append(grain / np.float32(grain.std() + 1e-6))
    return textures[0], textures[1]


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """The fraction of a pixel inside an outline: a one-pixel linear ramp (anti-aliasing)."""
    return np.clip(np.float32(0.5) - signed_distance, 0.0, 1.0)


def _membrane(signed_distance: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (signed_distance / np.float32(_MEMBRANE_WIDTH_PX)) ** 2)


def _shade(
    objects: _Objects,
    nearest: np.ndarray,
    own_region: np.ndarray,
    fine: np.ndarray,
    coarse: np.ndarray,
) -> np.ndarray:
    """Intensities from the tessellation: each voxel mixes background, its object's outer layer
    and its object's inside by covered area, then gets membranes and texture."""
    looks = objects.look
    local = {name: values[nearest] for name, values in looks.items()}
    inside = _coverage(own_region)
    core = _coverage(own_region + local["ring"])
    outside, layer = 1 - inside, inside - core

    def mix(outer: str, inner: str) -> np.ndarray:
        return looks[outer][-1] * outside + local[outer] * layer + local[inner] * core

    has_ring = local["ring"] > 0
    tone = mix("outer", "inner") - local["outer_line"] * _membrane(own_region)
    tone -= local["inner_line"] * _membrane(own_region + local["ring"]) * has_ring
    texture = mix("outer_fine", "inner_fine") * fine + mix("outer_coarse", "inner_coarse") * coarse
    return (tone + texture).astype(np.float32)


def _add_mitochondria(
    tissue: np.ndarray,
    nearest: np.ndarray,
    objects: _Objects,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Dark-grey ovals with cristae in about a third of the larger myelinated axons."""
    core_radius = objects.radius - objects.look["ring"][:-1]
    hosts = np.flatnonzero((objects.kind == _Kind.MYELINATED) & (core_radius > 6))
    for host in hosts[rng.random(len(hosts)) < 0.35]:
        _paint_mitochondrion(tissue, nearest, objects, fine, host, core_radius[host], rng)


def _paint_mitochondrion(
    tissue: np.ndarray,
    nearest: np.ndarray,
    objects: _Objects,
    fine: np.ndarray,
    host: int,
    core_radius: float,
    rng: np.random.Generator,
) -> None:
    """One mitochondrion: a stretch of 10–40 sections with rounded ends, at a fixed offset from
    its axon's centre (so it moves with the axon), painted only on the axon's own voxels."""
    depth = tissue.shape[0]
    radius = min(rng.uniform(0.22, 0.42) * core_radius, 12.0)
    room = max(core_radius - 1.3 * radius - 1.0, 0.0)
    offset = (rng.uniform(-1, 1, 2) * room / np.sqrt(2)).astype(np.float32)
    half_length = rng.uniform(5.0, 20.0)
    middle = rng.uniform(-half_length, depth - 1 + half_length)
    elongation, angle = rng.uniform(1.0, 1.35), rng.uniform(0, np.pi)
    wobble = np.array([0.05, rng.uniform(0, 2 * np.pi), 0.0, 0.0], np.float32)

    sections = np.arange(depth, dtype=np.float32)
    taper = np.sqrt(np.clip((half_length - np.abs(sections - middle)) / 2.0, 0.0, 1.0))
    present = np.flatnonzero(taper > 0)
    box = _patch(objects, host, tissue.shape, 2.0)
    if len(present) == 0 or box is None:
        return
    span = slice(present[0], present[-1] + 1)
    dy, dx = _local_offsets(objects.centre[host][span] + offset, box)
    distance = _outline_distance(
        dy, dx, (radius * taper[span])[:, None, None], elongation, angle, wobble
    )
    along = dx * np.float32(np.cos(angle)) + dy * np.float32(np.sin(angle))
    cristae = 0.09 * np.cos(along * np.float32(2 * np.pi / 4.0))
    look = 0.36 + cristae + 0.05 * fine[span, *box] - 0.12 * _membrane(distance)
    cover = _coverage(distance) * (nearest[span, *box] == host)
    region = tissue[span, *box]
    region += (look - region) * cover


def _add_vesicles(tissue: np.ndarray, rng: np.random.Generator) -> None:
    """Small dark rings (≈ 40 nm) scattered through the light and grey regions, not the myelin;
    thinner than a section, so each appears in one section only."""
    depth, height, width = tissue.shape
    count = rng.poisson(depth * height * width / 1500.0)
    positions = np.column_stack(
        [
            rng.integers(0, depth, count),
            rng.integers(3, height - 3, count),
            rng.integers(3, width - 3, count),
        ]
    )
    positions = positions[tissue[tuple(positions.T)] > 0.38]
    offsets = np.arange(-3, 4)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    ring_radius = rng.uniform(1.2, 2.0, len(positions))[:, None, None]
    ring = -0.28 * np.exp(-0.5 * ((np.hypot(oy, ox)[None] - ring_radius) / 0.5) ** 2)
    z, y, x = positions.T
    flat = (z[:, None, None] * height + y[:, None, None] + oy[None]) * width + x[:, None, None]
    np.add.at(tissue.reshape(-1), (flat + ox[None]).ravel(), ring.astype(np.float32).ravel())
