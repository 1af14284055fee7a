"""Security: checkpoints are never unpickled, credentials in URLs never show, and with
EMSR_DATA_ROOT set no local path leads outside it.

The credential checks run a real job whose input is served over HTTP with basic auth, so the
secret travels where a user's would: through Dask workers, provenance, Prefect and messages.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from emsr.checkpoint import (
    CONFIG,
    TRAINING_STATE,
    WEIGHTS,
    file_sha256,
    load_training_state,
    read_checkpoint,
)
from emsr.errors import CheckpointError
from flows.audit import AuditParams
from flows.extract_pairs import ExtractPairsParams
from flows.params import SuperResolveParams, TrainParams
from flows.super_resolve import super_resolve_flow
from flows.train import train_flow
from pipeline.audit.run import audit
from pipeline.errors import VolumeError
from pipeline.pairs import extract_pairs
from pipeline.superresolve import SuperResolveRequest, output_source, prepare
from pipeline.urls import DATA_ROOT_ENV, parse_volume_url, redact
from pipeline.volumes import open_volume, write_array

EMSR = str(Path(sys.executable).with_name("emsr"))
USER, SECRET = "reader", "s3cr3t-Pa55"
TOKEN = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
LEAKS = (SECRET, TOKEN)
SMALL = ["--chunk", "1,32,32", "--block", "2,64,64", "--tile", "32", "--halo", "8",
         "--device", "cpu"]  # fmt: skip
BROKEN_CHUNK = "/broken/lr.zarr/0/c/3/0/0"


def emsr(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EMSR, *arguments], capture_output=True, text=True, env=env, timeout=300)


def assert_no_secret(text: str) -> None:
    assert not [leak for leak in LEAKS if leak in text], "a credential leaked"


def files_text(directory: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in directory.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def env(prefect_server) -> dict[str, str]:
    return prefect_server.environment()


# --- checkpoints are never unpickled ----------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def pickled_checkpoint(checkpoint_dir, marker, tmp_path) -> Path:
    """A checkpoint whose weights file is a pickle, with a config that vouches for its hash."""
    directory = tmp_path / "evil"
    directory.mkdir()
    config = json.loads((checkpoint_dir / CONFIG).read_text())
    weights = directory / config[WEIGHTS]
    weights.write_bytes(pickle.dumps(Payload(marker)))
    config["sha256"] = file_sha256(weights)
    (directory / CONFIG).write_text(json.dumps(config))
    return directory


@pytest.fixture
def torch_pickle(marker, tmp_path) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"state_dict": Payload(marker)}, path)
    return path


def test_pickled_weights_under_the_safetensors_name_are_refused_unrun(pickled_checkpoint, marker):
    for verify in (True, False):
        with pytest.raises(CheckpointError, match="is corrupt"):
            read_checkpoint(pickled_checkpoint, verify=verify)
    assert not marker.exists()


def test_pickled_training_state_is_refused_unrun(checkpoint_dir, marker, tmp_path):
    directory = tmp_path / "resume"
    shutil.copytree(checkpoint_dir, directory)
    config = json.loads((directory / CONFIG).read_text())
    config[TRAINING_STATE] = "training_state-0123456789abcdef.safetensors"
    (directory / config[TRAINING_STATE]).write_bytes(pickle.dumps(Payload(marker)))
    (directory / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_training_state(directory)
    assert not marker.exists()


def test_torch_pickle_path_is_refused_unrun(torch_pickle, marker):
    with pytest.raises(CheckpointError, match="pickles are never loaded"):
        read_checkpoint(torch_pickle)
    assert not marker.exists()


def test_command_refuses_a_pickled_checkpoint_without_running_it(
    pickled_checkpoint, lr_url, marker, env, tmp_path
):
    output = tmp_path / "sr.zarr"
    arguments = [lr_url, str(output), "--checkpoint", str(pickled_checkpoint), *SMALL]
    result = emsr("super-resolve", *arguments, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not marker.exists() and not output.exists()


# --- credentials never show -------------------------------------------------------------------


class BasicAuthFiles(SimpleHTTPRequestHandler):
    """Serves a directory to requests carrying the test's basic-auth token; one chunk under
    /broken/ always answers 403, like an object whose permissions are wrong."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Basic {TOKEN}":
            self.send_error(401)
        elif self.path == BROKEN_CHUNK:
            self.send_error(403)
        else:
            super().do_GET()

    def log_message(self, *args: object) -> None:
        """Quiet: requests are not test output."""


@pytest.fixture(scope="module")
def served_lr(lr_url, tmp_path_factory) -> Iterator[str]:
    """The phantom's LR volume over HTTP with basic auth: the host and port to put in URLs."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(lr_url, root / "lr.zarr")
    (root / "broken").symlink_to(root)
    handler = functools.partial(BasicAuthFiles, directory=str(root))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()


def with_credentials(address: str, path: str) -> str:
    return f"http://{USER}:{SECRET}@{address}/{path}"


@dataclass(frozen=True)
class CredentialedRun:
    """What a completed run with a credentialed input left behind, and where."""

    source: str
    output: Path
    result: dict
    artifacts: str
    logs: str
    parameters: dict


@pytest.fixture(scope="module")
def credentialed_run(
    served_lr, checkpoint_dir, cluster_address, prefect_api, prefect_server, tmp_path_factory
) -> CredentialedRun:
    """The super-resolve flow, reporting to the session's Prefect server, on an input that
    needs basic auth; then everything Prefect recorded about the run."""
    source = with_credentials(served_lr, "lr.zarr")
    output = tmp_path_factory.mktemp("credentialed") / "sr.zarr"
    params = SuperResolveParams(
        input_url=source, output_url=str(output), checkpoint=str(checkpoint_dir),
        chunk=(1, 32, 32), block=(2, 64, 64), tile=32, halo=8, device="cpu",
        cluster=cluster_address,
    )  # fmt: skip
    state = super_resolve_flow(params, return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    with prefect_server.client() as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        parameters = client.read_flow_run(run_id).parameters
    assert any(artifact.type == "markdown" for artifact in artifacts)
    return CredentialedRun(
        source, output, state.result(), " ".join(str(artifact.data) for artifact in artifacts),
        " ".join(log.message for log in logs), parameters,
    )  # fmt: skip


def test_secret_never_reaches_the_output_or_the_result(credentialed_run):
    assert credentialed_run.result["blocks_computed"] == 18
    provenance = open_volume(str(credentialed_run.output)).read_attributes()
    assert provenance["input"] == redact(credentialed_run.source)
    assert_no_secret(files_text(credentialed_run.output))
    assert_no_secret(json.dumps(credentialed_run.result))


def test_secret_never_reaches_prefect_artifacts_or_logs(credentialed_run):
    assert "Super-resolution" in credentialed_run.artifacts
    assert_no_secret(credentialed_run.artifacts)
    assert_no_secret(credentialed_run.logs)


def test_secret_never_reaches_the_flow_run_parameters_prefect_stores(credentialed_run):
    assert_no_secret(json.dumps(credentialed_run.parameters))


@pytest.mark.parametrize(
    ("position", "path", "expected"),
    [
        ("input", "absent.zarr", r"^error: no volume at http://\*\*\*@127\.0\.0\.1"),
        ("output", "sr.zarr", r"^error: cannot create http://\*\*\*@127\.0\.0\.1"),
    ],
)
def test_command_error_for_a_credentialed_url_hides_the_secret(
    position, path, expected, served_lr, lr_url, checkpoint_dir, env, tmp_path
):
    url = with_credentials(served_lr, path)
    volumes = [url, str(tmp_path / "sr.zarr")] if position == "input" else [lr_url, url]
    result = emsr("super-resolve", *volumes, "--checkpoint", str(checkpoint_dir), *SMALL, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert re.search(expected, line), line
    assert_no_secret(result.stdout + result.stderr)


def test_read_only_credentialed_output_is_refused_without_its_auth_header(served_lr, phantom):
    with pytest.raises(VolumeError, match=r"cannot create http://\*\*\*@") as refusal:
        write_array(with_credentials(served_lr, "new.zarr"), phantom.lr, phantom.lr_voxel_nm)
    assert_no_secret(str(refusal.value))


def test_redacted_credentials_from_stored_parameters_are_refused():
    with pytest.raises(VolumeError, match=r"carries redacted credentials"):
        open_volume(redact(with_credentials("127.0.0.1:9", "lr.zarr")))


def test_s3_url_with_credentials_is_refused_without_showing_them():
    with pytest.raises(VolumeError, match="credentials inside s3 URLs") as refusal:
        parse_volume_url(f"zarr3://s3://AKIAEXAMPLE:{SECRET}@bucket/x")
    assert_no_secret(str(refusal.value))


def test_unreadable_chunk_of_a_credentialed_input_hides_the_secret(
    served_lr, checkpoint_dir, env, tmp_path
):
    """The input's fingerprint reads sampled chunks before anything is created (in this small
    volume, every one), so the broken chunk is refused before any block runs."""
    source = with_credentials(served_lr, "broken/lr.zarr")
    output = str(tmp_path / "sr.zarr")
    arguments = [source, output, "--checkpoint", str(checkpoint_dir), "--workers", "1", *SMALL]
    result = emsr("super-resolve", *arguments, env=env)
    assert result.returncode == 2 and "error: cannot read http://***@" in result.stderr
    assert not Path(output).exists()
    assert_no_secret(result.stdout + result.stderr)


@pytest.mark.parametrize(
    "url",
    [
        f"zarr3://https://{USER}:{SECRET}@host/x.zarr",
        f"https://{USER}:{SECRET}@host/x.zarr|zarr3:",
        f"precomputed://https://{USER}:{SECRET}@host/em",
    ],
)
def test_output_source_line_hides_the_secret(url):
    assert_no_secret(output_source(url))
    assert "***@host" in output_source(url)


def test_secret_holding_slashes_and_at_signs_is_redacted_whole():
    url = f"https://{USER}:a/b@c{SECRET}@host/x.zarr"
    assert redact(url) == "https://***@host/x.zarr"


# --- EMSR_DATA_ROOT ---------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path) -> tuple[Path, Path]:
    """A data root with a folder in it, and a folder beside it."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    (root / "inside").mkdir(parents=True)
    outside.mkdir()
    return root, outside


@pytest.fixture
def data_root(places, monkeypatch) -> Path:
    monkeypatch.setenv(DATA_ROOT_ENV, str(places[0]))
    return places[0]


@pytest.mark.parametrize(
    "form", ["{}", "file://{}", "zarr3://file://{}", "precomputed://file://{}", "{}|zarr3:"]
)
def test_dot_dot_out_of_the_data_root_is_refused_in_every_url_form(form, data_root):
    escaping = f"{data_root}/inside/../../outside/x.zarr"
    with pytest.raises(VolumeError, match="escapes the data root"):
        parse_volume_url(form.format(escaping))
    parse_volume_url(form.format(f"{data_root}/inside/../y.zarr"))


def test_symlink_out_of_the_data_root_is_refused(data_root):
    (data_root / "exit").symlink_to(data_root.parent / "outside")
    (data_root / "shortcut").symlink_to(data_root / "inside")
    with pytest.raises(VolumeError, match=r"escapes the data root .*resolves to .*outside"):
        parse_volume_url(str(data_root / "exit" / "x.zarr"))
    assert parse_volume_url(str(data_root / "shortcut" / "x.zarr")).kvstore["driver"] == "file"


def test_paths_inside_the_data_root_work(data_root, phantom):
    path = data_root / "inside" / "lr.zarr"
    write_array(str(path), phantom.lr, phantom.lr_voxel_nm)
    assert open_volume(f"zarr3://file://{path}").info.shape == phantom.lr.shape


def test_without_a_data_root_paths_are_not_restricted(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert parse_volume_url(str(tmp_path / ".." / "x.zarr")).kvstore["path"].endswith("/x.zarr/")
    monkeypatch.setenv(DATA_ROOT_ENV, "")
    assert parse_volume_url("/x.zarr").kvstore["path"] == "/x.zarr/"


@pytest.fixture
def rooted(places, phantom, checkpoint_dir, monkeypatch) -> dict[str, str]:
    """An LR volume and a checkpoint inside the data root, and copies of both outside it."""
    root, outside = places
    for place in places:
        write_array(str(place / "lr.zarr"), phantom.lr, phantom.lr_voxel_nm)
        shutil.copytree(checkpoint_dir, place / "checkpoint")
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    return {
        "input_url": str(root / "lr.zarr"),
        "output_url": str(root / "inside" / "sr.zarr"),
        "checkpoint": str(root / "checkpoint"),
        "outside": str(outside),
    }


@pytest.mark.parametrize(
    ("escape", "name"),
    [("input_url", "lr.zarr"), ("output_url", "sr.zarr"), ("checkpoint", "checkpoint")],
)
def test_super_resolve_refuses_any_path_outside_the_data_root(escape, name, rooted):
    paths = {key: rooted[key] for key in ("input_url", "output_url", "checkpoint")}
    with pytest.raises(VolumeError, match="escapes the data root"):
        prepare(SuperResolveRequest(**{**paths, escape: f"{rooted['outside']}/{name}"}, tile=32))
    assert not Path(rooted["output_url"]).exists()
    assert not Path(rooted["outside"], "sr.zarr").exists()
    prepare(SuperResolveRequest(**paths, tile=32))
    assert Path(rooted["output_url"]).exists()


def test_train_extract_pairs_and_audit_refuse_outputs_outside_the_data_root(rooted):
    target = Path(rooted["outside"], "result")
    lr = rooted["input_url"]
    train = TrainParams(lr_url=lr, hr_url=lr, out=str(target), steps=0)
    state = train_flow.fn(train)
    assert "escapes the data root" in state.message
    with pytest.raises(VolumeError, match="escapes the data root"):
        extract_pairs(ExtractPairsParams(hr_url=lr, out=str(target)).to_request())
    with pytest.raises(VolumeError, match="escapes the data root"):
        audit(AuditParams(sr_url=lr, reference_url=lr, out=str(target)).to_request())
    assert not target.exists()


def test_command_refuses_an_output_outside_the_data_root(rooted, env):
    output = Path(rooted["outside"], "sr.zarr")
    arguments = [rooted["input_url"], str(output), "--checkpoint", rooted["checkpoint"], *SMALL]
    result = emsr(
        "super-resolve", *arguments, env={**env, DATA_ROOT_ENV: os.environ[DATA_ROOT_ENV]}
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "escapes the data root" in line and not output.exists()
