"""Training on noisy pairs: the loss falls, resume is exact, bad pairs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emsr.data import PairedVolumes
from emsr.errors import CheckpointError, DataError
from emsr.losses import NoisierBranchObjective, l1
from emsr.network import build_model
from emsr.training import TrainConfig, train

FAST = {"steps": 24, "batch_size": 2, "patch": 24, "validate_every": 12, "checkpoint_every": 12,
        "learning_rate": 1e-3, "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def pairs(phantom) -> PairedVolumes:
    return PairedVolumes.from_arrays(phantom.lr, phantom.hr, 2)


def test_a_few_steps_reduce_the_loss(pairs, tmp_path):
    result = train(pairs, TrainConfig(**{**FAST, "steps": 60}), tmp_path)
    losses = [record["loss"] for record in result.history]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert result.validation_psnr is not None and result.validation_psnr > 10


def test_resume_continues_exactly_where_training_stopped(pairs, tmp_path):
    straight = train(pairs, TrainConfig(**FAST), tmp_path / "straight")
    train(pairs, TrainConfig(**{**FAST, "steps": 12}), tmp_path / "resumed")
    resumed = train(pairs, TrainConfig(**FAST), tmp_path / "resumed", resume=True)
    assert resumed.step == straight.step == 24
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, 25))


def test_resume_with_other_settings_is_refused(pairs, tmp_path):
    train(pairs, TrainConfig(**{**FAST, "steps": 2}), tmp_path)
    with pytest.raises(CheckpointError, match="loss='l1'"):
        train(pairs, TrainConfig(**{**FAST, "loss": "l2"}), tmp_path, resume=True)


def test_training_into_an_existing_checkpoint_needs_resume(pairs, tmp_path):
    train(pairs, TrainConfig(**{**FAST, "steps": 1}), tmp_path)
    with pytest.raises(CheckpointError, match="--resume"):
        train(pairs, TrainConfig(**{**FAST, "steps": 1}), tmp_path)


def test_pairs_must_match_the_scale(phantom):
    with pytest.raises(DataError, match="check --scale"):
        PairedVolumes.from_arrays(phantom.lr, phantom.hr, 3)
    with pytest.raises(DataError, match="3-D"):
        PairedVolumes.from_arrays(phantom.lr[0], phantom.hr[0], 2)


def test_noisier_branch_adds_the_consistency_terms():
    torch.manual_seed(0)
    model = build_model("small", 2)
    lr, hr = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 32, 32)
    plain, _ = NoisierBranchObjective(l1, enabled=False)(model, lr, hr)
    generator = torch.Generator().manual_seed(0)
    noisy, _ = NoisierBranchObjective(l1, sigma_max=0.0)(model, lr, hr, generator)
    assert torch.allclose(noisy, 2 * plain)
