"""Intensities: the checkpoint's training mapping by default, explicit overrides, and a
percentile pass that reads a bounded sample spread through the whole volume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from emsr.checkpoint import load_checkpoint, save_checkpoint
from emsr.inference import Predictor, super_resolve_image
from emsr.intensity import IntensityRange
from emsr.metrics import psnr
from emsr.network import build_model
from pipeline.errors import PlanError
from pipeline.normalization import PATCH_PX, PATCHES_PER_SECTION, SAMPLE_SECTIONS
from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.volumes import Volume, create_volume, open_volume, write_array

ALL = (slice(None),) * 3
SMALL = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu"}


def request(lr_url, output, checkpoint, cluster="local", **options) -> SuperResolveRequest:
    return SuperResolveRequest(
        str(lr_url), str(output), str(checkpoint), cluster=cluster, **{**SMALL, **options}
    )


def run(lr_url, output, checkpoint, cluster, **options) -> np.ndarray:
    super_resolve(request(lr_url, output, checkpoint, cluster, **options))
    return open_volume(str(output)).read(ALL)


@pytest.fixture(scope="module")
def uint8_to_uint16_checkpoint(checkpoint_dir, tmp_path_factory):
    """The session's weights, as if trained on uint8 LR and uint16 HR."""
    directory = tmp_path_factory.mktemp("u8-u16")
    save_checkpoint(
        directory, load_checkpoint(checkpoint_dir), preset="small", step=0,
        normalization={"lr": {"low": 0.0, "high": 255.0, "dtype": "uint8"},
                       "hr": {"low": 0.0, "high": 65535.0, "dtype": "uint16"}},
    )  # fmt: skip
    return directory


def test_output_is_denormalised_with_the_hr_mapping_the_model_learned(
    phantom, lr_url, uint8_to_uint16_checkpoint, cluster_address, tmp_path
):
    output = run(lr_url, tmp_path / "sr.zarr", uint8_to_uint16_checkpoint, cluster_address)
    assert output.dtype == np.uint16
    predictor = Predictor(load_checkpoint(uint8_to_uint16_checkpoint), "cpu")
    whole = super_resolve_image(predictor, phantom.lr[2] / 255.0, halo=16)
    reference = IntensityRange(0, 65535).denormalize(whole, np.uint16)
    assert psnr(output[2].astype(float), reference.astype(float), 65535) >= 50


def test_float_input_uses_the_float_checkpoints_mapping_not_a_percentile_pass(
    phantom, checkpoint_dir, cluster_address, tmp_path
):
    """A model trained on float32 in (0, 1) sees float input through (0, 1); the old default
    mapped this dim input (0.2–0.45) by its own percentiles instead."""
    directory = tmp_path / "float-ckpt"
    save_checkpoint(
        directory, load_checkpoint(checkpoint_dir), preset="small", step=0,
        normalization={"lr": {"low": 0.0, "high": 1.0}, "hr": {"low": 0.0, "high": 1.0}},
    )  # fmt: skip
    dim = tmp_path / "dim.zarr"
    write_array(str(dim), 0.2 + phantom.lr.astype(np.float32) / 1020, phantom.lr_voxel_nm)
    default = run(dim, tmp_path / "a.zarr", directory, cluster_address)
    explicit = run(dim, tmp_path / "b.zarr", directory, cluster_address, normalization="dtype")
    assert np.array_equal(default, explicit)


def test_input_of_a_dtype_the_model_was_not_trained_on_is_refused_unless_overridden(
    phantom, checkpoint_dir, cluster_address, tmp_path
):
    source = tmp_path / "float.zarr"
    write_array(str(source), phantom.lr.astype(np.float32) / 255, phantom.lr_voxel_nm)
    with pytest.raises(PlanError, match=r"trained on uint8 .* float32; pass --normalization"):
        prepare(request(source, tmp_path / "sr.zarr", checkpoint_dir))
    assert not (tmp_path / "sr.zarr").exists()
    output = run(source, tmp_path / "sr.zarr", checkpoint_dir, cluster_address,
                 normalization="dtype")  # fmt: skip
    assert output.dtype == np.float32 and np.isfinite(output).all()


def test_percentile_pass_reads_a_bounded_sample_and_refuses_a_blank_volume(
    checkpoint_dir, tmp_path, monkeypatch
):
    """A 4 × 4096² section volume: the old pass read from the centre to the far edge
    (2560² voxels a section); a blank volume gave a made-up range instead of an error."""
    blank = tmp_path / "blank.zarr"
    create_volume(str(blank), (4, 4096, 4096), np.dtype("float32"), (30.0, 8.0, 8.0),
                  (1, 512, 512)).write((slice(0, 1), slice(0, 512), slice(0, 512)),
                                       np.zeros((1, 512, 512), np.float32))  # fmt: skip
    read = Volume.read_async
    voxels: list[int] = []

    def counted(volume: Volume, box):
        future = read(volume, box)
        if volume.info.url.endswith("blank.zarr"):
            voxels.append(int(np.prod([s.stop - s.start for s in volume._inside(box)])))
        return future

    monkeypatch.setattr(Volume, "read_async", counted)
    with pytest.raises(PlanError, match=r"found only 0 data voxels .* --normalization"):
        prepare(request(blank, tmp_path / "sr.zarr", checkpoint_dir, normalization="percentile"))
    sample_bound = SAMPLE_SECTIONS * PATCHES_PER_SECTION * PATCH_PX**2
    fingerprint_bound = 8 * 512 * 512
    assert sum(voxels) <= sample_bound + fingerprint_bound
    assert not (tmp_path / "sr.zarr").exists()


def test_percentile_pass_is_not_fooled_by_a_band_at_the_centre(checkpoint_dir, tmp_path):
    """Tissue (60–230) everywhere but a resin band (≈ 25) across the sections' centre rows,
    where the old pass took its one strip from."""
    rng = np.random.default_rng(0)
    values = rng.integers(60, 231, size=(4, 2048, 2048), dtype=np.uint8)
    values[:, 512:1200] = rng.integers(23, 28, size=(4, 688, 2048), dtype=np.uint8)
    source = tmp_path / "band.zarr"
    write_array(str(source), values, (30.0, 8.0, 8.0))
    prepared = prepare(
        request(source, tmp_path / "sr.zarr", checkpoint_dir, normalization="percentile")
    )
    low, high = prepared.task.intensity.normalize(np.array([25, 230], np.uint8))
    assert -0.05 <= low <= 0.2 and 0.95 <= high <= 1.05


def test_blank_float_volume_with_percentiles_is_refused_naming_the_option(checkpoint_dir, tmp_path):
    flat = tmp_path / "flat.zarr"
    write_array(str(flat), np.full((4, 64, 80), 0.5, np.float32), (30.0, 8.0, 8.0))
    with pytest.raises(PlanError, match=r"degenerate range .* --normalization"):
        prepare(request(flat, tmp_path / "sr.zarr", checkpoint_dir, normalization="percentile"))
    assert not (tmp_path / "sr.zarr").exists()


def test_checkpoint_without_a_recorded_mapping_needs_an_explicit_one(
    lr_url, checkpoint_dir, tmp_path
):
    directory = tmp_path / "bare"
    shutil.copytree(checkpoint_dir, directory)
    save_checkpoint(directory, build_model("small", 2), preset="small", step=0, normalization={})
    with pytest.raises(PlanError, match=r"records no usable intensity normalisation"):
        prepare(request(lr_url, tmp_path / "sr.zarr", directory))
    prepare(request(lr_url, tmp_path / "sr.zarr", directory, normalization="dtype"))
