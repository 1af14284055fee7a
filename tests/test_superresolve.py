"""The blockwise run end to end: seamless, block-shape independent, chunk-aligned, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume

from emsr.checkpoint import load_checkpoint
from emsr.inference import Predictor, super_resolve_image
from emsr.intensity import IntensityRange
from emsr.metrics import psnr
from pipeline.errors import LedgerError, PlanError, VolumeError
from pipeline.ledger import ledger_root
from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import open_volume, write_array

ALL = (slice(None),) * 3


def run(lr_url: str, output: Path | str, checkpoint: Path, cluster: str, **options) -> np.ndarray:
    options = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu", **options}
    request = SuperResolveRequest(
        str(lr_url), str(output), str(checkpoint), cluster=cluster, **options
    )
    super_resolve(request)
    return open_volume(str(output)).read(ALL)


def test_output_does_not_depend_on_block_shape(lr_url, checkpoint_dir, cluster_address, tmp_path):
    small = run(lr_url, tmp_path / "a.zarr", checkpoint_dir, cluster_address, block=(1, 64, 64))
    large = run(lr_url, tmp_path / "b.zarr", checkpoint_dir, cluster_address, block=(4, 96, 128))
    assert small.shape == (6, 128, 160)
    assert np.array_equal(small, large)


def test_blockwise_output_matches_whole_section_inference(
    phantom, lr_url, checkpoint_dir, cluster_address, tmp_path
):
    blockwise = run(lr_url, tmp_path / "sr.zarr", checkpoint_dir, cluster_address)
    predictor = Predictor(load_checkpoint(checkpoint_dir), "cpu")
    for z in (0, 5):
        whole = super_resolve_image(predictor, phantom.lr[z] / 255.0, halo=16)
        reference = IntensityRange(0, 255).denormalize(whole, np.uint8)
        assert psnr(blockwise[z].astype(float), reference.astype(float), 255) >= 50


def test_misaligned_block_is_refused_with_aligned_sizes(lr_url, checkpoint_dir, tmp_path):
    with pytest.raises(PlanError, match=r"use 2,32,64 or 2,64,64"):
        run(lr_url, tmp_path / "x.zarr", checkpoint_dir, "local", block=(2, 40, 64))
    assert not (tmp_path / "x.zarr").exists()


def test_rerun_skips_done_blocks_and_resumes_missing_ones(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    output = tmp_path / "sr.zarr"
    complete = run(lr_url, output, checkpoint_dir, cluster_address)
    ledger = next(Path(ledger_root(str(output))["path"]).iterdir())
    request = SuperResolveRequest(
        lr_url, str(output), str(checkpoint_dir), chunk=(1, 32, 32), block=(2, 64, 64), tile=32,
        device="cpu", cluster=cluster_address,
    )  # fmt: skip
    counts: list[tuple[int, int]] = []
    report = super_resolve(request, on_start=lambda total, done: counts.append((total, done)))
    assert counts == [(18, 18)] and report.blocks_computed == 0

    # Forget two blocks (as if the run had been killed before they were recorded) and zero
    # their data: a rerun computes exactly those two and restores the same output.
    volume = open_volume(str(output))
    volume.write((slice(0, 2), slice(0, 64), slice(0, 64)), np.zeros((2, 64, 64), np.uint8))
    volume.write((slice(4, 6), slice(64, 128), slice(128, 160)), np.zeros((2, 64, 32), np.uint8))
    store = zarr.open_array(str(ledger), mode="r+")
    done = store[:]
    done[[0, 17]] = 0
    store[:] = done
    report = super_resolve(request)
    assert report.blocks_computed == 2 and report.blocks_skipped == 16
    assert np.array_equal(open_volume(str(output)).read(ALL), complete)


def test_output_of_another_configuration_is_refused(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    output = tmp_path / "sr.zarr"
    run(lr_url, output, checkpoint_dir, cluster_address)
    with pytest.raises(LedgerError, match="another configuration"):
        run(lr_url, output, checkpoint_dir, cluster_address, halo=8)
    replaced = run(lr_url, output, checkpoint_dir, cluster_address, halo=8, overwrite=True)
    assert replaced.shape == (6, 128, 160)


def test_one_relative_input_path_in_two_directories_is_two_configurations(
    phantom, lr_url, checkpoint_dir, cluster_address, tmp_path, monkeypatch
):
    """The same words, `lr.zarr`, name different volumes from different directories: the
    second run must not take the first one's blocks as its own."""
    output = tmp_path / "sr.zarr"
    for name, volume in (("a", phantom.lr), ("b", 255 - phantom.lr)):
        (tmp_path / name).mkdir()
        write_array(str(tmp_path / name / "lr.zarr"), volume, phantom.lr_voxel_nm)
    monkeypatch.chdir(tmp_path / "a")
    run("lr.zarr", output, checkpoint_dir, cluster_address)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(LedgerError, match="another configuration"):
        run("lr.zarr", output, checkpoint_dir, cluster_address)


def test_precomputed_and_zarr_outputs_agree_through_independent_readers(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    zarr_out = tmp_path / "sr.zarr"
    precomputed_out = f"precomputed://file://{tmp_path / 'sr_precomputed'}"
    run(lr_url, zarr_out, checkpoint_dir, cluster_address)
    run(lr_url, precomputed_out, checkpoint_dir, cluster_address)
    by_zarr = zarr.open_group(str(zarr_out), mode="r")["0"][:]
    cloud = CloudVolume(f"file://{tmp_path / 'sr_precomputed'}", mip=0, progress=False)
    by_cloudvolume = np.asarray(cloud[:, :, :])[..., 0].transpose(2, 1, 0)
    assert np.array_equal(by_zarr, by_cloudvolume)
    assert tuple(cloud.resolution) == (15, 15, 50)


def test_output_records_voxel_size_and_provenance(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    output = tmp_path / "sr.zarr"
    run(lr_url, output, checkpoint_dir, cluster_address)
    volume = open_volume(str(output))
    assert volume.info.voxel_size_nm == (50.0, 15.0, 15.0)
    group = zarr.open_group(str(output), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [50.0, 15.0, 15.0]
    provenance = volume.read_attributes()
    assert provenance["input"] == lr_url
    assert len(provenance["checkpoint_sha256"]) == 64
    assert provenance["block"] == [2, 64, 64]


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_uint16_and_float32_inputs_keep_their_dtype(
    phantom, dtype, checkpoint_dir, cluster_address, tmp_path
):
    values = phantom.lr.astype(dtype) * (257 if dtype == "uint16" else 1 / 255)
    source = tmp_path / "lr.zarr"
    write_array(str(source), values, phantom.lr_voxel_nm)
    result = run(
        str(source), tmp_path / "sr.zarr", checkpoint_dir, cluster_address, normalization="dtype"
    )
    reference = run(
        _uint8_copy(phantom, tmp_path), tmp_path / "sr8.zarr", checkpoint_dir, cluster_address
    )
    assert result.dtype == np.dtype(dtype)
    as_uint8 = result / 257.0 if dtype == "uint16" else np.clip(result * 255.0, 0, 255)
    assert np.abs(as_uint8 - reference).max() <= 1.0


def _uint8_copy(phantom, tmp_path: Path) -> str:
    path = tmp_path / "lr8.zarr"
    write_array(str(path), phantom.lr, phantom.lr_voxel_nm)
    return str(path)


def test_missing_input_is_one_clear_error(checkpoint_dir, tmp_path):
    with pytest.raises(VolumeError, match="no volume at"):
        run(str(tmp_path / "absent.zarr"), tmp_path / "sr.zarr", checkpoint_dir, "local")
    assert not (tmp_path / "sr.zarr").exists()
