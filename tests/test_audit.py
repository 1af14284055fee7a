"""The metric audit: global PSNR/SSIM consistent with whole-volume metrics, the FRC of two HR
scans where the phantom's PSF and noise put it, refused mismatches, readable plots, the flow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.signal.windows import hann

from emsr.errors import DataError
from emsr.metrics import psnr, ssim
from emsr.phantom import PhantomSpec, PhantomVolumes, make_phantom
from flows.audit import AuditParams, audit_metrics_flow, headline
from pipeline.audit import PSNR_IDENTICAL_DB, AuditRequest, AuditResult, audit
from pipeline.errors import PlanError
from pipeline.geometry import Box
from pipeline.volumes import Volume, write_array

CONFTEST_SPEC = PhantomSpec(shape=(6, 128, 160), scale=2, seed=3)  # conftest's `phantom`
UINT8_RANGE = 255.0
# Measured resolution vs the PSF-and-noise prediction. Over 10 noise draws of this field the
# measured 1/7 resolution scatters by 2 % (std; 5 sections of 128² px, ~250 px per ring at
# the crossing); the prediction's approximations (window applied before the blur, uint8
# clipping) move it by < 1 %. 6 % is 3 std plus that bias. A PSF 25 % narrower or wider
# moves the prediction by ~15 %, far outside it (checked below).
FRC_TOLERANCE = 0.06


@pytest.fixture(scope="module")
def urls(phantom: PhantomVolumes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("audit-inputs")
    written = {}
    for name in ("hr_clean", "hr", "hr2"):
        written[name] = str(directory / f"{name}.zarr")
        write_array(written[name], getattr(phantom, name), phantom.hr_voxel_nm)
    return written


@pytest.fixture(scope="module")
def hr_audit(urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    """Scan 1 measured against the clean truth (PSNR, SSIM) and against scan 2 (FRC)."""
    request = AuditRequest(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], reference2_url=urls["hr2"],
        out_dir=tmp_path_factory.mktemp("audit") / "out",
    )  # fmt: skip
    return audit(request)


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: NaN and Infinity, which Python's json writes by default, fail."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_global_psnr_and_ssim_match_metrics_of_the_whole_volume(phantom, hr_audit) -> None:
    metrics = strict_json(hr_audit.metrics_path)
    assert metrics["block"] == [1, 64, 64]  # the default: a quarter of the shorter side
    assert len(metrics["blocks"]) == 6 * 2 * 3
    assert metrics["psnr"] == pytest.approx(
        psnr(phantom.hr, phantom.hr_clean, UINT8_RANGE), rel=1e-12
    )
    # Each block's SSIM leaves out its own 3 px border, so the block mean differs from the
    # whole-section SSIM by that border's share (here 5e-4); exactness of the weighted mean
    # itself is checked below.
    assert metrics["ssim"] == pytest.approx(
        ssim(phantom.hr, phantom.hr_clean, UINT8_RANGE), abs=2e-3
    )
    assert metrics["data_range"] == UINT8_RANGE
    assert metrics["voxel_size_nm"] == list(phantom.hr_voxel_nm)


def test_global_psnr_pools_squared_errors_over_blocks(phantom, urls, tmp_path) -> None:
    """With uneven blocks, global PSNR is still that of all voxels, not a mean of blocks."""
    request = AuditRequest(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(4, 48, 64)
    )
    metrics = audit(request).metrics
    blocks = metrics["blocks"]
    whole = psnr(phantom.hr, phantom.hr_clean, UINT8_RANGE)
    assert len(blocks) == 2 * 3 * 3
    assert metrics["psnr"] == pytest.approx(whole, rel=1e-12)
    assert abs(np.mean([b["psnr"] for b in blocks]) - whole) > 1e-3

    for block in blocks[::5]:
        box = Box.parse(block["box"]).slices()
        assert block["psnr"] == pytest.approx(
            psnr(phantom.hr[box], phantom.hr_clean[box], UINT8_RANGE), rel=1e-12
        )
        assert block["ssim"] == pytest.approx(
            ssim(phantom.hr[box], phantom.hr_clean[box], UINT8_RANGE), abs=1e-12
        )
    sizes = [Box.parse(b["box"]).size for b in blocks]
    assert sum(sizes) == phantom.hr.size
    assert metrics["ssim"] == pytest.approx(
        np.average([b["ssim"] for b in blocks], weights=sizes), abs=1e-12
    )


def test_thin_edge_strips_join_their_neighbour_block(phantom, urls, tmp_path) -> None:
    """160 = 2 × 78 + 4: a 4 px strip is too thin for SSIM's 7 px window, so it is merged."""
    request = AuditRequest(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(6, 128, 78)
    )
    boxes = [b["box"] for b in audit(request).metrics["blocks"]]
    assert boxes == ["0:6,0:128,0:78", "0:6,0:128,78:160"]


def predicted_frc_resolution_px(tissue: np.ndarray, psf_sigma_px: float, noise_std: float) -> float:
    """Where the expected FRC of two scans `tissue ⊛ PSF + noise` falls below 1/7, in px.

    Per frequency ring, the expected correlation of two scans with independent white noise is
    S / (S + N): S the windowed tissue's power times the Gaussian PSF's |OTF|² =
    exp(-4π²σ²f²), N the noise power (std² times the summed squared Hann window per Fourier
    pixel). Averaged over sections and read off at 1/7 between rings, as the audit does.
    """
    side = tissue.shape[-1]
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij"))
    rings = np.rint(frequency * side).astype(int)
    inside = rings <= side // 2
    window = np.outer(hann(side), hann(side))
    centred = tissue - tissue.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred * window)) ** 2
    signal = power * np.exp(-4 * np.pi**2 * psf_sigma_px**2 * frequency**2)
    ring_signal = np.stack([np.bincount(rings[inside], s[inside]) for s in signal])
    ring_noise = np.bincount(rings[inside]) * noise_std**2 * np.sum(window**2)
    correlation = (ring_signal / (ring_signal + ring_noise)).mean(axis=0)
    margin = correlation[3:] - 1 / 7  # the audit's search skips DC and the two rings after it
    k = np.flatnonzero(margin < 0)[0]
    crossing_ring = 3 + k - 1 + margin[k - 1] / (margin[k - 1] - margin[k])
    return side / crossing_ring


def test_frc_of_two_hr_scans_matches_the_acquisition_psf_and_noise(phantom, hr_audit) -> None:
    """The audit's FRC of the phantom's two HR scans agrees with the resolution that the
    phantom's Gaussian PSF and noise predict, given its unblurred tissue."""
    assert np.array_equal(make_phantom(CONFTEST_SPEC).hr, phantom.hr), "conftest changed"
    metrics = strict_json(hr_audit.metrics_path)
    frc = metrics["frc"]["sr_vs_reference2"]
    (y0, y1), (x0, x1) = (map(int, part.split(":")) for part in frc["crop_yx"].split(","))
    unblurred = make_phantom(replace(CONFTEST_SPEC, hr_psf_sigma_px=0.0)).hr_clean
    tissue = unblurred[frc["sections"], y0:y1, x0:x1].astype(np.float64)
    # uint8 scans: the noise std in grey levels, plus rounding's uniform 1/12 variance
    noise = np.sqrt((CONFTEST_SPEC.hr_noise_std * UINT8_RANGE) ** 2 + 1 / 12)
    pixel_nm = CONFTEST_SPEC.hr_voxel_nm[1]

    def predicted_nm(psf_sigma_px: float) -> float:
        return pixel_nm * predicted_frc_resolution_px(tissue, psf_sigma_px, noise)

    expected = predicted_nm(CONFTEST_SPEC.hr_psf_sigma_px)
    assert metrics["frc_resolution_nm"] == frc["resolution_nm"]
    assert frc["resolution_nm"] == pytest.approx(expected, rel=FRC_TOLERANCE)
    assert frc["resolution_half_bit_nm"] > frc["resolution_nm"]  # half-bit is the stricter
    for wrong in (0.75, 1.25):  # the tolerance tells the phantom's PSF from a 25 % other one
        other = predicted_nm(wrong * CONFTEST_SPEC.hr_psf_sigma_px)
        assert abs(other - expected) > 2 * FRC_TOLERANCE * expected


def test_volumes_of_different_shapes_are_refused_naming_both(phantom, urls, tmp_path) -> None:
    cropped = str(tmp_path / "cropped.zarr")
    write_array(cropped, phantom.hr[:, :, :144], phantom.hr_voxel_nm)
    request = AuditRequest(sr_url=urls["hr"], reference_url=cropped, out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="shape") as refused:
        audit(request)
    message = str(refused.value)
    assert cropped in message and urls["hr"] in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_volumes_of_different_voxel_sizes_are_refused(phantom, urls, tmp_path) -> None:
    coarser = str(tmp_path / "coarser.zarr")
    write_array(coarser, phantom.hr2, (50.0, 30.0, 30.0))
    request = AuditRequest(sr_url=urls["hr"], sr2_url=coarser, out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="voxel size") as refused:
        audit(request)
    assert coarser in str(refused.value) and urls["hr"] in str(refused.value)


def test_an_audit_without_anything_to_compare_is_refused(urls, tmp_path) -> None:
    with pytest.raises(DataError, match="nothing to audit"):
        audit(AuditRequest(sr_url=urls["hr"], out_dir=tmp_path))


def test_blocks_too_small_for_ssim_are_refused(urls, tmp_path) -> None:
    request = AuditRequest(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(1, 64, 6)
    )
    with pytest.raises(PlanError, match="at least 7"):
        audit(request)


@pytest.mark.parametrize("name", ["quality_heatmap.png", "frc.png"])
def test_plots_are_readable_pngs(hr_audit, name: str) -> None:
    path = hr_audit.metrics_path.parent / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    colours = len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))
    assert 500 <= width <= 2000 and 300 <= height <= 2000
    assert colours > 50  # a drawn plot (colour map, curves, text), not a blank canvas


def test_identical_volumes_write_capped_psnr_as_valid_json(urls, tmp_path) -> None:
    result = audit(AuditRequest(sr_url=urls["hr"], reference_url=urls["hr"], out_dir=tmp_path))
    metrics = strict_json(result.metrics_path)
    assert metrics["psnr"] == PSNR_IDENTICAL_DB and metrics["ssim"] == pytest.approx(1.0)
    assert {b["psnr"] for b in metrics["blocks"]} == {PSNR_IDENTICAL_DB}


def test_without_reference_psnr_is_null_and_frc_uses_the_second_sr(urls, tmp_path) -> None:
    progress: list[tuple[int, int]] = []
    request = AuditRequest(sr_url=urls["hr"], sr2_url=urls["hr2"], out_dir=tmp_path)
    result = audit(request, on_progress=lambda done, total: progress.append((done, total)))
    metrics = strict_json(result.metrics_path)
    assert metrics["psnr"] is None and metrics["ssim"] is None and metrics["blocks"] == []
    assert list(metrics["frc"]) == ["sr_vs_sr2"]
    assert metrics["frc_resolution_nm"] == metrics["frc"]["sr_vs_sr2"]["resolution_nm"]
    assert metrics["inputs"] == {
        "sr": urls["hr"],
        "reference": None,
        "reference2": None,
        "sr2": urls["hr2"],
    }
    assert progress == [(0, 1), (1, 1)]
    assert result.heatmap_path.is_file() and result.frc_path.is_file()


def test_progress_counts_every_block_once(urls, tmp_path) -> None:
    progress: list[tuple[int, int]] = []
    request = AuditRequest(
        sr_url=urls["hr"],
        reference_url=urls["hr_clean"],
        reference2_url=urls["hr2"],
        out_dir=tmp_path,
        block=(3, 64, 80),
    )
    audit(request, on_progress=lambda done, total: progress.append((done, total)))
    # 2 × 2 × 2 blocks, then FRC of SR vs reference 2 and of reference vs reference 2
    assert progress == [(done, 10) for done in range(11)]


def test_each_stored_chunk_is_read_once_however_small_the_blocks(urls, tmp_path, monkeypatch):
    """Chunks here are whole sections (1, 128, 160); blocks of (1, 64, 80) share their reads."""
    reads: list[tuple[str, str]] = []
    original = Volume.read_async

    def recording(volume: Volume, box: tuple[slice, slice, slice]):
        reads.append((volume.info.url, ",".join(f"{p.start}:{p.stop}" for p in box)))
        return original(volume, box)

    monkeypatch.setattr(Volume, "read_async", recording)
    result = audit(
        AuditRequest(
            sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(1, 64, 80)
        )
    )
    assert len(result.metrics["blocks"]) == 6 * 2 * 2
    sections = [f"{z}:{z + 1},0:128,0:160" for z in range(6)]
    assert sorted(reads) == sorted(
        (url, box) for url in (urls["hr"], urls["hr_clean"]) for box in sections
    )


def test_flow_returns_global_metrics_and_fails_cleanly(prefect_api, urls, tmp_path) -> None:
    params = AuditParams(
        sr_url=urls["hr"],
        reference_url=urls["hr_clean"],
        reference2_url=urls["hr2"],
        out=str(tmp_path / "audit"),
    )
    result = audit_metrics_flow(params)
    written = strict_json(Path(result["metrics_json"]))
    assert result["psnr"] == written["psnr"] and result["ssim"] == written["ssim"]
    assert result["frc_resolution_nm"] == written["frc_resolution_nm"]
    assert headline(result).startswith(f"PSNR {written['psnr']:.2f} dB, SSIM")

    mismatched = params.model_copy(update={"reference_url": str(tmp_path / "missing.zarr")})
    state = audit_metrics_flow(mismatched, return_state=True)
    assert state.is_failed() and "no volume at" in state.message
