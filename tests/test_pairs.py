"""Training-pair stores: synthetic, real and denoised pairs, registration checks, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from emsr.degradations import Degradation, estimate_noise_sigma
from emsr.errors import DataError
from emsr.metrics import psnr
from emsr.phantom import PhantomVolumes
from flows.extract_pairs import ExtractPairsParams, extract_training_pairs_flow
from pipeline.pairs import PairRequest, estimate_offset, extract_pairs, read_pair_store
from pipeline.volumes import open_volume, write_array

ALL = (slice(None),) * 3


def read(url: str) -> np.ndarray:
    return open_volume(url).read(ALL)


def shifted(volume: np.ndarray, shift_yx: tuple[int, int]) -> np.ndarray:
    """`volume` with its content moved by `shift_yx` pixels in every section."""
    return ndimage.shift(volume, (0, *shift_yx), order=0, mode="reflect")


@pytest.fixture(scope="module")
def volumes(phantom: PhantomVolumes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """URLs of the phantom's clean HR and of an HR misregistered by (2, -3) HR px."""
    directory = tmp_path_factory.mktemp("pair-inputs")
    urls = {"hr_clean": str(directory / "hr_clean.zarr"), "hr_moved": str(directory / "moved.zarr")}
    write_array(urls["hr_clean"], phantom.hr_clean, phantom.hr_voxel_nm)
    write_array(urls["hr_moved"], shifted(phantom.hr, (2, -3)), phantom.hr_voxel_nm)
    return urls


def test_synthetic_pairs_have_lr_shape_and_requested_noise(phantom, volumes, tmp_path):
    calls: list[tuple[int, int]] = []
    request = PairRequest(
        volumes["hr_clean"],
        str(tmp_path / "pairs"),
        mode="synthetic",
        psf_sigma=1.0,
        noise="gaussian",
        noise_sigma=0.03,
        seed=1,
    )
    store = extract_pairs(request, on_progress=lambda done, total: calls.append((done, total)))

    lr, hr = open_volume(store.lr_url), open_volume(store.hr_url)
    assert lr.info.shape == (6, 64, 80) and hr.info.shape == (6, 128, 160)
    assert lr.info.voxel_size_nm == (50.0, 30.0, 30.0)
    noiseless = Degradation(psf_sigma_px=1.0, scale=2, noise="none").apply(
        phantom.hr_clean / 255.0, np.random.default_rng(0)
    )
    noise = lr.read(ALL) / 255.0 - noiseless
    assert np.std(noise) == pytest.approx(0.03, rel=0.15)
    assert calls == [(z, 6) for z in range(7)]


def test_synthetic_pairs_are_reproducible_from_their_seed(volumes, tmp_path):
    def lr_of(name: str, seed: int) -> np.ndarray:
        request = PairRequest(volumes["hr_clean"], str(tmp_path / name), seed=seed)
        return read(extract_pairs(request).lr_url)

    first = lr_of("a", 0)
    assert np.array_equal(first, lr_of("b", 0))
    assert not np.array_equal(first, lr_of("c", 1))


def test_fitted_noise_matches_the_acquired_lr(phantom, lr_url, hr_url, tmp_path):
    request = PairRequest(
        hr_url, str(tmp_path / "pairs"), lr_url=lr_url, mode="synthetic", fit_noise=True
    )
    store = extract_pairs(request)
    acquired = estimate_noise_sigma(phantom.lr / 255.0)
    synthetic = estimate_noise_sigma(read(store.lr_url) / 255.0)
    assert synthetic == pytest.approx(acquired, rel=0.15)
    assert store.manifest["noise_fit"]["added"] < store.manifest["noise_fit"]["acquired_lr"]


def test_registration_recovers_a_known_shift(phantom):
    moved = shifted(phantom.hr, (2, -3))
    dy, dx, confidence = estimate_offset(phantom.lr, moved, 2)
    assert dy == pytest.approx(1.0, abs=0.2) and dx == pytest.approx(-1.5, abs=0.2)
    assert confidence > 0.8
    aligned = estimate_offset(phantom.lr[0], phantom.hr[0], 2)
    assert max(abs(aligned.dy), abs(aligned.dx)) < 0.2


def test_registration_has_no_confidence_in_unrelated_images(phantom):
    unrelated = phantom.hr[:, ::-1, ::-1]
    assert estimate_offset(phantom.lr, unrelated, 2).confidence < 0.3


def test_real_mode_refuses_a_misregistered_pair(lr_url, volumes, tmp_path):
    request = PairRequest(volumes["hr_moved"], str(tmp_path / "pairs"), lr_url=lr_url)
    with pytest.raises(DataError, match=r"offset by \(\+1\.\d\d, -1\.\d\d\) LR px.*register"):
        extract_pairs(request)
    assert not (tmp_path / "pairs").exists()


def test_real_mode_copies_an_aligned_pair(phantom, lr_url, hr_url, tmp_path):
    store = extract_pairs(PairRequest(hr_url, str(tmp_path / "pairs"), lr_url=lr_url))
    assert store.manifest["mode"] == "real"
    assert max(map(abs, store.manifest["offset_lr_px"])) < 0.2
    assert np.array_equal(read(store.lr_url), phantom.lr)
    assert np.array_equal(read(store.hr_url), phantom.hr)


def test_denoised_mode_brings_the_hr_closer_to_the_truth(phantom, lr_url, hr_url, tmp_path):
    request = PairRequest(hr_url, str(tmp_path / "pairs"), lr_url=lr_url, mode="denoised")
    store = extract_pairs(request)
    truth = phantom.hr_clean.astype(float)
    denoised = read(store.hr_url).astype(float)
    assert psnr(denoised, truth, 255) > psnr(phantom.hr.astype(float), truth, 255) + 2.0
    assert np.array_equal(read(store.lr_url), phantom.lr)
    assert store.manifest["denoiser"]["patch_size"] == 5


def test_manifest_round_trips_through_read_pair_store(lr_url, hr_url, tmp_path):
    directory = tmp_path / "pairs"
    written = extract_pairs(PairRequest(hr_url, str(directory), lr_url=lr_url))
    manifest = json.loads((directory / "manifest.json").read_text())
    store = read_pair_store(directory)
    assert store.manifest == manifest == written.manifest
    assert (store.lr_url, store.hr_url) == (str(directory / "lr.zarr"), str(directory / "hr.zarr"))
    assert store.scale == 2 and manifest["format"] == "emsr-pairs" and manifest["version"] == 1
    assert manifest["source"] == {"hr": hr_url, "lr": lr_url}
    assert open_volume(store.hr_url).info.voxel_size_nm == (50.0, 15.0, 15.0)


def test_missing_or_foreign_manifest_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a training-pair store"):
        read_pair_store(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not an emsr-pairs manifest"):
        read_pair_store(tmp_path)


def test_voxel_size_mismatch_is_refused(phantom, hr_url, tmp_path):
    wrong = str(tmp_path / "lr.zarr")
    write_array(wrong, phantom.lr, phantom.hr_voxel_nm)
    with pytest.raises(DataError, match=r"LR voxel size .* is not HR"):
        extract_pairs(PairRequest(hr_url, str(tmp_path / "pairs"), lr_url=wrong))
    assert not (tmp_path / "pairs").exists()


def test_an_existing_store_is_kept_without_overwrite(volumes, tmp_path):
    request = PairRequest(volumes["hr_clean"], str(tmp_path / "pairs"))
    extract_pairs(request)
    with pytest.raises(DataError, match="already holds a training-pair store"):
        extract_pairs(request)


def test_acquired_modes_need_an_lr_volume(hr_url, tmp_path):
    with pytest.raises(DataError, match="give --lr"):
        extract_pairs(PairRequest(hr_url, str(tmp_path / "pairs"), mode="denoised"))


def test_flow_writes_a_store_and_fails_with_one_line(prefect_api, lr_url, hr_url, tmp_path):
    params = ExtractPairsParams(hr_url=hr_url, lr_url=lr_url, out=str(tmp_path / "pairs"))
    result = extract_training_pairs_flow(params)
    assert result["mode"] == "real" and result["lr_shape"] == [6, 64, 80]
    assert Path(result["manifest"]).is_file()

    state = extract_training_pairs_flow(params, return_state=True)
    assert state.is_failed() and "already holds a training-pair store" in state.message
