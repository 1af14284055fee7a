"""Checkpoints: a directory with `model.safetensors` and `config.json`; nothing is unpickled.

`config.json` records the architecture, preset, scale, intensity normalisation, training step
and the sha256 of the weights file, so a run's provenance names exactly which weights made it,
and a truncated or swapped file is refused instead of producing quietly wrong output.
`training_state.safetensors` (optimizer moments, RNG states) is optional and only used to
resume training exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emsr.errors import CheckpointError
from emsr.network import EMSR, ModelConfig

FORMAT = "emsr-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model in eval mode plus what the config says about it."""

    model: EMSR
    sha256: str
    preset: str
    step: int
    normalization: dict
    path: Path
    metadata: dict = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return self.model.config.scale


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write: callable) -> None:
    """Write through a temporary sibling and rename, so a crash never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def save_checkpoint(
    directory: str | Path,
    model: EMSR,
    *,
    preset: str,
    step: int,
    normalization: dict,
    metadata: dict | None = None,
    training_state: dict[str, torch.Tensor] | None = None,
) -> str:
    """Save weights (and optionally the training state); returns the weights' sha256.

    The config is written last: a directory whose config is missing or names another hash
    is never mistaken for a complete checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    _write_atomically(directory / WEIGHTS, lambda path: save_file(weights, str(path)))
    if training_state is not None:
        state = {name: tensor.cpu().contiguous() for name, tensor in training_state.items()}
        _write_atomically(directory / TRAINING_STATE, lambda path: save_file(state, str(path)))
    sha256 = file_sha256(directory / WEIGHTS)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "EMSR",
        "preset": preset,
        "model": model.config.to_dict(),
        "normalization": normalization,
        "step": step,
        "sha256": sha256,
        **({"metadata": metadata} if metadata else {}),
    }
    text = json.dumps(config, indent=2) + "\n"
    _write_atomically(directory / CONFIG, lambda path: path.write_text(text))
    return sha256


def _read_config(directory: Path) -> dict:
    if directory.is_file() and directory.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{directory} is a pickled file; EMSR checkpoints are a directory with "
            f"{WEIGHTS} and {CONFIG}, and pickles are never loaded"
        )
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(
            f"no checkpoint at {directory}: expected {WEIGHTS} and {CONFIG} "
            "(train one with `emsr train`)"
        )
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory / CONFIG} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory} is not an EMSR checkpoint (its {CONFIG} has no "
            f"'format: {FORMAT}'); pass a directory written by `emsr train`"
        )
    if config.get("architecture") != "EMSR" or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} holds a {config.get('architecture')} checkpoint of format version "
            f"{config.get('format_version')}; this version reads EMSR version {FORMAT_VERSION}"
        )
    return config


def _model_config(directory: Path, config: dict) -> ModelConfig:
    try:
        return ModelConfig(**config["model"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(
            f"{directory / CONFIG} describes an architecture this version cannot build ({error})"
        ) from None


def _load_weights(directory: Path, model: EMSR) -> None:
    try:
        weights = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{directory / WEIGHTS} is corrupt ({error}); re-copy or retrain"
        ) from None
    expected = model.state_dict()
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    misshapen = [
        n for n in expected.keys() & weights.keys() if expected[n].shape != weights[n].shape
    ]
    if missing or unexpected or misshapen:
        names = sorted(missing | unexpected | set(misshapen))[:3]
        raise CheckpointError(
            f"{directory / WEIGHTS} does not fit the architecture in {CONFIG} "
            f"(mismatched tensors such as {', '.join(names)}): it belongs to another model"
        )
    model.load_state_dict(weights)


def read_checkpoint(directory: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load and validate a checkpoint; any problem is one `CheckpointError` line."""
    directory = Path(directory)
    config = _read_config(directory)
    if verify:
        actual = file_sha256(directory / WEIGHTS)
        if actual != config.get("sha256"):
            raise CheckpointError(
                f"{directory / WEIGHTS} does not match the sha256 in {CONFIG} "
                f"({actual[:12]}… ≠ {str(config.get('sha256'))[:12]}…): the file was changed "
                "or truncated; re-copy it or retrain"
            )
    model = EMSR(_model_config(directory, config))
    _load_weights(directory, model)
    return Checkpoint(
        model=model.eval(),
        sha256=config["sha256"],
        preset=config.get("preset", "custom"),
        step=int(config.get("step", 0)),
        normalization=config.get("normalization", {}),
        path=directory,
        metadata=config.get("metadata", {}),
    )


def load_checkpoint(directory: str | Path) -> EMSR:
    """The checkpoint's model, in eval mode."""
    return read_checkpoint(directory).model


def load_training_state(directory: str | Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} is missing (was training ever saved there?)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restart without --resume") from None
