"""The training loop: noisy LR/HR patch pairs, the noisier-branch objective, Adam with the
learning rate halved on a fixed schedule, validation PSNR on held-out sections, exact resume.

Resuming is exact on the CPU: weights, Adam moments, the step and both random generators are
saved together, so an interrupted run continued with `resume=True` follows the same loss
curve as one that never stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from emsr.checkpoint import (
    CONFIG,
    check_writable,
    holds_checkpoint,
    load_training_state,
    non_finite,
    read_checkpoint,
    save_checkpoint,
    write_atomically,
)
from emsr.data import PairedVolumes, PatchSampler
from emsr.errors import CheckpointError, DataError, DivergedError
from emsr.inference import resolve_device
from emsr.losses import NoisierBranchObjective, get_loss
from emsr.metrics import psnr
from emsr.network import EMSR, build_model

HISTORY = "history.json"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved in the checkpoint so a run can be reproduced."""

    preset: str = "small"
    scale: int = 2
    loss: str = "l1"
    steps: int = 500
    batch_size: int = 4
    patch: int = 48
    learning_rate: float = 1e-4
    halve_every: int = 50_000
    noisier_branch: bool = True
    sigma_max: float = 5 / 255
    device: str = "auto"
    seed: int = 0
    validate_every: int = 100
    checkpoint_every: int = 100
    validation_fraction: float = 0.1
    validation_crop: int = 128
    edge_attention: bool = True
    self_attention: bool = True

    def learning_rate_at(self, step: int) -> float:
        return self.learning_rate * 0.5 ** (step // self.halve_every)


@dataclass(frozen=True)
class TrainProgress:
    step: int
    steps: int
    loss: float
    validation_psnr: float | None


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    validation_psnr: float | None
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Holds the model, optimizer and random state of one run between checkpoints."""

    def __init__(self, pairs: PairedVolumes, config: TrainConfig, out_dir: Path) -> None:
        if pairs.scale != config.scale:
            raise DataError(f"the pairs are ×{pairs.scale} but training asks for ×{config.scale}")
        self.pairs, self.config, self.out_dir = pairs, config, out_dir
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model: EMSR = build_model(
            config.preset,
            config.scale,
            edge_attention=config.edge_attention,
            self_attention=config.self_attention,
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.objective = NoisierBranchObjective(
            get_loss(config.loss), config.sigma_max, config.noisier_branch
        )
        self.rng = np.random.default_rng(config.seed)
        self.noise = torch.Generator().manual_seed(config.seed)
        training, self.validation = pairs.split_sections(config.validation_fraction)
        self.sampler = PatchSampler(pairs, training, config.patch, self.rng)
        self.step = 0
        self.history: list[dict] = []

    def train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate_at(self.step)
        lr, hr = (t.to(self.device) for t in self.sampler.sample(self.config.batch_size))
        self.model.train()
        with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
            loss, _ = self.objective(self.model, lr, hr, self.noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value) or non_finite(dict(self.model.named_parameters())):
            raise self.diverged(f"loss {value:g}")
        return value

    def diverged(self, symptom: str) -> DivergedError:
        """The error that stops a run at its first non-finite loss, weight or output: every
        later step, validation and checkpoint would only spread the NaN."""
        rate = self.config.learning_rate_at(self.step - 1)
        return DivergedError(
            f"training diverged at step {self.step} ({symptom} at learning rate {rate:g}): the "
            f"model produces NaN or infinite values; lower --learning-rate (e.g. {rate / 10:g}) "
            "and train again into a new --out"
        )

    @torch.no_grad()
    def validate(self) -> float:
        """Mean PSNR (dB) on central crops of the held-out sections, against the (noisy) HR."""
        self.model.eval()
        _, height, width = self.pairs.lr.shape
        size = min(self.config.validation_crop, height, width)
        y, x = (height - size) // 2, (width - size) // 2
        scores = []
        for z in self.validation:
            lr, hr = self.pairs.read_pair(int(z), y, x, size)
            sr = self.model(torch.from_numpy(np.ascontiguousarray(lr))[None, None].to(self.device))
            if not bool(torch.isfinite(sr).all()):
                raise self.diverged("non-finite validation output")
            scores.append(psnr(sr[0, 0].float().clamp(0, 1).cpu().numpy(), hr, data_range=1.0))
        return float(np.mean(scores))

    def training_state(self) -> dict[str, torch.Tensor]:
        state = {"rng.torch": self.noise.get_state()}
        for index, moments in self.optimizer.state_dict()["state"].items():
            for name, tensor in moments.items():
                state[f"optimizer.{index}.{name}"] = torch.as_tensor(tensor)
        return state

    def save(self) -> Path:
        """History first, then the checkpoint: a kill between the two leaves a history ahead
        of the checkpoint, which `restore` trims back to it."""
        _write_history(self.out_dir, self.history)
        metadata = {
            "train_config": asdict(self.config),
            "rng_numpy": self.rng.bit_generator.state,
        }
        save_checkpoint(
            self.out_dir,
            self.model,
            preset=self.config.preset,
            step=self.step,
            normalization=self.pairs.normalization(),
            metadata=metadata,
            training_state=self.training_state(),
        )
        return self.out_dir

    def restore(self) -> None:
        """Continue from the checkpoint in `out_dir`, refusing one made with other settings."""
        checkpoint = read_checkpoint(self.out_dir)
        saved = checkpoint.metadata.get("train_config", {})
        for key in (
            "preset",
            "scale",
            "loss",
            "noisier_branch",
            "edge_attention",
            "self_attention",
        ):
            if saved.get(key) != getattr(self.config, key):
                raise CheckpointError(
                    f"cannot resume {self.out_dir}: it was trained with {key}={saved.get(key)!r}, "
                    f"not {getattr(self.config, key)!r}; use the same settings or a new --out"
                )
        self.model.load_state_dict(checkpoint.model.state_dict())
        state = load_training_state(self.out_dir)
        self.noise.set_state(state.pop("rng.torch"))
        optimizer_state = self.optimizer.state_dict()
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            _, index, name = key.split(".")
            moments.setdefault(int(index), {})[name] = tensor.to(self.device)
        optimizer_state["state"] = moments
        self.optimizer.load_state_dict(optimizer_state)
        self.rng.bit_generator.state = checkpoint.metadata["rng_numpy"]
        self.step = checkpoint.step
        history_path = self.out_dir / HISTORY
        history = json.loads(history_path.read_text()) if history_path.exists() else []
        self.history = [record for record in history if record["step"] <= self.step]


def _write_history(directory: Path, history: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(history, indent=1) + "\n"
    write_atomically(directory / HISTORY, lambda path: path.write_text(text))


def train(
    pairs: PairedVolumes,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train (or continue training) EMSR on `pairs`, checkpointing into `out_dir`."""
    out_dir = Path(out_dir)
    if not resume and holds_checkpoint(out_dir):
        raise CheckpointError(
            f"{out_dir} already holds a checkpoint; pass --resume to continue it "
            "or choose a new --out"
        )
    if not resume and (out_dir / CONFIG).exists():
        raise CheckpointError(
            f"{out_dir} holds a {CONFIG} that is not an EMSR checkpoint, which training "
            "would replace: choose a new --out"
        )
    trainer = Trainer(pairs, config, out_dir)
    if resume:
        trainer.restore()
    check_writable(out_dir)
    validation_psnr = None
    while trainer.step < config.steps:
        loss = trainer.train_step()
        record: dict = {"step": trainer.step, "loss": loss}
        if trainer.step % config.validate_every == 0 or trainer.step == config.steps:
            validation_psnr = trainer.validate()
            record["validation_psnr"] = validation_psnr
        trainer.history.append(record)
        if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
            trainer.save()
        if on_progress:
            on_progress(TrainProgress(trainer.step, config.steps, loss, validation_psnr))
    if trainer.step == 0:
        trainer.save()
    return TrainResult(out_dir, trainer.step, validation_psnr, trainer.history)
