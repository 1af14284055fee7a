"""The synthetic degradation model: blur, downsampling, noise models and the noise estimate."""

from __future__ import annotations

import numpy as np
import pytest

from emsr.degradations import (
    Degradation,
    add_gaussian_noise,
    add_local_variance_noise,
    add_poisson_gaussian_noise,
    downsample,
    estimate_noise_sigma,
    gaussian_blur,
)
from emsr.phantom import PhantomSpec, make_phantom


@pytest.fixture(scope="module")
def em_section() -> np.ndarray:
    """A clean, PSF-limited EM-like section: edges and texture the noise estimate must ignore."""
    volumes = make_phantom(PhantomSpec(shape=(2, 256, 256), seed=11))
    return volumes.hr_clean[0].astype(np.float32) / 255


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_gaussian_blur_preserves_mean_and_smooths() -> None:
    img = random_image((128, 128))
    blurred = gaussian_blur(img, 2.0)
    assert blurred.mean() == pytest.approx(img.mean(), abs=1e-3)
    assert blurred.std() < 0.5 * img.std()


def test_gaussian_blur_never_mixes_sections() -> None:
    stack = random_image((3, 64, 64))
    blurred = gaussian_blur(stack, 1.5)
    for z in range(3):
        np.testing.assert_allclose(blurred[z], gaussian_blur(stack[z], 1.5), atol=1e-6)


def test_area_downsample_of_constant_is_the_constant() -> None:
    img = np.full((2, 60, 90), 0.37, np.float32)
    out = downsample(img, 3, "area")
    assert out.shape == (2, 20, 30)
    np.testing.assert_allclose(out, 0.37, atol=1e-6)


def test_area_downsample_averages_blocks_and_crops_the_far_edge() -> None:
    img = np.arange(5 * 7, dtype=np.float32).reshape(5, 7) / 100
    out = downsample(img, 2, "area")
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(np.mean([0, 1, 7, 8]) / 100)
    assert out[1, 2] == pytest.approx(np.mean([18, 19, 25, 26]) / 100)


def test_bicubic_downsample_keeps_constants_and_matches_area_shape() -> None:
    img = np.full((3, 61, 45), 0.6, np.float32)
    out = downsample(img, 2, "bicubic")
    assert out.shape == downsample(img, 2, "area").shape == (3, 30, 22)
    np.testing.assert_allclose(out, 0.6, atol=1e-5)


def test_bicubic_downsample_stays_in_unit_range_at_hard_edges() -> None:
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1.0
    out = downsample(img, 3, "bicubic")
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_gaussian_noise_has_the_requested_std() -> None:
    img = np.full((256, 256), 0.5, np.float32)
    noisy = add_gaussian_noise(img, 0.05, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert (noisy - img).std() == pytest.approx(0.05, rel=0.03)
    assert abs((noisy - img).mean()) < 0.002


def test_poisson_gaussian_noise_variance_follows_intensity() -> None:
    rng = np.random.default_rng(1)
    photons, read = 200.0, 0.02
    for level in (0.2, 0.7):
        img = np.full((256, 256), level, np.float32)
        measured = add_poisson_gaussian_noise(img, photons, read, rng).var()
        assert measured == pytest.approx(level / photons + read**2, rel=0.08)


def test_local_variance_noise_std_scales_with_local_intensity() -> None:
    img = np.full((128, 256), 0.2, np.float32)
    img[:, 128:] = 0.8
    noisy = add_local_variance_noise(img, 0.1, np.random.default_rng(2))
    dark = (noisy - img)[:, 8:120].std()
    bright = (noisy - img)[:, 136:248].std()
    assert dark == pytest.approx(0.02, rel=0.05)
    assert bright == pytest.approx(0.08, rel=0.05)


def test_noise_is_reproducible_from_the_generator_seed() -> None:
    img = random_image((32, 32))
    first = add_gaussian_noise(img, 0.1, np.random.default_rng(5))
    again = add_gaussian_noise(img, 0.1, np.random.default_rng(5))
    other = add_gaussian_noise(img, 0.1, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.06])
def test_estimate_noise_sigma_recovers_known_sigma(em_section: np.ndarray, sigma: float) -> None:
    noisy = add_gaussian_noise(em_section, sigma, np.random.default_rng(3))
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.15)


def test_estimate_noise_sigma_is_small_on_a_clean_image(em_section: np.ndarray) -> None:
    assert estimate_noise_sigma(em_section) < 0.006


@pytest.mark.parametrize(
    ("shape", "scale", "method", "noise"),
    [
        ((96, 128), 2, "area", "gaussian"),
        ((4, 96, 128), 3, "bicubic", "poisson_gaussian"),
        ((2, 64, 64), 4, "area", "local_variance"),
        ((64, 64), 2, "bicubic", "none"),
    ],
)
def test_degradation_gives_lr_of_hr_shape_over_scale_in_unit_range(
    shape: tuple[int, ...], scale: int, method: str, noise: str
) -> None:
    hr = random_image(shape)
    degradation = Degradation(
        psf_sigma_px=1.0, scale=scale, downsample_method=method, noise=noise, noise_sigma=0.05
    )
    lr = degradation.apply(hr, np.random.default_rng(0))
    assert lr.shape == (*shape[:-2], shape[-2] // scale, shape[-1] // scale)
    assert lr.dtype == np.float32
    assert lr.min() >= 0.0 and lr.max() <= 1.0


def test_degradation_noise_matches_its_sigma() -> None:
    hr = np.full((128, 128), 0.5, np.float32)
    lr = Degradation(psf_sigma_px=1.0, scale=2, noise_sigma=0.04).apply(
        hr, np.random.default_rng(4)
    )
    assert lr.std() == pytest.approx(0.04, rel=0.05)


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": 0},
        {"psf_sigma_px": -1.0},
        {"downsample_method": "nearest"},
        {"noise": "speckle"},
        {"noise_sigma": -0.1},
    ],
)
def test_degradation_rejects_invalid_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        Degradation(**bad)
