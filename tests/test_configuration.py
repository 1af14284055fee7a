"""The configuration key: everything that changes output values, nothing that does not.

A rerun with the same key resumes (skips done blocks); one that would compute other values
is refused with one line naming what differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from emsr.checkpoint import CONFIG, read_checkpoint
from emsr.errors import CheckpointError
from emsr.inference import Predictor
from pipeline.errors import LedgerError
from pipeline.ledger import ledger_root
from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import open_volume, write_array

ALL = (slice(None),) * 3
SMALL = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu"}


def job(lr_url, output, checkpoint, cluster, **options) -> SuperResolveRequest:
    return SuperResolveRequest(
        str(lr_url), str(output), str(checkpoint), cluster=cluster, **{**SMALL, **options}
    )


def run(lr_url, output, checkpoint, cluster, **options) -> np.ndarray:
    super_resolve(job(lr_url, output, checkpoint, cluster, **options))
    return open_volume(str(output)).read(ALL)


def forget_blocks(output, blocks: list[int]) -> None:
    """Unmark `blocks` in the ledger and zero the output, as if the run died before them."""
    (ledger,) = Path(ledger_root(str(output))["path"]).iterdir()
    store = zarr.open_array(str(ledger), mode="r+")
    done = store[:]
    done[blocks] = 0
    store[:] = done
    volume = open_volume(str(output))
    volume.write(ALL, np.zeros(volume.info.shape, volume.info.dtype))


def test_batch_size_changes_no_bit_and_a_run_resumes_at_another(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    """Batch size used to be in the key: a run at batch 4 could not be resumed at batch 3."""
    output = tmp_path / "sr.zarr"
    first = run(lr_url, output, checkpoint_dir, cluster_address, batch_size=4)
    other = run(lr_url, tmp_path / "b3.zarr", checkpoint_dir, cluster_address, batch_size=3)
    assert np.array_equal(first, other)
    forget_blocks(output, [0, 5])
    report = super_resolve(job(lr_url, output, checkpoint_dir, cluster_address, batch_size=1))
    assert report.blocks_computed == 2 and report.blocks_skipped == 16


def test_an_edited_architecture_is_another_configuration(
    lr_url, checkpoint_dir, cluster_address, tmp_path
):
    """heads 4 → 2 keeps every tensor's shape and the weights' sha256, and changes values."""
    edited = tmp_path / "heads2"
    shutil.copytree(checkpoint_dir, edited)
    config = json.loads((edited / CONFIG).read_text())
    config["model"]["heads"] = 2
    (edited / CONFIG).write_text(json.dumps(config))
    assert read_checkpoint(edited).sha256 == read_checkpoint(checkpoint_dir).sha256

    output = tmp_path / "sr.zarr"
    run(lr_url, output, checkpoint_dir, cluster_address)
    with pytest.raises(LedgerError, match=r"another configuration \(architecture differ"):
        run(lr_url, output, edited, cluster_address)


def test_precision_is_applied_and_is_part_of_the_key(
    phantom, lr_url, checkpoint_dir, cluster_address, tmp_path
):
    """A full bf16 run on a loaded CPU takes minutes; the key is checked before computing,
    and the arithmetic on one tile."""
    output = tmp_path / "sr.zarr"
    run(lr_url, output, checkpoint_dir, cluster_address)
    assert open_volume(str(output)).read_attributes()["precision"] == "fp32"
    assert open_volume(str(output)).read_attributes()["device_class"] == "cpu"
    with pytest.raises(LedgerError, match=r"\(precision differ"):
        run(lr_url, output, checkpoint_dir, cluster_address, precision="bf16")
    model = read_checkpoint(checkpoint_dir).model
    tile = phantom.lr[:1, :32, :32] / np.float32(255)
    outputs = [Predictor(model, "cpu", 1, precision)(tile) for precision in ("fp32", "bf16")]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4


def test_an_input_replaced_in_place_is_noticed(phantom, checkpoint_dir, cluster_address, tmp_path):
    """Same path, shape and dtype, other data: a rerun used to skip every done block and
    report success over an output of the old input."""
    source, output = tmp_path / "lr.zarr", tmp_path / "sr.zarr"
    write_array(str(source), phantom.lr, phantom.lr_voxel_nm)
    before = run(source, output, checkpoint_dir, cluster_address)
    shutil.rmtree(source)
    write_array(str(source), 255 - phantom.lr, phantom.lr_voxel_nm)
    with pytest.raises(LedgerError, match=r"^the input \S+ changed since \S+ was computed"):
        run(source, output, checkpoint_dir, cluster_address)
    assert np.array_equal(open_volume(str(output)).read(ALL), before)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"heads": 3}, "3 heads do not divide 16 channels"),
        ({"window": 0}, "window must be at least 1"),
        ({"scale": 5}, "scale must be one of 2, 3, 4"),
        ({"channels": "16"}, "channels must be int"),
    ],
)
def test_an_invalid_architecture_is_one_line(checkpoint_dir, tmp_path, edit, expected):
    edited = tmp_path / "edited"
    shutil.copytree(checkpoint_dir, edited)
    config = json.loads((edited / CONFIG).read_text())
    config["model"].update(edit)
    (edited / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"invalid architecture \({expected}[,)]") as error:
        read_checkpoint(edited)
    assert "\n" not in str(error.value)
