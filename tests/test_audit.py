"""The metric audit: global PSNR/SSIM consistent with whole-volume metrics, the FRC of two HR
scans where the phantom's PSF and noise put it, refused mismatches, readable plots, the flow;
blockwise on a real Dask cluster, resumable, with an ROI and a partial reference placed by its
origin."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.signal.windows import hann

from emsr.errors import DataError
from emsr.metrics import frc_resolution, psnr, ssim
from emsr.phantom import PhantomSpec, PhantomVolumes, make_phantom
from flows.audit import AuditParams, audit_metrics_flow, headline
from flows.audit_plots import write_plots
from pipeline.audit.document import PSNR_IDENTICAL_DB
from pipeline.audit.grid import AuditGrid
from pipeline.audit.run import AuditRequest, AuditResult, audit
from pipeline.audit.scores import read_scores
from pipeline.errors import PlanError
from pipeline.geometry import Box
from pipeline.volumes import open_volume, write_array

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
def on_cluster(cluster_address: str):
    """AuditRequest on the session's Dask cluster."""
    return partial(AuditRequest, cluster=cluster_address)


@pytest.fixture(scope="module")
def hr_audit(urls, on_cluster, tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    """Scan 1 measured against the clean truth (PSNR, SSIM) and against scan 2 (FRC, map)."""
    request = on_cluster(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], reference2_url=urls["hr2"],
        sr2_url=urls["hr2"],
        out_dir=tmp_path_factory.mktemp("audit") / "out",
    )  # fmt: skip
    result = audit(request)
    write_plots(result)
    return result


def block_psnr(scores: dict[str, np.ndarray], index: int) -> float:
    box = Box.parse(block_box(scores, index))
    error = scores["squared_error"][index]
    return PSNR_IDENTICAL_DB if error == 0 else 10 * np.log10(UINT8_RANGE**2 * box.size / error)


def assert_steps(progress: list[tuple[int, int]], total: int) -> None:
    """Progress runs from 0 to `total` steps; the dispatcher reports at intervals, so steps
    may be reported together, but none twice."""
    done = [step for step, _ in progress]
    assert {steps for _, steps in progress} == {total}
    assert done[0] == 0 and done[-1] == total and done == sorted(set(done))


def block_box(scores: dict[str, np.ndarray], index: int) -> str:
    begin = [int(scores[f"{axis}0"][index]) for axis in "zyx"]
    end = [int(scores[f"{axis}1"][index]) for axis in "zyx"]
    return str(Box(tuple(begin), tuple(end)))


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: NaN and Infinity, which Python's json writes by default, fail."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_global_psnr_and_ssim_match_metrics_of_the_whole_volume(phantom, hr_audit) -> None:
    metrics = strict_json(hr_audit.metrics_path)
    assert metrics["block"] == [1, 64, 64]  # the default: a quarter of the shorter side
    assert metrics["blocks"] == 6 * 2 * 3
    assert len(read_scores(hr_audit.scores_path)["z0"]) == 6 * 2 * 3
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


def test_global_psnr_pools_squared_errors_over_blocks(phantom, urls, on_cluster, tmp_path):
    """With uneven blocks, global PSNR is still that of all voxels, not a mean of blocks."""
    request = on_cluster(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(4, 48, 64)
    )
    result = audit(request)
    metrics, scores = result.metrics, read_scores(result.scores_path)
    count = len(scores["z0"])
    whole = psnr(phantom.hr, phantom.hr_clean, UINT8_RANGE)
    assert count == metrics["blocks"] == 2 * 3 * 3
    assert metrics["psnr"] == pytest.approx(whole, rel=1e-12)
    assert abs(np.mean([block_psnr(scores, i) for i in range(count)]) - whole) > 1e-3

    for index in range(0, count, 5):
        box = Box.parse(block_box(scores, index)).slices()
        assert block_psnr(scores, index) == pytest.approx(
            psnr(phantom.hr[box], phantom.hr_clean[box], UINT8_RANGE), rel=1e-12
        )
        assert scores["ssim"][index] == pytest.approx(
            ssim(phantom.hr[box], phantom.hr_clean[box], UINT8_RANGE), abs=1e-12
        )
    sizes = [Box.parse(block_box(scores, i)).size for i in range(count)]
    assert sum(sizes) == phantom.hr.size
    assert metrics["ssim"] == pytest.approx(np.average(scores["ssim"], weights=sizes), abs=1e-12)


def test_thin_edge_strips_get_psnr_but_no_ssim(phantom, urls, on_cluster, tmp_path) -> None:
    """160 = 2 × 78 + 4: the 4 px strip is too thin for SSIM's 7 px window; its squared error
    still counts, so the global PSNR is that of every voxel."""
    request = on_cluster(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, block=(6, 128, 78)
    )
    result = audit(request)
    scores = read_scores(result.scores_path)
    boxes = [block_box(scores, i) for i in range(len(scores["z0"]))]
    assert boxes == ["0:6,0:128,0:78", "0:6,0:128,78:156", "0:6,0:128,156:160"]
    assert np.isnan(scores["ssim"][2]) and np.isfinite(scores["ssim"][:2]).all()
    assert result.metrics["psnr"] == pytest.approx(
        psnr(phantom.hr, phantom.hr_clean, UINT8_RANGE), rel=1e-12
    )


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


def test_second_scans_of_different_shapes_are_refused_naming_both(phantom, urls, tmp_path):
    cropped = str(tmp_path / "cropped.zarr")
    write_array(cropped, phantom.hr2[:, :, :144], phantom.hr_voxel_nm)
    request = AuditRequest(sr_url=urls["hr"], sr2_url=cropped, out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="shape") as refused:
        audit(request)
    message = str(refused.value)
    assert cropped in message and urls["hr"] in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_volumes_of_different_voxel_sizes_are_refused(phantom, urls, tmp_path) -> None:
    coarser = str(tmp_path / "coarser.zarr")
    write_array(coarser, phantom.hr2, (50.0, 30.0, 30.0))
    for role in ("sr2_url", "reference_url"):
        request = AuditRequest(sr_url=urls["hr"], out_dir=tmp_path / "out", **{role: coarser})
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


@pytest.mark.parametrize("name", ["quality_heatmap.png", "quality_map.png", "frc.png"])
def test_plots_are_readable_pngs(hr_audit, name: str) -> None:
    path = hr_audit.metrics_path.parent / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    colours = len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))
    assert 500 <= width <= 2000 and 300 <= height <= 2000
    assert colours > 50  # a drawn plot (colour map, curves, text), not a blank canvas


def test_identical_volumes_write_capped_psnr_as_valid_json(urls, on_cluster, tmp_path) -> None:
    result = audit(on_cluster(sr_url=urls["hr"], reference_url=urls["hr"], out_dir=tmp_path))
    metrics = strict_json(result.metrics_path)
    assert metrics["psnr"] == PSNR_IDENTICAL_DB and metrics["ssim"] == pytest.approx(1.0)
    assert set(read_scores(result.scores_path)["squared_error"]) == {0.0}


def test_without_reference_psnr_is_null_and_the_map_uses_the_second_sr(
    phantom, urls, on_cluster, tmp_path
) -> None:
    progress: list[tuple[int, int]] = []
    request = on_cluster(sr_url=urls["hr"], sr2_url=urls["hr2"], out_dir=tmp_path)
    result = audit(request, on_progress=lambda done, total: progress.append((done, total)))
    metrics = strict_json(result.metrics_path)
    assert metrics["psnr"] is None and metrics["ssim"] is None and metrics["blocks"] == 36
    assert list(metrics["frc"]) == ["sr_vs_sr2"]
    assert metrics["frc_resolution_nm"] == metrics["frc"]["sr_vs_sr2"]["resolution_nm"]
    assert metrics["inputs"] == {
        "sr": urls["hr"], "reference": None, "reference2": None, "sr2": urls["hr2"], "lr": None,
    }  # fmt: skip
    # 6 sections of 1 unit (128 × 128 px: 2 × 2 blocks) and 1 (128 × 32), then the global FRC
    assert_steps(progress, 13)

    quality_map = open_volume(result.quality_map_path)
    assert quality_map.info.shape == (6, 2, 3)  # one voxel per audit block
    assert quality_map.info.voxel_size_nm == (50.0, 64 * 15.0, 64 * 15.0)
    values = quality_map.read((slice(None),) * 3)
    box = (slice(2, 3), slice(64, 128), slice(0, 64))  # block (2, 1, 0)
    expected = frc_resolution(phantom.hr[box], phantom.hr2[box], 15.0)
    assert values[2, 1, 0] == pytest.approx(expected, rel=1e-6)
    assert metrics["quality_map"]["median_nm"] == pytest.approx(float(np.median(values)), 1e-6)


def test_units_are_whole_chunks_so_each_chunk_is_read_once(urls) -> None:
    """Chunks here are whole sections (1, 128, 160): blocks of (1, 64, 80) are grouped into
    units of one chunk each, so every chunk is read once, by one task."""
    sr = open_volume(urls["hr"]).info
    grid = AuditGrid.build(sr.shape, (1, 64, 80), sr.read_chunk, Box.from_shape(sr.shape))
    units = [grid.plan.planned(index).write for index in grid.plan.indices()]
    assert [str(box) for box in units] == [f"{z}:{z + 1},0:128,0:160" for z in range(6)]
    cells = [str(box) for _, box in grid.blocks_in(units[0])]
    assert cells == ["0:1,0:64,0:80", "0:1,0:64,80:160", "0:1,64:128,0:80", "0:1,64:128,80:160"]


def write_precomputed(url: str, array: np.ndarray, voxel_nm, offset_zyx) -> None:
    """A raw precomputed volume whose first voxel lies at `offset_zyx` (its voxel_offset)."""
    path = Path(url.removeprefix("precomputed://file://"))
    path.mkdir(parents=True)
    scale = {
        "key": "s0", "resolution": list(voxel_nm[::-1]), "size": list(array.shape[::-1]),
        "voxel_offset": list(offset_zyx[::-1]), "chunk_sizes": [[32, 32, 1]], "encoding": "raw",
    }  # fmt: skip
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "num_channels": 1,
            "data_type": array.dtype.name, "scales": [scale]}  # fmt: skip
    (path / "info").write_text(json.dumps(info))
    open_volume(url).write((slice(None),) * 3, array)


def test_a_partial_reference_is_placed_by_its_origin(phantom, urls, on_cluster, tmp_path):
    """An HR reference of part of the field (sections 2-5, y 40-120, x 70-150) is placed by its
    voxel_offset; only that box is audited, against the right voxels."""
    box = Box((2, 40, 70), (5, 120, 150))
    reference = f"precomputed://file://{tmp_path}/partial"
    write_precomputed(reference, phantom.hr_clean[box.slices()], phantom.hr_voxel_nm, box.begin)
    request = on_cluster(
        sr_url=urls["hr"], reference_url=reference, out_dir=tmp_path / "out", block=(1, 64, 64)
    )
    result = audit(request)
    metrics, scores = result.metrics, read_scores(result.scores_path)
    assert metrics["region"] == metrics["reference_box"] == str(box)
    assert metrics["psnr"] == pytest.approx(
        psnr(phantom.hr[box.slices()], phantom.hr_clean[box.slices()], UINT8_RANGE), rel=1e-12
    )
    boxes = {block_box(scores, i) for i in range(len(scores["z0"]))}
    assert boxes == {
        f"{z}:{z + 1},{y},{x}" for z in range(2, 5)
        for y, x in (("40:64", "70:128"), ("40:64", "128:150"),
                     ("64:120", "70:128"), ("64:120", "128:150"))
    }  # fmt: skip

    elsewhere = f"precomputed://file://{tmp_path}/elsewhere"
    write_precomputed(elsewhere, phantom.hr_clean[:1, :16, :16], phantom.hr_voxel_nm, (9, 0, 0))
    with pytest.raises(DataError, match="does not overlap"):
        audit(replace(request, reference_url=elsewhere))


def test_an_roi_audits_only_its_blocks_and_a_rerun_resumes(phantom, urls, on_cluster, tmp_path):
    roi = Box((0, 0, 0), (3, 128, 128))
    request = on_cluster(
        sr_url=urls["hr"], reference_url=urls["hr_clean"], out_dir=tmp_path, roi=roi
    )
    first: list[tuple[int, int]] = []
    result = audit(request, on_progress=lambda done, total: first.append((done, total)))
    assert result.metrics["region"] == str(roi) and result.metrics["blocks"] == 3 * 2 * 2
    assert result.metrics["psnr"] == pytest.approx(
        psnr(phantom.hr[roi.slices()], phantom.hr_clean[roi.slices()], UINT8_RANGE), rel=1e-12
    )
    assert_steps(first, 3)  # 3 units of one section each

    again: list[tuple[int, int]] = []
    rerun = audit(request, on_progress=lambda done, total: again.append((done, total)))
    assert again == [(0, 3), (3, 3)]  # every unit was measured and recorded: none is redone
    assert rerun.metrics == result.metrics

    whole = audit(replace(request, roi=None))  # the same store: only new units are measured
    assert whole.metrics["blocks"] == 36
    assert whole.metrics["psnr"] == pytest.approx(
        psnr(phantom.hr, phantom.hr_clean, UINT8_RANGE), rel=1e-12
    )


def test_flow_returns_global_metrics_and_fails_cleanly(
    prefect_api, urls, cluster_address, tmp_path
):
    params = AuditParams(
        sr_url=urls["hr"],
        reference_url=urls["hr_clean"],
        reference2_url=urls["hr2"],
        sr2_url=urls["hr2"],
        out=str(tmp_path / "audit"),
        cluster=cluster_address,
    )
    result = audit_metrics_flow(params)
    written = strict_json(Path(result["metrics_json"]))
    assert result["psnr"] == written["psnr"] and result["ssim"] == written["ssim"]
    assert result["frc_resolution_nm"] == written["frc_resolution_nm"]
    assert headline(result).startswith(f"PSNR {written['psnr']:.2f} dB, SSIM")
    assert Path(result["quality_map_plot"]).is_file() and result["quality_map"]["blocks"] == 36

    mismatched = params.model_copy(update={"reference_url": str(tmp_path / "missing.zarr")})
    state = audit_metrics_flow(mismatched, return_state=True)
    assert state.is_failed() and "no volume at" in state.message
