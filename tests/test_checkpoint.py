"""Checkpoints: safetensors + JSON, verified by hash, never unpickled."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from emsr.checkpoint import (
    CONFIG,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    training_state_path,
    weights_path,
)
from emsr.errors import CheckpointError
from emsr.network import build_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = build_model("small", 3)
    save_checkpoint(tmp_path, model, preset="small", step=7, normalization={"lr": {"low": 0}})
    return tmp_path, model


def test_round_trip_restores_weights_in_eval_mode(saved):
    directory, model = saved
    checkpoint = read_checkpoint(directory)
    assert checkpoint.step == 7 and checkpoint.scale == 3 and len(checkpoint.sha256) == 64
    loaded = load_checkpoint(directory)
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_changed_weights_fail_the_hash_check(saved):
    directory, _ = saved
    weights = weights_path(directory)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        read_checkpoint(directory)


def test_truncated_weights_are_reported_corrupt(saved):
    directory, _ = saved
    weights = weights_path(directory)
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    config = json.loads((directory / "config.json").read_text())
    config["sha256"] = file_sha256(weights)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"corrupt|another model"):
        read_checkpoint(directory)


def test_weights_of_another_architecture_are_refused(saved, tmp_path_factory):
    directory, _ = saved
    other = tmp_path_factory.mktemp("other")
    save_checkpoint(other, build_model("paper", 3), preset="paper", step=0, normalization={})
    weights_path(directory).write_bytes(weights_path(other).read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["sha256"] = json.loads((other / "config.json").read_text())["sha256"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="belongs to another model"):
        read_checkpoint(directory)


def test_foreign_config_is_refused(saved):
    directory, _ = saved
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not an EMSR checkpoint"):
        read_checkpoint(directory)


def test_pickles_are_refused_without_being_loaded(tmp_path):
    class Exploding:
        def __reduce__(self):
            return (pytest.fail, ("a pickle was unpickled",))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Exploding()))
    with pytest.raises(CheckpointError, match="pickles are never loaded"):
        read_checkpoint(path)


def test_missing_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match="emsr train"):
        read_checkpoint(tmp_path / "nothing")


def test_a_save_that_dies_before_its_commit_leaves_the_previous_checkpoint(saved, monkeypatch):
    directory, model = saved
    before = read_checkpoint(directory)
    real_replace = os.replace

    def die_at_commit(source, destination):
        if Path(destination).name == CONFIG:
            raise KeyboardInterrupt("killed")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", die_at_commit)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(directory, model, preset="small", step=8, normalization={})
    after = read_checkpoint(directory)
    assert (after.step, after.sha256) == (before.step, before.sha256)


def test_a_committed_save_removes_the_files_it_replaced(saved):
    directory, model = saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    state = {"moment": torch.ones(3)}
    save_checkpoint(directory, model, preset="small", step=8, normalization={},
                    training_state=state)  # fmt: skip
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted([CONFIG, weights_path(directory).name,
                            training_state_path(directory).name])  # fmt: skip
