"""Phantom rendering: objects to a labelled, anti-aliased, textured tissue volume in [0, 1],
with mitochondria and vesicles painted in."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from emsr.phantom_layout import Kind, Objects

_FAR = np.float32(1e4)  # signed distance of voxels no object reaches
_RAMP_MARGIN_PX = 3.0  # how far outside an outline its anti-aliasing and membrane line reach
_MEMBRANE_WIDTH_PX = 0.6


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
    objects: Objects, index: int, shape: tuple[int, int, int], extra: float
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


def tessellate(objects: Objects, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
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


def grain_textures(
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


def shade(
    objects: Objects,
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


def add_mitochondria(
    tissue: np.ndarray,
    nearest: np.ndarray,
    objects: Objects,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Dark-grey ovals with cristae in about a third of the larger myelinated axons."""
    core_radius = objects.radius - objects.look["ring"][:-1]
    hosts = np.flatnonzero((objects.kind == Kind.MYELINATED) & (core_radius > 6))
    for host in hosts[rng.random(len(hosts)) < 0.35]:
        _paint_mitochondrion(tissue, nearest, objects, fine, host, core_radius[host], rng)


def _paint_mitochondrion(
    tissue: np.ndarray,
    nearest: np.ndarray,
    objects: Objects,
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


def add_vesicles(tissue: np.ndarray, rng: np.random.Generator) -> None:
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
