"""The degradation model that turns an HR image into a synthetic LR one: blur, bin, add noise.

Synthetic training pairs (and the phantom's LR scan) come from these steps, so each is a small
function of float32 images in [0, 1], shaped (y, x) or (z, y, x). Super-resolution is in-plane:
a stack is treated as independent sections, never blurred or binned along z. Every random step
takes a `numpy.random.Generator`, so a pair is reproducible from its seed, and every step
returns float32 clipped to [0, 1], the range the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

DownsampleMethod = Literal["area", "bicubic"]
NoiseKind = Literal["none", "gaussian", "poisson_gaussian", "local_variance"]

# The 3×3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels planes and most smooth curvature; on white
# noise of std σ its response has std 6σ (the root of the sum of squared weights, √36).
_LAPLACIAN_RESPONSE_TO_UNIT_NOISE = 6.0
# Median absolute deviation of a standard normal: MAD / 0.6745 estimates σ.
_MAD_OF_UNIT_NORMAL = 0.6745


def _as_image(img: np.ndarray) -> np.ndarray:
    """float32 (y, x) or (z, y, x); other ranks have no in-plane axes to work on."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) or (z, y, x) image, got shape {img.shape}")
    return img


def _unit_range(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def gaussian_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane Gaussian PSF of `sigma_px` pixels; z (the section axis) is left alone.

    Reflecting edges keep the mean of the image (up to edge effects), so blur changes contrast
    and sharpness, never brightness.
    """
    img = _as_image(img)
    if sigma_px < 0:
        raise ValueError(f"PSF sigma must be >= 0 pixels, got {sigma_px}")
    if sigma_px == 0:
        return img.copy()
    sigma = (0.0,) * (img.ndim - 2) + (sigma_px, sigma_px)
    return ndimage.gaussian_filter(img, sigma, mode="reflect")


def _crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Drop the last rows/columns that do not fill a whole s×s block.

    Cropping at the far edge keeps the pixel grid anchored at the origin, so LR pixel (i, j)
    always covers HR pixels [s·i, s·i + s) × [s·j, s·j + s).
    """
    height, width = img.shape[-2:]
    return img[..., : height - height % scale, : width - width % scale]


def downsample(img: np.ndarray, scale: int, method: DownsampleMethod = "area") -> np.ndarray:
    """Shrink y and x by the integer `scale`; the output has ⌊y/s⌋ × ⌊x/s⌋ pixels per section.

    Sizes that are not multiples of `scale` are first cropped at the far edge (see
    `_crop_to_multiple`). ``area`` averages each s×s block, as a detector integrating over a
    coarser pixel does. ``bicubic`` is an anti-aliased bicubic resize (the usual synthetic
    degradation in SR papers); its overshoot at edges is clipped back to [0, 1].
    """
    img = _as_image(img)
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    img = _crop_to_multiple(img, scale)
    if scale == 1:
        return img.copy()
    height, width = img.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"image of {img.shape[-2:]} pixels holds no whole {scale}×{scale} block")
    out_shape = (height // scale, width // scale)
    if method == "area":
        blocks = img.reshape(*img.shape[:-2], out_shape[0], scale, out_shape[1], scale)
        return blocks.mean(axis=(-3, -1), dtype=np.float32)
    if method == "bicubic":
        sections = torch.from_numpy(np.ascontiguousarray(img)).reshape(-1, 1, height, width)
        resized = F.interpolate(
            sections, size=out_shape, mode="bicubic", align_corners=False, antialias=True
        )
        return _unit_range(resized.reshape(*img.shape[:-2], *out_shape).numpy())
    raise ValueError(f"unknown downsample method {method!r}: choose 'area' or 'bicubic'")


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white noise of std `sigma`, the same everywhere (detector/read noise)."""
    img = _as_image(img)
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return _unit_range(img + noise)


def add_poisson_gaussian_noise(
    img: np.ndarray, photons_at_white: float, read_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Shot noise plus read noise: counts ~ Poisson(img · photons_at_white), then + N(0, read²).

    The variance at intensity I is I / photons_at_white + read_sigma², so bright regions are
    noisier in absolute terms, as with a dwell-time-limited electron detector.
    """
    img = _as_image(img)
    if photons_at_white <= 0 or read_sigma < 0:
        raise ValueError(
            f"need photons_at_white > 0 and read_sigma >= 0, got {photons_at_white}, {read_sigma}"
        )
    counts = rng.poisson(np.clip(img, 0.0, 1.0) * photons_at_white).astype(np.float32)
    shot = counts / np.float32(photons_at_white)
    return add_gaussian_noise(shot, read_sigma, rng)


def add_local_variance_noise(
    img: np.ndarray, std_at_white: float, rng: np.random.Generator, window_px: float = 1.0
) -> np.ndarray:
    """Gaussian noise whose std is `std_at_white` × the local mean intensity (a "crappifier").

    The local mean is the image under an in-plane Gaussian of `window_px` pixels, so the noise
    level follows the structure rather than each pixel's own (already noisy) value.
    """
    img = _as_image(img)
    if std_at_white < 0:
        raise ValueError(f"std_at_white must be >= 0, got {std_at_white}")
    local_mean = np.clip(gaussian_blur(img, window_px), 0.0, 1.0)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _unit_range(img + noise * local_mean * np.float32(std_at_white))


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Robust std of additive white noise: MAD of the finest Laplacian residual, per section.

    The residual of the 3×3 kernel above is mostly noise away from edges; the median ignores
    the edges that remain. Fitting synthetic noise to a real LR scan starts from this value.
    """
    img = _as_image(img).astype(np.float64)
    if min(img.shape[-2:]) < 3:
        raise ValueError(f"need at least 3×3 pixels per section to estimate noise, got {img.shape}")
    rows = (img[..., :-2, :], img[..., 1:-1, :], img[..., 2:, :])
    row_filtered = rows[0] - 2.0 * rows[1] + rows[2]
    residual = row_filtered[..., :-2] - 2.0 * row_filtered[..., 1:-1] + row_filtered[..., 2:]
    mad = np.median(np.abs(residual))
    return float(mad / _MAD_OF_UNIT_NORMAL / _LAPLACIAN_RESPONSE_TO_UNIT_NOISE)


@dataclass(frozen=True)
class Degradation:
    """HR → LR: in-plane PSF, then s×s downsampling, then noise.

    `noise` picks the model and which parameters matter: ``gaussian`` uses `noise_sigma`;
    ``poisson_gaussian`` uses `photons_at_white` and `noise_sigma` as the read noise;
    ``local_variance`` uses `noise_sigma` as the std at white (intensity 1).
    """

    psf_sigma_px: float = 1.0
    scale: int = 2
    downsample_method: DownsampleMethod = "area"
    noise: NoiseKind = "gaussian"
    noise_sigma: float = 0.03
    photons_at_white: float = 100.0

    def __post_init__(self) -> None:
        if self.psf_sigma_px < 0:
            raise ValueError(f"psf_sigma_px must be >= 0, got {self.psf_sigma_px}")
        if self.scale < 1 or int(self.scale) != self.scale:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if self.downsample_method not in ("area", "bicubic"):
            raise ValueError(f"unknown downsample method {self.downsample_method!r}")
        if self.noise not in ("none", "gaussian", "poisson_gaussian", "local_variance"):
            raise ValueError(f"unknown noise kind {self.noise!r}")
        if self.noise_sigma < 0 or self.photons_at_white <= 0:
            raise ValueError("noise_sigma must be >= 0 and photons_at_white > 0")

    def apply(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A synthetic LR view of `hr`, (⌊y/s⌋, ⌊x/s⌋) per section, float32 in [0, 1]."""
        blurred = gaussian_blur(hr, self.psf_sigma_px)
        return self.add_noise(downsample(blurred, self.scale, self.downsample_method), rng)

    def add_noise(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """This degradation's noise alone, for images already at the LR pixel size."""
        if self.noise == "gaussian":
            return add_gaussian_noise(img, self.noise_sigma, rng)
        if self.noise == "poisson_gaussian":
            return add_poisson_gaussian_noise(img, self.photons_at_white, self.noise_sigma, rng)
        if self.noise == "local_variance":
            return add_local_variance_noise(img, self.noise_sigma, rng)
        return _unit_range(_as_image(img))
