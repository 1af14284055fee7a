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

import numpy as np

from emsr.degradations import Degradation, add_gaussian_noise, gaussian_blur
from emsr.errors import DataError
from emsr.phantom_layout import layout
from emsr.phantom_render import add_mitochondria, add_vesicles, grain_textures, shade, tessellate

_MIN_INPLANE_PX = 16


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


def make_phantom(spec: PhantomSpec) -> PhantomVolumes:
    """Render the phantom of `spec` and acquire it at HR (twice) and LR; same seed, same volumes."""
    geometry_rng, texture_rng, hr_rng, hr2_rng, lr_rng = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(spec.seed).spawn(5)
    )
    objects = layout(spec, geometry_rng)
    label, signed_distance = tessellate(objects, spec.shape)
    fine, coarse = grain_textures(spec.shape, texture_rng)
    tissue = shade(objects, label, signed_distance, fine, coarse)
    add_mitochondria(tissue, label, objects, fine, geometry_rng)
    add_vesicles(tissue, geometry_rng)
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
