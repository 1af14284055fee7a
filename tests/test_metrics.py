"""PSNR and SSIM against scikit-image's reference; FRC against images of known band limit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from emsr.errors import DataError
from emsr.metrics import frc_curve, frc_resolution, half_bit_threshold, psnr, ssim

PIXEL_NM = 4.0
CUTOFF = 0.2  # cycles per pixel
NOISE = 1.0  # standard deviation, equal to the signal's


def band_limited(shape: tuple[int, int], cutoff: float, rng: np.random.Generator) -> np.ndarray:
    """Random phases under an ideal low-pass: a flat spectrum up to `cutoff`, zero above.

    A flat amplitude (rather than filtered white noise) gives every ring the same expected
    signal power, so a low ring of few pixels cannot come out nearly empty by chance.
    """
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    phases = np.exp(2j * np.pi * rng.random(shape))
    signal = np.real(np.fft.ifft2(phases * (np.hypot(fy, fx) <= cutoff)))
    return signal / signal.std()


def noisy_pair(shape: tuple[int, ...], noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two scans of one band-limited field (2-D, or per section in 3-D) with independent noise."""
    rng = np.random.default_rng(seed)
    sections = shape[:-2] or (1,)
    field = np.stack([band_limited(shape[-2:], CUTOFF, rng) for _ in range(np.prod(sections))])
    field = field.reshape(shape)
    return field + noise * rng.standard_normal(shape), field + noise * rng.standard_normal(shape)


def reference_pairs() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """Random and structured images, at several data ranges, float and uint8."""
    rng = np.random.default_rng(1)
    camera = skdata.camera()[128:320, 160:384]
    noisy_camera = np.clip(camera + rng.normal(0, 12, camera.shape), 0, 255).astype(np.uint8)
    y, x = np.mgrid[:96, :128]
    rings = np.sin(np.hypot(y - 40, x - 70) / 3.0) * np.exp(-x / 90)
    uniform = rng.random((80, 90))
    return [
        ("camera uint8", camera, noisy_camera, 255.0),
        ("camera float", camera / 255.0, noisy_camera / 255.0, 1.0),
        ("rings", rings, rings + rng.normal(0, 0.2, rings.shape), 2.0),
        ("uniform random", uniform, np.clip(uniform + rng.normal(0, 0.1, (80, 90)), 0, 1), 1.0),
        ("large range", 1000.0 * uniform, 1000.0 * rng.random(uniform.shape), 4000.0),
        ("small range", 1e-3 * rings, 1e-3 * np.roll(rings, 2, axis=1), 2e-3),
    ]


@pytest.mark.parametrize("name, a, b, data_range", reference_pairs())
def test_psnr_matches_skimage(name: str, a: np.ndarray, b: np.ndarray, data_range: float) -> None:
    expected = peak_signal_noise_ratio(a, b, data_range=data_range)
    assert psnr(a, b, data_range) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name, a, b, data_range", reference_pairs())
def test_ssim_matches_skimage(name: str, a: np.ndarray, b: np.ndarray, data_range: float) -> None:
    expected = structural_similarity(a, b, data_range=data_range)
    assert ssim(a, b, data_range) == pytest.approx(expected, abs=1e-4)


def test_identical_images_have_infinite_psnr_and_unit_ssim() -> None:
    image = np.random.default_rng(2).random((32, 32))
    assert psnr(image, image.copy(), 1.0) == float("inf")
    assert ssim(image, image.copy(), 1.0) == pytest.approx(1.0)


def test_ssim_of_stack_is_mean_of_section_ssims() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((3, 40, 50))
    b = np.clip(a + rng.normal(0, [[[0.05]], [[0.2]], [[0.5]]], a.shape), 0, 1)
    sections = [structural_similarity(a[z], b[z], data_range=1.0) for z in range(3)]
    assert ssim(a, b, 1.0) == pytest.approx(np.mean(sections), abs=1e-4)


@pytest.mark.parametrize("shape", [(256, 256), (192, 320)])
@pytest.mark.parametrize("threshold", ["1/7", "half_bit"])
def test_frc_recovers_known_band_limit(shape: tuple[int, int], threshold: str) -> None:
    """Resolution ≈ pixel / cutoff within 10 %; the Hann window shifts it by ~3 % at 256 px."""
    a, b = noisy_pair(shape, noise=NOISE, seed=4)
    resolution = frc_resolution(a, b, PIXEL_NM, threshold)
    assert resolution == pytest.approx(PIXEL_NM / CUTOFF, rel=0.10)


@pytest.mark.parametrize("threshold", ["1/7", "half_bit"])
def test_frc_resolution_is_where_the_interpolated_curve_meets_the_threshold(
    threshold: str,
) -> None:
    a, b = noisy_pair((96, 96), noise=NOISE, seed=11)
    curve = frc_curve(a, b)
    limit = curve.half_bit_threshold if threshold == "half_bit" else 1 / 7
    crossing = PIXEL_NM / frc_resolution(a, b, PIXEL_NM, threshold)
    ring = np.searchsorted(curve.frequency, crossing)
    assert curve.frequency[ring - 1] < crossing < curve.frequency[ring]
    margin = np.interp(crossing, curve.frequency, curve.correlation - limit)
    assert margin == pytest.approx(0.0, abs=1e-9)


def test_frc_ignores_the_jump_between_opposite_edges() -> None:
    """A ramp is not periodic: unwindowed, its edge jump would correlate at every frequency."""
    a, b = noisy_pair((256, 256), noise=NOISE, seed=10)
    ramp = np.linspace(0.0, 20.0, 256)[None, :] + np.linspace(0.0, 10.0, 256)[:, None]
    resolution = frc_resolution(a + ramp, b + ramp, PIXEL_NM)
    assert resolution == pytest.approx(PIXEL_NM / CUTOFF, rel=0.10)


def test_frc_search_skips_the_lowest_rings() -> None:
    """Slow shading that differs between scans decorrelates rings 1-2 but says nothing of detail."""
    a, b = noisy_pair((256, 256), noise=NOISE, seed=12)
    x = np.arange(256)[None, :]
    shading_a, shading_b = (10 * np.cos(2 * np.pi * x / 256 + phase) for phase in (0.0, 1.6))
    assert frc_curve(a + shading_a, b + shading_b).correlation[1] < 1 / 7
    resolution = frc_resolution(a + shading_a, b + shading_b, PIXEL_NM)
    assert resolution == pytest.approx(PIXEL_NM / CUTOFF, rel=0.10)


def test_frc_is_high_inside_the_band_and_near_zero_above_it() -> None:
    a, b = noisy_pair((256, 256), noise=NOISE, seed=5)
    curve = frc_curve(a, b)
    inside = (curve.frequency > 0.02) & (curve.frequency < CUTOFF - 0.02)
    above = curve.frequency > CUTOFF + 0.02
    # The unit signal variance is spread over the disc of radius CUTOFF, so per frequency the
    # signal power is 1 / (π CUTOFF²) against a noise power of NOISE²; FRC = S / (S + N).
    signal_power = 1 / (np.pi * CUTOFF**2)
    expected = signal_power / (signal_power + NOISE**2)
    assert curve.correlation[inside].mean() == pytest.approx(expected, abs=0.05)
    assert curve.correlation[inside].min() > expected - 0.2
    assert abs(curve.correlation[above].mean()) < 0.02
    assert np.abs(curve.correlation[above]).max() < 0.2


def test_frc_of_independent_noise_is_near_zero_at_all_rings() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 256, 256))
    curve = frc_curve(a, b)
    rings = slice(1, None)
    # Without a window a ring of n pixels has noise σ = 1/√n; the Hann window correlates
    # neighbouring Fourier pixels and raises it to about 1.4/√n. Allow 5 σ.
    assert np.all(np.abs(curve.correlation[rings]) < 7 / np.sqrt(curve.pixels_per_ring[rings]))
    assert abs(curve.correlation[rings].mean()) < 0.01
    assert frc_resolution(a, b, PIXEL_NM) > 20 * PIXEL_NM


def test_frc_of_noise_free_copies_reports_nyquist_limit() -> None:
    image = band_limited((64, 64), 0.45, np.random.default_rng(7))
    assert frc_resolution(image, image.copy(), PIXEL_NM) == 2 * PIXEL_NM


def test_frc_frequencies_span_zero_to_nyquist_in_whole_rings() -> None:
    curve = frc_curve(np.ones((64, 64)), np.ones((64, 64)))
    np.testing.assert_allclose(curve.frequency, np.arange(33) / 64)
    assert curve.frequency[-1] == 0.5
    assert list(curve.pixels_per_ring[:3]) == [1, 8, 12]  # DC; radius 1 and √2; radius 2 and √5
    # Constant images have no power in any ring: correlation 0, not NaN.
    np.testing.assert_array_equal(curve.correlation, 0.0)


def test_half_bit_threshold_values() -> None:
    assert half_bit_threshold(1) == pytest.approx(1.0, abs=1e-4)
    assert half_bit_threshold(100) == pytest.approx((0.2071 + 0.19102) / (1.2071 + 0.09102))
    assert half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)
    curve = frc_curve(*noisy_pair((64, 64), noise=NOISE, seed=8))
    np.testing.assert_allclose(curve.half_bit_threshold, half_bit_threshold(curve.pixels_per_ring))
    assert np.all(
        np.diff(curve.half_bit_threshold[1:]) < 0.02
    )  # falls as rings grow (ring sizes wobble)


def test_frc_of_stack_averages_section_curves() -> None:
    a, b = noisy_pair((3, 128, 128), noise=NOISE, seed=9)
    stack = frc_curve(a, b)
    sections = [frc_curve(a[z], b[z]).correlation for z in range(3)]
    np.testing.assert_allclose(stack.correlation, np.mean(sections, axis=0))
    np.testing.assert_array_equal(stack.pixels_per_ring, frc_curve(a[0], b[0]).pixels_per_ring)
    assert frc_resolution(a, b, PIXEL_NM) == pytest.approx(PIXEL_NM / CUTOFF, rel=0.10)


@pytest.mark.parametrize(
    "measure",
    [
        lambda a, b: psnr(a, b, 1.0),
        lambda a, b: ssim(a, b, 1.0),
        frc_curve,
        lambda a, b: frc_resolution(a, b, PIXEL_NM),
    ],
    ids=["psnr", "ssim", "frc_curve", "frc_resolution"],
)
def test_mismatched_shapes_raise_data_error(measure: Callable[..., object]) -> None:
    with pytest.raises(DataError, match="same shape"):
        measure(np.zeros((32, 32)), np.zeros((32, 33)))


def test_invalid_inputs_raise_one_line_data_errors() -> None:
    image = np.zeros((32, 32))
    broken = image.copy()
    broken[3, 4] = np.nan
    cases = [
        (lambda: ssim(image, broken, 1.0), "NaN"),
        (lambda: frc_curve(image, np.full_like(image, np.inf)), "NaN or infinite"),
        (lambda: psnr(image, image + 1, 0.0), "data_range"),
        (lambda: ssim(np.zeros((5, 5)), np.zeros((5, 5)), 1.0), "at least 7 px"),
        (lambda: frc_curve(np.zeros(64), np.zeros(64)), "2-D image or a 3-D"),
        (lambda: frc_resolution(image, image, PIXEL_NM, threshold="1/2"), "threshold"),
        (lambda: frc_resolution(image, image, -1.0), "voxel_size_nm"),
    ]
    for call, message in cases:
        with pytest.raises(DataError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
