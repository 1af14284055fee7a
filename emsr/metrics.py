"""Image-quality metrics: PSNR and SSIM against a reference, FRC between two noisy scans.

PSNR and SSIM need a reference, and in EM the reference is itself noisy, so they understate
quality. Fourier ring correlation needs none: two acquisitions of the same field with
independent noise correlate only where there is signal, so the frequency where their
correlation dies is a resolution. Inputs are 2-D sections (y, x) or 3-D stacks (z, y, x); a
stack is always measured section by section, since super-resolution is in-plane and z is
sampled far more coarsely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal.windows import hann

from emsr.errors import DataError

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
FRC_THRESHOLDS = ("1/7", "half_bit")
FRC_FIRST_RING = 3  # DC, and the two rings the Hann window's main lobe mixes with it


def _checked_pair(a: np.ndarray, b: np.ndarray, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (so integer differences cannot wrap), or one-line DataError."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise DataError(f"images to compare must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3) or min(a.shape[-2:]) < min_side:
        raise DataError(
            f"expected a 2-D image or a 3-D (z, y, x) stack at least {min_side} px in y and x, "
            f"got shape {a.shape}"
        )
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("images contain NaN or infinite values; mask or fill them before measuring")
    return a, b


def _checked_range(data_range: float) -> float:
    if not (np.isfinite(data_range) and data_range > 0):
        raise DataError(
            f"data_range must be a positive number (max - min possible), got {data_range}"
        )
    return float(data_range)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over all pixels; identical images give `inf`."""
    a, b = _checked_pair(a, b, min_side=1)
    data_range = _checked_range(data_range)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean structural similarity, as scikit-image computes it for 2-D images.

    A 7×7 uniform window, K1 = 0.01, K2 = 0.03, sample (n - 1) covariances, and the map's
    3-pixel border left out of the mean. A 3-D stack gives the mean over z of per-section SSIM
    (the window never spans sections), not a volumetric SSIM.
    """
    a, b = _checked_pair(a, b, min_side=SSIM_WINDOW)
    data_range = _checked_range(data_range)
    size = (1,) * (a.ndim - 2) + (SSIM_WINDOW, SSIM_WINDOW)
    mean_a, mean_b = uniform_filter(a, size), uniform_filter(b, size)
    sample = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    var_a = sample * (uniform_filter(a * a, size) - mean_a**2)
    var_b = sample * (uniform_filter(b * b, size) - mean_b**2)
    cov = sample * (uniform_filter(a * b, size) - mean_a * mean_b)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    similarity = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    border = SSIM_WINDOW // 2
    return float(similarity[..., border:-border, border:-border].mean())


def half_bit_threshold(pixels_per_ring: np.ndarray) -> np.ndarray:
    """The half-bit information curve of van Heel & Schatz (2005) for rings of n pixels."""
    root_n = np.sqrt(np.asarray(pixels_per_ring, dtype=np.float64))
    return (0.2071 + 1.9102 / root_n) / (1.2071 + 0.9102 / root_n)


@dataclass(frozen=True, eq=False)
class FRCCurve:
    """Correlation per frequency ring; `frequency` in cycles per pixel, from 0 to 0.5.

    Compared by identity (eq=False): element-wise array equality has no single truth value.
    """

    frequency: np.ndarray
    correlation: np.ndarray
    pixels_per_ring: np.ndarray
    half_bit_threshold: np.ndarray


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Each Fourier pixel's ring, in steps of 1 / min(shape) cycles per pixel.

    A rectangular image keeps all its pixels: its longer axis samples frequency more finely,
    and ring k holds every sample whose radius rounds to k / min(shape). Ring 0 is DC; the
    last ring is at Nyquist (0.5), and the corners beyond it are dropped (index -1).
    """
    side = min(shape)
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    rings = np.rint(np.hypot(fy, fx) * side).astype(np.int64)
    return np.where(rings <= side // 2, rings, -1), side // 2 + 1


def _apodised_spectra(image: np.ndarray) -> np.ndarray:
    """2-D FFT per section after removing the mean and tapering the edges with a Hann window.

    Without a taper, the jump between opposite edges of a periodically continued image puts
    correlated energy on the axes at every frequency and inflates the curve. Hann leaks little
    into neighbouring rings (a sharp band limit moves by ~2 rings; a Tukey window with a 25 %
    taper moved it by ~6), at the price of down-weighting the field's borders.
    """
    window = np.outer(hann(image.shape[-2]), hann(image.shape[-1]))
    centred = image - image.mean(axis=(-2, -1), keepdims=True)
    return np.fft.fft2(centred * window)


def frc_curve(a: np.ndarray, b: np.ndarray) -> FRCCurve:
    """Fourier ring correlation of two images of one field with independent noise.

    For 3-D stacks the curve is the mean of per-section curves; `pixels_per_ring` and the
    half-bit threshold are then those of one section (conservative: averaging lowers noise).
    A ring with no power in either image has correlation 0.
    """
    a, b = _checked_pair(a, b, min_side=8)
    rings, n_rings = _ring_index(a.shape[-2:])
    inside = rings >= 0
    labels = rings[inside]
    spectrum_a = _apodised_spectra(a.reshape(-1, *a.shape[-2:]))[:, inside]
    spectrum_b = _apodised_spectra(b.reshape(-1, *b.shape[-2:]))[:, inside]

    def ring_sums(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(labels, v, n_rings) for v in values])

    cross = ring_sums(np.real(spectrum_a * np.conj(spectrum_b)))
    power = np.sqrt(ring_sums(np.abs(spectrum_a) ** 2) * ring_sums(np.abs(spectrum_b) ** 2))
    correlation = np.divide(cross, power, out=np.zeros_like(cross), where=power > 0)
    pixels = np.bincount(labels, minlength=n_rings)
    return FRCCurve(
        frequency=np.arange(n_rings) / min(a.shape[-2:]),
        correlation=correlation.mean(axis=0),
        pixels_per_ring=pixels,
        half_bit_threshold=half_bit_threshold(pixels),
    )


def frc_resolution(
    a: np.ndarray, b: np.ndarray, voxel_size_nm: float, threshold: str = "1/7"
) -> float:
    """Resolution in nm: pixel size / the frequency where the FRC first drops below threshold.

    `threshold` is the fixed "1/7" or the "half_bit" curve. The crossing is interpolated
    linearly between rings. The search starts at ring 3: ring 0 is the (removed) mean, and
    rings 1-2 hold a few pixels each, mixed with it by the window and with slow shading that
    differs between scans, too noisy to end the search on. A curve already below at ring 3
    reports pixel size / ring 3's frequency (no resolution to speak of); one that never
    drops below reports 2 × pixel size, since then the sampling (Nyquist), not the image,
    limits it. 3-D stacks use the mean of the per-section curves.
    """
    if threshold not in FRC_THRESHOLDS:
        raise DataError(f"FRC threshold must be one of {FRC_THRESHOLDS}, got {threshold!r}")
    if not (np.isfinite(voxel_size_nm) and voxel_size_nm > 0):
        raise DataError(f"voxel_size_nm must be a positive pixel size in nm, got {voxel_size_nm}")
    curve = frc_curve(a, b)
    limit = curve.half_bit_threshold if threshold == "half_bit" else 1 / 7
    margin = (curve.correlation - limit)[FRC_FIRST_RING:]
    frequency = curve.frequency[FRC_FIRST_RING:]
    below = np.flatnonzero(margin < 0)
    if below.size == 0:
        return 2.0 * voxel_size_nm
    k = below[0]
    if k == 0:
        return float(voxel_size_nm / frequency[0])
    fraction = margin[k - 1] / (margin[k - 1] - margin[k])
    crossing = frequency[k - 1] + fraction * (frequency[k] - frequency[k - 1])
    return float(voxel_size_nm / crossing)
