"""Checkpoints: a directory with `config.json` and the safetensors files it names; nothing
is unpickled.

`config.json` records the architecture, preset, scale, intensity normalisation, training step,
the weights file and its sha256, so a run's provenance names exactly which weights made it,
and a truncated or swapped file is refused instead of producing quietly wrong output. The
training state (optimizer moments, RNG states) is optional and only used to resume training.

Saving is atomic: files are named by their content (`weights-<sha>.safetensors`) and written
first, then `config.json` is replaced in one rename, the commit; files it no longer names are
removed afterwards. A save killed at any point leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emsr.errors import CheckpointError, DivergedError
from emsr.network import EMSR, ModelConfig

FORMAT = "emsr-checkpoint"
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights"
TRAINING_STATE = "training_state"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
VALIDATED_HALO = "validated_halo"


@dataclass(frozen=True)
class ValidatedHalo:
    """The smallest halo (LR px) whose tiled output met the seam target with these weights,
    measured on tiles of `tile` px (`pipeline.seams`); `seam_psnr_db` is None when identical.
    Optional in `config.json`: checkpoints without it are measured when a run is prepared."""

    halo: int
    tile: int
    seam_psnr_db: float | None
    target_db: float

    @classmethod
    def from_config(cls, directory: Path, config: dict) -> ValidatedHalo | None:
        if VALIDATED_HALO not in config:
            return None
        try:
            record = cls(**config[VALIDATED_HALO])
        except TypeError as error:
            raise CheckpointError(
                f"{directory / CONFIG} has an unreadable {VALIDATED_HALO} ({error}); "
                "delete that entry to have the halo measured again"
            ) from None
        if not (isinstance(record.halo, int) and isinstance(record.tile, int)) or record.halo < 0:
            raise CheckpointError(
                f"{directory / CONFIG} has an invalid {VALIDATED_HALO} {config[VALIDATED_HALO]}; "
                "delete that entry to have the halo measured again"
            )
        return record


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
    validated_halo: ValidatedHalo | None = None

    @property
    def scale(self) -> int:
        return self.model.config.scale


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so a crash never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _file_mode() -> int:
    """The mode a plain new file gets under the user's umask (safetensors writes 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _save_content_named(directory: Path, role: str, tensors: dict[str, torch.Tensor]) -> str:
    """Write `tensors` as `<role>-<sha256 prefix>.safetensors`; return the file's name.

    A name that depends on the content never overwrites a file the current config names
    (unless the content is identical), which is what makes the config's rename the commit.
    The file gets the user's usual permissions, so a lab's other accounts can load it.
    """
    temporary = directory / f".{role}.tmp-{os.getpid()}"
    save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(temporary))
    os.chmod(temporary, _file_mode())
    name = f"{role}-{file_sha256(temporary)[:16]}.safetensors"
    os.replace(temporary, directory / name)
    return name


def _remove_unreferenced(directory: Path, config: dict) -> None:
    """Delete tensor files and temporaries of earlier saves that `config` no longer names."""
    kept = {config[WEIGHTS], config.get(TRAINING_STATE)}
    for role in (WEIGHTS, TRAINING_STATE):
        for path in directory.glob(f"{role}-*.safetensors"):
            if path.name not in kept:
                path.unlink(missing_ok=True)
        for path in directory.glob(f".{role}.tmp-*"):
            path.unlink(missing_ok=True)


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
    """Save weights (and optionally the training state) atomically; returns the weights'
    sha256."""
    state = model.state_dict()
    if broken := non_finite({**state, **(training_state or {})}):
        raise DivergedError(
            f"not saving a checkpoint in {directory}: {broken[0]} (and {len(broken) - 1} more "
            "tensors) hold NaN or infinite values; the model diverged"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = _save_content_named(directory, WEIGHTS, state)
    sha256 = file_sha256(directory / weights)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "EMSR",
        "preset": preset,
        "model": model.config.to_dict(),
        "normalization": normalization,
        "step": step,
        WEIGHTS: weights,
        "sha256": sha256,
        **({"metadata": metadata} if metadata else {}),
    }
    if training_state is not None:
        config[TRAINING_STATE] = _save_content_named(directory, TRAINING_STATE, training_state)
    text = json.dumps(config, indent=2) + "\n"
    write_atomically(directory / CONFIG, lambda path: path.write_text(text))
    _remove_unreferenced(directory, config)
    return sha256


def holds_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` has a config.json that says it is an EMSR checkpoint."""
    try:
        config = json.loads((Path(directory) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def check_writable(directory: str | Path) -> None:
    """Create `directory` and write a probe there, so an unwritable place fails before
    training starts instead of at its first checkpoint."""
    directory = Path(directory)
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(
            f"cannot write a checkpoint in {directory}: {error.strerror}; choose a writable --out"
        ) from None


def _read_config(directory: Path) -> dict:
    if directory.is_file() and directory.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{directory} is a pickled file; EMSR checkpoints are a directory with "
            f"{CONFIG} and safetensors files, and pickles are never loaded"
        )
    if not (directory / CONFIG).is_file():
        raise CheckpointError(
            f"no checkpoint at {directory}: expected {CONFIG} (train one with `emsr train`)"
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


def _named_file(directory: Path, config: dict, role: str) -> Path:
    """The file `config` names for `role`, refusing names that leave the directory."""
    name = config.get(role)
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise CheckpointError(
            f"{directory / CONFIG} names no valid {role} file ({name!r}); re-copy or retrain"
        )
    path = directory / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} named in {CONFIG} is missing: the checkpoint is incomplete; re-copy it"
        )
    return path


def weights_path(directory: str | Path) -> Path:
    """The weights file of the checkpoint in `directory`."""
    directory = Path(directory)
    return _named_file(directory, _read_config(directory), WEIGHTS)


def training_state_path(directory: str | Path) -> Path:
    """The training-state file of the checkpoint in `directory` (for `--resume`)."""
    directory = Path(directory)
    config = _read_config(directory)
    if TRAINING_STATE not in config:
        raise CheckpointError(
            f"cannot resume: {directory} holds no training state (was it saved by training?)"
        )
    return _named_file(directory, config, TRAINING_STATE)


SCALES = (2, 3, 4)
OPTIONAL_PARTS = ("res_blocks", "gates")
"""Architecture counts that may be 0; every other count needs at least 1."""


def architecture_problem(model: ModelConfig) -> str | None:
    """What makes `model` unbuildable or meaningless, or None: checked before building, so a
    hand-edited config.json is one clear line instead of a traceback deep in the network."""
    for part in fields(model):
        value, kind = getattr(model, part.name), type(part.default)
        if type(value) is not kind:
            return f"{part.name} must be {kind.__name__}, not {value!r}"
        if kind is int and value < (0 if part.name in OPTIONAL_PARTS else 1):
            return f"{part.name} must be at least {0 if part.name in OPTIONAL_PARTS else 1}"
    if model.scale not in SCALES:
        return f"scale must be one of {', '.join(map(str, SCALES))}, not {model.scale}"
    if model.channels % model.heads:
        return f"{model.heads} heads do not divide {model.channels} channels"
    return None


def _model_config(directory: Path, config: dict) -> ModelConfig:
    try:
        model = ModelConfig(**config["model"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(
            f"{directory / CONFIG} describes an architecture this version cannot build ({error})"
        ) from None
    problem = architecture_problem(model)
    if problem:
        raise CheckpointError(
            f"{directory / CONFIG} describes an invalid architecture ({problem}); "
            "re-copy the checkpoint or retrain"
        )
    return model


def _load_weights(path: Path, model: EMSR) -> None:
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); re-copy or retrain") from None
    expected = model.state_dict()
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    misshapen = [
        n for n in expected.keys() & weights.keys() if expected[n].shape != weights[n].shape
    ]
    if missing or unexpected or misshapen:
        names = sorted(missing | unexpected | set(misshapen))[:3]
        raise CheckpointError(
            f"{path} does not fit the architecture in {CONFIG} "
            f"(mismatched tensors such as {', '.join(names)}): it belongs to another model"
        )
    if broken := non_finite(weights):
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({broken[0]} and {len(broken) - 1} more): "
            "the model diverged in training; retrain it with a lower --learning-rate"
        )
    model.load_state_dict(weights)


def read_checkpoint(directory: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load and validate a checkpoint; any problem is one `CheckpointError` line."""
    directory = Path(directory)
    config = _read_config(directory)
    weights = _named_file(directory, config, WEIGHTS)
    if verify:
        actual = file_sha256(weights)
        if actual != config.get("sha256"):
            raise CheckpointError(
                f"{weights} does not match the sha256 in {CONFIG} "
                f"({actual[:12]}… ≠ {str(config.get('sha256'))[:12]}…): the file was changed "
                "or truncated; re-copy it or retrain"
            )
    model = EMSR(_model_config(directory, config))
    _load_weights(weights, model)
    return Checkpoint(
        model=model.eval(),
        sha256=config["sha256"],
        preset=config.get("preset", "custom"),
        step=int(config.get("step", 0)),
        normalization=config.get("normalization", {}),
        path=directory,
        metadata=config.get("metadata", {}),
        validated_halo=ValidatedHalo.from_config(directory, config),
    )


def record_validated_halo(directory: str | Path, record: ValidatedHalo) -> None:
    """Add the validated halo to an existing checkpoint's config (atomically; the weights and
    their sha256 are untouched). A later save, e.g. of resumed training, drops it again."""
    directory = Path(directory)
    config = {**_read_config(directory), VALIDATED_HALO: asdict(record)}
    text = json.dumps(config, indent=2) + "\n"
    write_atomically(directory / CONFIG, lambda path: path.write_text(text))


def load_checkpoint(directory: str | Path) -> EMSR:
    """The trained model in a checkpoint directory, in eval mode, its weights checked against
    the sha256 in `config.json` (`read_checkpoint` also gives the preset, step and
    normalisation); any problem is one `CheckpointError` line."""
    return read_checkpoint(directory).model


def load_training_state(directory: str | Path) -> dict[str, torch.Tensor]:
    path = training_state_path(directory)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restart without --resume") from None
