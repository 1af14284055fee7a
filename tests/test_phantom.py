"""The EM-like phantom: its acquisitions, their noise, z continuity, speed and validation."""

from __future__ import annotations

import time

import numpy as np
import pytest

from emsr.errors import DataError
from emsr.phantom import PhantomSpec, PhantomVolumes, make_phantom

SPEC = PhantomSpec(shape=(12, 192, 192), scale=2, seed=3)


@pytest.fixture(scope="module")
def volumes() -> PhantomVolumes:
    return make_phantom(SPEC)


def unit(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((estimate - truth) ** 2)))


def test_volumes_have_expected_shapes_dtypes_and_voxel_sizes(volumes: PhantomVolumes) -> None:
    for hr_like in (volumes.hr_clean, volumes.hr, volumes.hr2):
        assert hr_like.shape == (12, 192, 192)
        assert hr_like.dtype == np.uint8
    assert volumes.lr.shape == (12, 96, 96)
    assert volumes.lr.dtype == np.uint8
    assert volumes.hr_voxel_nm == (50.0, 15.0, 15.0)
    assert volumes.lr_voxel_nm == (50.0, 30.0, 30.0)


def test_scale_three_gives_lr_a_third_of_hr_in_plane() -> None:
    spec = PhantomSpec(shape=(2, 96, 120), scale=3, seed=1)
    volumes = make_phantom(spec)
    assert volumes.lr.shape == (2, 32, 40)
    assert volumes.lr_voxel_nm == (50.0, 45.0, 45.0)


def test_same_seed_gives_identical_volumes() -> None:
    spec = PhantomSpec(shape=(3, 96, 96), seed=7)
    first, again = make_phantom(spec), make_phantom(spec)
    for name in ("hr_clean", "hr", "hr2", "lr"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))


def test_different_seeds_give_different_volumes() -> None:
    first = make_phantom(PhantomSpec(shape=(3, 96, 96), seed=7))
    other = make_phantom(PhantomSpec(shape=(3, 96, 96), seed=8))
    assert abs(correlation(unit(first.hr_clean), unit(other.hr_clean))) < 0.3


def test_truth_looks_like_myelinated_white_matter(volumes: PhantomVolumes) -> None:
    """Dark myelin, light axoplasm and grey background each take a real share of the field."""
    truth = unit(volumes.hr_clean)
    dark, light = np.mean(truth < 0.25), np.mean(truth > 0.6)
    grey = 1 - dark - light
    assert 0.15 < dark < 0.55
    assert 0.25 < light < 0.7
    assert grey > 0.05
    assert truth.std() > 0.15


def test_hr_scans_have_independent_zero_mean_noise(volumes: PhantomVolumes) -> None:
    truth = unit(volumes.hr_clean)
    noise, noise2 = unit(volumes.hr) - truth, unit(volumes.hr2) - truth
    assert abs(correlation(noise, noise2)) < 0.02
    assert abs(noise.mean()) < 0.002 and abs(noise2.mean()) < 0.002
    assert noise.std() == pytest.approx(SPEC.hr_noise_std, rel=0.1)


def test_noise_variance_is_below_signal_variance(volumes: PhantomVolumes) -> None:
    """The no-clean-reference assumption: both scans' noise is weak next to the signal."""
    truth = unit(volumes.hr_clean)
    assert (unit(volumes.hr) - truth).var() < 0.1 * truth.var()
    lr_truth = truth.reshape(12, 96, 2, 96, 2).mean(axis=(2, 4))
    assert (unit(volumes.lr) - lr_truth).var() < 0.5 * lr_truth.var()


def test_lr_is_a_noisier_blurrier_view_of_the_same_field(volumes: PhantomVolumes) -> None:
    truth = unit(volumes.hr_clean)
    lr_upsampled = unit(volumes.lr).repeat(2, axis=1).repeat(2, axis=2)
    assert correlation(lr_upsampled, truth) > 0.8
    assert psnr(lr_upsampled, truth) < psnr(unit(volumes.hr), truth) - 5
    lr_noise = unit(volumes.lr) - truth.reshape(12, 96, 2, 96, 2).mean(axis=(2, 4))
    hr_noise = unit(volumes.hr) - truth
    assert lr_noise.std() > 1.5 * hr_noise.std()


def test_sections_are_continuous_in_z() -> None:
    """Axons drift slowly: neighbours are near copies, sections 2 µm apart clearly differ."""
    truth = unit(make_phantom(PhantomSpec(shape=(40, 128, 128), seed=5)).hr_clean)
    adjacent = np.mean([correlation(truth[z], truth[z + 1]) for z in range(39)])
    distant = correlation(truth[0], truth[39])
    assert adjacent > 0.95
    assert distant < adjacent - 0.15


def test_make_phantom_is_fast() -> None:
    start = time.perf_counter()
    make_phantom(PhantomSpec(shape=(16, 256, 256), seed=0))
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    "shape, scale",
    [((4, 100, 96), 3), ((4, 96, 101), 2), ((4, 96, 96), 0), ((96, 96), 2), ((4, 8, 8), 2)],
)
def test_bad_shape_or_scale_raises_one_line_data_error(shape: tuple[int, ...], scale: int) -> None:
    with pytest.raises(DataError) as error:
        PhantomSpec(shape=shape, scale=scale)
    assert "\n" not in str(error.value)


def test_negative_seed_raises_data_error() -> None:
    with pytest.raises(DataError, match="seed"):
        PhantomSpec(shape=(2, 64, 64), seed=-1)


def test_indivisible_shape_error_suggests_a_fitting_shape() -> None:
    with pytest.raises(DataError, match=r"use shape \(4, 102, 96\)"):
        PhantomSpec(shape=(4, 100, 96), scale=3)
