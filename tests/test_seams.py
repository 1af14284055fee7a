"""The halo against the model: seams measured when training ends and when a run is prepared;
a halo the checkpoint's seams do not support is refused, an unset one raised."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from emsr.checkpoint import CONFIG, ValidatedHalo, read_checkpoint, record_validated_halo
from emsr.errors import CheckpointError
from emsr.inference import Predictor
from emsr.intensity import IntensityRange
from flows.params import TrainParams
from flows.train import train_flow
from pipeline.errors import PlanError
from pipeline.seams import (
    HALO_LIMIT,
    MEASURE_TILE,
    SEAM_BAND,
    SEAM_TARGET_DB,
    sample_sections,
    seam_mask,
    seam_psnr,
    validate_halo,
)
from pipeline.superresolve import SuperResolveRequest, prepare
from pipeline.tiles import TileLattice
from pipeline.volumes import open_volume

UINT8 = IntensityRange.of_dtype(np.dtype("uint8"))


@pytest.fixture(scope="module")
def trained(lr_url, hr_url, prefect_api, tmp_path_factory) -> tuple[Path, dict]:
    """A `small` model trained 100 steps through the train flow, and the flow's summary."""
    out = tmp_path_factory.mktemp("trained") / "checkpoint"
    params = TrainParams(
        lr_url=lr_url, hr_url=hr_url, out=str(out), steps=100, patch=32, learning_rate=1e-3,
        device="cpu", validate_every=100, checkpoint_every=100,
    )  # fmt: skip
    return out, train_flow(params)


def copy_with_halo(checkpoint_dir: Path, directory: Path, halo: int | None) -> Path:
    shutil.copytree(checkpoint_dir, directory)
    if halo is not None:
        record_validated_halo(directory, ValidatedHalo(halo, MEASURE_TILE, 61.0, SEAM_TARGET_DB))
    return directory


def request(lr_url: str, output: Path, checkpoint: Path, **options) -> SuperResolveRequest:
    options = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu", **options}
    return SuperResolveRequest(lr_url, str(output), str(checkpoint), **options)


@pytest.mark.slow
def test_training_stores_the_smallest_halo_whose_seams_pass(trained, lr_url):
    directory, summary = trained
    stored = read_checkpoint(directory).validated_halo
    assert stored is not None and summary["validated_halo_px"] == stored.halo
    assert stored.halo > 0 and stored.halo % 4 == 0 and stored.tile == MEASURE_TILE
    sample = sample_sections(open_volume(lr_url).array, UINT8, MEASURE_TILE)
    predictor = Predictor(read_checkpoint(directory).model, "cpu", batch_size=1)
    measured = seam_psnr(predictor, sample, MEASURE_TILE, stored.halo)
    assert measured >= SEAM_TARGET_DB and measured == pytest.approx(stored.seam_psnr_db)
    assert seam_psnr(predictor, sample, MEASURE_TILE, stored.halo - 4) < SEAM_TARGET_DB


@pytest.mark.slow
def test_a_halo_below_the_trained_checkpoints_is_refused_before_writing(trained, lr_url, tmp_path):
    directory, _ = trained
    minimum = read_checkpoint(directory).validated_halo.halo
    output = tmp_path / "sr.zarr"
    below = request(lr_url, output, directory, tile=64, halo=minimum - 4)
    with pytest.raises(PlanError, match=rf"below the {minimum} px .*\(stored in the checkpoint\)"):
        prepare(below)
    assert not output.exists()
    assert prepare(replace(below, halo=minimum)).task.lattice.halo == minimum


def test_an_unset_halo_is_raised_to_the_validated_one(checkpoint_dir, lr_url, tmp_path):
    directory = copy_with_halo(checkpoint_dir, tmp_path / "checkpoint", 24)
    run = prepare(request(lr_url, tmp_path / "sr.zarr", directory, tile=64))
    assert run.task.lattice.halo == 24 and run.provenance["lattice"]["halo"] == 24
    with pytest.raises(PlanError, match=r"--halo 16 is below the 24 px .* use --halo 24"):
        prepare(request(lr_url, tmp_path / "other.zarr", directory, tile=64, halo=16))


def test_a_checkpoint_without_a_stored_halo_is_measured_on_the_input(
    checkpoint_dir, lr_url, tmp_path
):
    """The untrained session checkpoint needs 8 px on tiles of 32: 4 leaves seams < 50 dB."""
    with pytest.raises(PlanError, match=r"--halo 4 is below the 8 px .* sample of this input"):
        prepare(request(lr_url, tmp_path / "a.zarr", checkpoint_dir, halo=4))
    assert not (tmp_path / "a.zarr").exists()
    assert (
        prepare(request(lr_url, tmp_path / "b.zarr", checkpoint_dir, halo=8)).task.lattice.halo == 8
    )


def test_a_stored_halo_measured_on_larger_tiles_does_not_cover_smaller_ones(
    checkpoint_dir, lr_url, tmp_path
):
    directory = copy_with_halo(checkpoint_dir, tmp_path / "checkpoint", 4)
    with pytest.raises(PlanError, match=r"below the 8 px .* sample of this input"):
        prepare(request(lr_url, tmp_path / "sr.zarr", directory, tile=32, halo=4))


def test_the_validated_halo_round_trips_and_older_checkpoints_load(checkpoint_dir, tmp_path):
    assert read_checkpoint(checkpoint_dir).validated_halo is None
    directory = copy_with_halo(checkpoint_dir, tmp_path / "checkpoint", None)
    record = ValidatedHalo(12, 64, 73.6, 50.0)
    record_validated_halo(directory, record)
    loaded = read_checkpoint(directory)
    assert loaded.validated_halo == record
    assert loaded.sha256 == read_checkpoint(checkpoint_dir).sha256
    config = json.loads((directory / CONFIG).read_text())
    config["validated_halo"] = {"halo": "many"}
    (directory / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unreadable validated_halo"):
        read_checkpoint(directory)


def test_the_seams_are_the_band_around_interior_core_boundaries():
    lattice = TileLattice((64, 64), 8)
    mask = seam_mask((192, 160), lattice, scale=2)
    rows = np.flatnonzero(mask[:, 0]) // 2
    expected = [*range(64 - SEAM_BAND, 64 + SEAM_BAND), *range(128 - SEAM_BAND, 128 + SEAM_BAND)]
    assert sorted(set(rows)) == expected
    columns = np.flatnonzero(mask[0]) // 2
    assert sorted(set(columns)) == [*range(64 - SEAM_BAND, 64 + SEAM_BAND),
                                    *range(128 - SEAM_BAND, 128 + SEAM_BAND)]  # fmt: skip


def test_a_halo_past_the_search_limit_is_checked_not_skipped(checkpoint_dir, phantom):
    model = read_checkpoint(checkpoint_dir).model
    section = UINT8.normalize(phantom.lr[:1, :64, :64])
    validation = validate_halo(model, section, tile=32, start=HALO_LIMIT + 4)
    assert [check.halo for check in validation.checks] == [HALO_LIMIT + 4]
    assert validation.passing is not None
