"""The `emsr` command as a user runs it: closing lines, and one clear line for bad input.

Every bad-input case must exit 2 with exactly one line on stderr naming the problem, print
no traceback, and leave nothing where it should not be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from emsr.checkpoint import CONFIG, file_sha256, save_checkpoint, weights_path
from emsr.network import build_model
from pipeline.ledger import ledger_root
from pipeline.volumes import write_array

EMSR = str(Path(sys.executable).with_name("emsr"))


def emsr(
    *arguments: str, env: dict[str, str], file_size_limit: int | None = None
) -> subprocess.CompletedProcess:
    """Run the command; `file_size_limit` (bytes, RLIMIT_FSIZE, inherited by its local Dask
    workers) makes every larger write fail as on a full disk."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [EMSR, *arguments], capture_output=True, text=True, env=env, timeout=300,
        preexec_fn=limit_file_size if file_size_limit else None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(prefect_server) -> dict[str, str]:
    """Flows report to the session's Prefect server instead of starting one per command."""
    return prefect_server.environment()


def with_voxel_size(path: Path, voxel_size: list[float]) -> None:
    """Rewrite an OME-Zarr group's scale, as a foreign tool with a bug might have written it."""
    document = json.loads((path / "zarr.json").read_text())
    multiscale = document["attributes"]["ome"]["multiscales"][0]
    multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] = voxel_size
    (path / "zarr.json").write_text(json.dumps(document))


@pytest.fixture(scope="module")
def volumes(phantom, lr_url, tmp_path_factory) -> dict[str, str]:
    """Inputs for the bad-input matrix, each wrong in one way."""
    root = tmp_path_factory.mktemp("inputs")
    for name, voxel in (("nan_voxel", [float("nan"), 8.0, 8.0]), ("zero_voxel", [40.0, 0.0, 8.0])):
        write_array(str(root / f"{name}.zarr"), phantom.lr, phantom.lr_voxel_nm)
        with_voxel_size(root / f"{name}.zarr", voxel)
    zarr.create_array(str(root / "empty.zarr"), shape=(2, 64, 0), dtype="uint8", chunks=(1, 32, 32))
    (root / "link.zarr").symlink_to(lr_url, target_is_directory=True)
    (root / "precomputed").mkdir()
    (root / "precomputed" / "info").write_text('{"@type": "neuroglancer_multiscale_volume"}')
    (root / "données").mkdir()
    (root / "données" / "a_file").write_text("not a directory")
    flat = zarr.create_array(
        str(root / "flat.zarr"), shape=(64, 80), dtype="uint8", chunks=(32, 32)
    )
    flat[:] = 1
    wide = zarr.create_array(
        str(root / "int32.zarr"), shape=(2, 64, 80), dtype="int32", chunks=(1, 32, 32)
    )
    wide[:] = 1
    write_array(str(root / "float.zarr"), phantom.lr.astype(np.float32) / 255, phantom.lr_voxel_nm)
    write_array(str(root / "blank.zarr"), np.full((2, 64, 80), 0.5, np.float32), (30.0, 8.0, 8.0))
    four = zarr.create_array(
        str(root / "4d.zarr"), shape=(1, 2, 64, 80), dtype="uint8", chunks=(1, 1, 32, 32)
    )
    four[:] = 1
    write_array(str(root / "existing.zarr"), np.zeros((3, 50, 50), np.uint8), (1.0, 1.0, 1.0))
    (root / "model.pt").write_bytes(pickle.dumps({"weights": 1}))
    (root / "a_file").write_text("not a directory")
    names = {"flat": "flat.zarr", "int32": "int32.zarr", "pickle": "model.pt",
             "4d": "4d.zarr", "existing": "existing.zarr", "a_file": "a_file",
             "nan_voxel": "nan_voxel.zarr", "zero_voxel": "zero_voxel.zarr", "link": "link.zarr",
             "empty": "empty.zarr", "precomputed": "precomputed",
             "unicode_file": "données/a_file", "float": "float.zarr",
             "blank": "blank.zarr"}  # fmt: skip
    return {key: str(root / name) for key, name in names.items()}


def tree_digest(root: Path) -> str:
    """One hash of every file's path and bytes under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def foreign_checkpoints(checkpoint_dir, tmp_path_factory) -> dict[str, str]:
    """A checkpoint whose weights are truncated (hash updated to match, so only loading can
    tell), one whose weights belong to another architecture, and hand-edited configs that
    describe no valid architecture."""
    root = tmp_path_factory.mktemp("foreign")
    corrupt, other = root / "corrupt", root / "other"
    shutil.copytree(checkpoint_dir, corrupt)
    weights = weights_path(corrupt)
    weights.write_bytes(weights.read_bytes()[:1000])
    config = json.loads((corrupt / CONFIG).read_text())
    config["sha256"] = file_sha256(weights)
    (corrupt / CONFIG).write_text(json.dumps(config))
    save_checkpoint(other, build_model("paper", 2), preset="paper", step=0, normalization={})
    config = json.loads((other / CONFIG).read_text())
    config["model"] = json.loads((checkpoint_dir / CONFIG).read_text())["model"]
    (other / CONFIG).write_text(json.dumps(config))
    edited = {}
    for name, edit in (("heads_3", {"heads": 3}), ("window_0", {"window": 0})):
        shutil.copytree(checkpoint_dir, root / name)
        config = json.loads((root / name / CONFIG).read_text())
        config["model"].update(edit)
        (root / name / CONFIG).write_text(json.dumps(config))
        edited[name] = str(root / name)
    return {"corrupt": str(corrupt), "other_architecture": str(other), **edited}


@pytest.fixture(scope="module")
def diverged_checkpoint(checkpoint_dir, tmp_path_factory) -> str:
    """A checkpoint whose weights are all NaN with a hash that matches them, as a diverged
    training run used to leave behind."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path_factory.mktemp("diverged")
    shutil.copytree(checkpoint_dir, copy, dirs_exist_ok=True)
    weights = weights_path(copy)
    save_file({n: t.fill_(float("nan")) for n, t in load_file(str(weights)).items()}, str(weights))
    config = json.loads((copy / CONFIG).read_text())
    config["sha256"] = file_sha256(weights)
    (copy / CONFIG).write_text(json.dumps(config))
    return str(copy)


@pytest.fixture(scope="module")
def tampered_checkpoint(checkpoint_dir, tmp_path_factory) -> str:
    copy = tmp_path_factory.mktemp("tampered")
    shutil.copytree(checkpoint_dir, copy, dirs_exist_ok=True)
    config = json.loads((copy / "config.json").read_text())
    config["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


SMALL = ["--chunk", "1,32,32", "--block", "2,64,64", "--tile", "32", "--device", "cpu"]

BAD_INPUTS = {
    "missing store": (["{tmp}/absent.zarr", "{out}"], "no volume at"),
    "unknown scheme": (["ftp://host/em", "{out}"], "unknown volume URL"),
    "2-D input": (["{flat}", "{out}"], "rank 2"),
    "unsupported dtype": (["{int32}", "{out}"], "int32"),
    "float input to a model trained on uint8": (["{float}", "{out}"], "trained on uint8"),
    "blank volume with --normalization percentile": (
        ["{blank}", "{out}", "--normalization", "percentile"],
        "degenerate range",
    ),
    "unknown normalization": (["{lr}", "{out}", "--normalization", "auto"], "--normalization"),
    "unknown precision": (["{lr}", "{out}", "--precision", "fp8"], "--precision"),
    "checkpoint heads do not divide its channels": (
        ["{lr}", "{out}", "--checkpoint", "{heads_3}"],
        "3 heads do not divide 16 channels",
    ),
    "checkpoint with window 0": (
        ["{lr}", "{out}", "--checkpoint", "{window_0}"],
        "window must be at least 1",
    ),
    "block not chunk-aligned": (
        ["{lr}", "{out}", "--block", "2,40,64"],
        "whole number of output chunks",
    ),
    "ROI outside the volume": (
        ["{lr}", "{out}", "--roi", "0:2,0:64,0:999"],
        "outside the output volume",
    ),
    "ROI syntax": (["{lr}", "{out}", "--roi", "0:2,0:64"], "--roi must look like"),
    "empty ROI": (["{lr}", "{out}", "--roi", "0:0,0:64,0:64"], "is empty"),
    "scale differs from the checkpoint": (
        ["{lr}", "{out}", "--scale", "3"],
        "super-resolves ×2, not ×3",
    ),
    "unknown device": (["{lr}", "{out}", "--device", "tpu"], "--device"),
    "checkpoint missing": (["{lr}", "{out}", "--checkpoint", "{tmp}/no-ckpt"], "no checkpoint at"),
    "checkpoint hash mismatch": (
        ["{lr}", "{out}", "--checkpoint", "{tampered}"],
        "does not match the sha256",
    ),
    "pickled checkpoint": (
        ["{lr}", "{out}", "--checkpoint", "{pickle}"],
        "pickles are never loaded",
    ),
    "4-D input": (["{4d}", "{out}"], "rank 4"),
    "corrupt checkpoint": (["{lr}", "{out}", "--checkpoint", "{corrupt}"], "is corrupt"),
    "checkpoint of another architecture": (
        ["{lr}", "{out}", "--checkpoint", "{other_architecture}"],
        "belongs to another model",
    ),
    "existing output with other metadata": (["{lr}", "{existing}"], "exists with shape"),
    "output under a file": (["{lr}", "{a_file}/sr.zarr"], "cannot"),
    "bad cluster": (
        ["{lr}", "{out}", "--cluster", "kubernetes"],
        "'local', 'slurm' or 'tcp://HOST:PORT'",
    ),
    # Outputs that overlap an input: refused before anything is deleted or written.
    "output is the input": (
        ["{lr}", "{lr}", "--overwrite"],
        "overlaps the input",
    ),
    "output inside the input": (["{lr}", "{lr}/0/sr.zarr"], "overlaps the input"),
    "output is a symlink to the input": (["{lr}", "{link}", "--overwrite"], "overlaps the input"),
    "output inside the checkpoint": (["{lr}", "{checkpoint}/sr.zarr"], "overlaps the input"),
    "output holds a precomputed volume": (
        ["{lr}", "zarr3://{precomputed}", "--overwrite"],
        "holds a precomputed volume",
    ),
    # Sizes checked against the volume and the machine, never silently rounded.
    "tile far smaller than the halo": (
        ["{lr}", "{out}", "--tile", "4", "--halo", "16"],
        "the pixels it keeps",
    ),
    "tile not a window multiple": (["{lr}", "{out}", "--tile", "34"], "use 32 or 36"),
    "negative halo": (["{lr}", "{out}", "--halo", "-1"], "--halo: Input should be greater than"),
    "halo wider than the sections": (["{lr}", "{out}", "--halo", "10000"], "wider than the"),
    "too many local workers": (["{lr}", "{out}", "--workers", "1000"], "more than this machine"),
    # Pre-flight: an environment that cannot run the blocks leaves no output behind.
    "unreachable scheduler": (
        ["{lr}", "{out}", "--cluster", "tcp://127.0.0.1:9"],
        "no Dask scheduler answers",
    ),
    "garbled scheduler address": (["{lr}", "{out}", "--cluster", "tcp://host"], "bad scheduler"),
    "SLURM settings missing": (
        ["{lr}", "{out}", "--cluster", "slurm", "--slurm-config", "{tmp}/absent.yaml"],
        "SLURM",
    ),
    "cuda without a GPU": (["{lr}", "{out}", "--device", "cuda"], "no CUDA device"),
    "voxel size NaN": (["{nan_voxel}", "{out}"], "voxel size (nan, 8, 8) nm"),
    "voxel size zero": (["{zero_voxel}", "{out}"], "declares voxel size (40, 0, 8) nm"),
    "input 0 px wide": (["{empty}", "{out}", "--voxel-size", "50,30,30"], "is empty"),
    "diverged checkpoint": (["{lr}", "{out}", "--checkpoint", "{diverged}"], "diverged"),
    "non-ASCII path in a storage error": (["{lr}", "{unicode_file}/sr.zarr"], "données/a_file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(
    case,
    env,
    volumes,
    lr_url,
    checkpoint_dir,
    tampered_checkpoint,
    foreign_checkpoints,
    diverged_checkpoint,
    tmp_path,
):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    arguments, expected = BAD_INPUTS[case]
    names = {**volumes, **foreign_checkpoints, "lr": lr_url, "out": str(tmp_path / "sr.zarr"),
             "tmp": str(tmp_path), "tampered": tampered_checkpoint,
             "diverged": diverged_checkpoint, "checkpoint": str(checkpoint_dir)}  # fmt: skip
    filled = [argument.format(**names) for argument in arguments]
    if "--checkpoint" not in filled:
        filled += ["--checkpoint", str(checkpoint_dir)]
    read = [Path(volumes["flat"]).parent, Path(lr_url), Path(checkpoint_dir)]
    before = [tree_digest(root) for root in read]
    result = emsr("super-resolve", *SMALL, *filled, env=env)
    assert_one_error_line(result, expected)
    assert not (tmp_path / "sr.zarr").exists()
    assert [tree_digest(root) for root in read] == before


def test_input_replaced_under_a_resumable_run_is_one_line_and_changes_nothing(
    env, phantom, checkpoint_dir, tmp_path
):
    source, output = tmp_path / "lr.zarr", tmp_path / "sr.zarr"
    write_array(str(source), phantom.lr, phantom.lr_voxel_nm)
    arguments = [str(source), str(output), "--checkpoint", str(checkpoint_dir), *SMALL]
    assert emsr("super-resolve", *arguments, env=env).returncode == 0
    shutil.rmtree(source)
    write_array(str(source), 255 - phantom.lr, phantom.lr_voxel_nm)
    inputs_before, outputs_before = tree_digest(source), tree_digest(output)
    result = emsr("super-resolve", *arguments, env=env)
    assert_one_error_line(result, "changed since")
    assert (tree_digest(source), tree_digest(output)) == (inputs_before, outputs_before)


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and len([x for x in lines if "error" in x]) == 1


def test_a_full_disk_stops_the_run_with_one_line_and_a_truthful_ledger(
    env, lr_url, checkpoint_dir, tmp_path
):
    """Every write larger than 4 KiB fails (EFBIG, as ENOSPC would): the metadata (< 2 KiB)
    fits, the section-sized chunks (~9 KiB) do not; no block may be recorded as done."""
    output = tmp_path / "sr.zarr"
    arguments = [lr_url, str(output), "--checkpoint", str(checkpoint_dir), "--workers", "1",
                 "--chunk", "1,128,160", "--block", "2,128,160", "--tile", "32"]  # fmt: skip
    result = emsr("super-resolve", *arguments, env=env, file_size_limit=4096)
    assert_one_error_line(result, "File too large")
    ledger = list(Path(ledger_root(str(output))["path"]).rglob("*"))
    marks = [p for p in ledger if p.is_file() and p.name != "zarr.json"]
    assert not marks, marks


def test_debug_shows_the_traceback(env, checkpoint_dir, tmp_path):
    result = emsr("--debug", "super-resolve", "ftp://x/y", str(tmp_path / "o.zarr"),
                  "--checkpoint", str(checkpoint_dir), env=env)  # fmt: skip
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_phantom_train_super_resolve_audit_each_end_with_where_the_result_is(env, tmp_path):
    phantom = tmp_path / "phantom"
    steps = [
        (["phantom", str(phantom), "--shape", "4,64,64"],
         f"phantom volumes: {phantom}/hr_clean.zarr"),
        (["train", "--lr", f"{phantom}/lr.zarr", "--hr", f"{phantom}/hr.zarr", "--out",
          f"{tmp_path}/ckpt", "--steps", "3", "--patch", "16", "--device", "cpu"],
         f"checkpoint: {tmp_path}/ckpt at step 3"),
        (["super-resolve", f"{phantom}/lr.zarr", f"{tmp_path}/sr.zarr", "--checkpoint",
          f"{tmp_path}/ckpt", *SMALL], f"output: zarr3://file://{tmp_path}/sr.zarr"),
        (["audit", "--sr", f"{tmp_path}/sr.zarr", "--reference", f"{phantom}/hr_clean.zarr",
          "--out", f"{tmp_path}/audit"], f"metrics: {tmp_path}/audit/metrics.json (PSNR"),
    ]  # fmt: skip
    for arguments, closing in steps:
        result = emsr(*arguments, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(closing), result.stderr


def test_every_command_has_help():
    for command in ("phantom", "train", "extract-pairs", "super-resolve", "audit", "demo"):
        result = subprocess.run(
            [EMSR, command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "Usage" in result.stdout


def test_train_options_reach_the_training_configuration():
    from flows.params import TrainParams
    from flows.train import train_config

    params = TrainParams(lr_url="lr.zarr", hr_url="hr.zarr", out="ckpt", checkpoint_every=7,
                         validate_every=3, edge_attention=False)  # fmt: skip
    config = train_config(params)
    assert (config.checkpoint_every, config.validate_every, config.edge_attention) == (7, 3, False)


@pytest.mark.parametrize("message", ["no volume at /data/[red]x.zarr", "bad [/] close tag"])
def test_error_line_shows_brackets_as_written(message, capsys):
    import typer

    from flows.cli import fail

    with pytest.raises(typer.Exit):
        fail(message)
    assert capsys.readouterr().err == f"error: {message}\n"


def test_prefect_background_senders_stay_quiet_without_debug(monkeypatch):
    """Their loggers sit outside "prefect": left alone, "EventsWorker - Still processing
    items" follows the one error line whenever the server is slow to take events."""
    from flows.cli import PREFECT_SERVICE_LOGGERS, main

    monkeypatch.setattr("os.environ", dict(os.environ))
    for name in PREFECT_SERVICE_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    main(debug=False)
    assert logging.getLogger("EventsWorker").getEffectiveLevel() >= logging.ERROR
    assert logging.getLogger("APILogWorker").getEffectiveLevel() >= logging.ERROR
