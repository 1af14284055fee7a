"""Shared fixtures: a phantom, a small checkpoint, and the real services the tests start once
per session: a Dask cluster, a single-node SLURM and a Prefect server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from distributed import LocalCluster
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_server import PrefectServer, running_server
from slurm import SlurmUnavailable, single_node_slurm

from emsr.checkpoint import ValidatedHalo, load_checkpoint, record_validated_halo, save_checkpoint
from emsr.network import build_model
from emsr.phantom import PhantomSpec, PhantomVolumes, make_phantom
from pipeline.volumes import write_array

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def phantom() -> PhantomVolumes:
    """A small ×2 phantom: 6 sections of 128 × 160 HR pixels."""
    return make_phantom(PhantomSpec(shape=(6, 128, 160), scale=2, seed=3))


@pytest.fixture(scope="session")
def lr_url(phantom: PhantomVolumes, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("volumes") / "lr.zarr"
    write_array(str(path), phantom.lr, phantom.lr_voxel_nm)
    return str(path)


@pytest.fixture(scope="session")
def hr_url(phantom: PhantomVolumes, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("volumes") / "hr.zarr"
    write_array(str(path), phantom.hr, phantom.hr_voxel_nm)
    return str(path)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained `small` ×2 model: deterministic weights are all the pipeline needs."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(
        directory, build_model("small", 2), preset="small", step=0,
        normalization={"lr": {"low": 0.0, "high": 255.0}},
    )  # fmt: skip
    return directory


@pytest.fixture
def overflowing_checkpoint(checkpoint_dir: Path, tmp_path: Path) -> Path:
    """Finite weights so large that the model's arithmetic overflows on any input (its output
    would be NaN). It records a validated halo, as trained checkpoints do, so that a run gets
    past prepare's seam measurement (which would refuse it) to the blocks, whose own
    non-finite check is what it is for."""
    model = load_checkpoint(checkpoint_dir)
    for parameter in model.parameters():
        parameter.data.mul_(1e30)
    huge = tmp_path / "huge"
    save_checkpoint(huge, model, preset="small", step=0,
                    normalization={"lr": {"low": 0.0, "high": 255.0}})  # fmt: skip
    record_validated_halo(huge, ValidatedHalo(halo=0, tile=4, seam_psnr_db=None, target_db=50.0))
    return huge


@pytest.fixture(scope="session")
def cluster_address() -> Iterator[str]:
    """One local Dask cluster for the session, joined by address like an existing scheduler."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def slurm() -> Iterator[dict[str, str]]:
    """A private single-node SLURM for the session; SLURM_CONF points every command at it."""
    with ExitStack() as stack:
        try:
            env = stack.enter_context(single_node_slurm())
        except SlurmUnavailable as reason:
            pytest.skip(f"no single-node SLURM: {reason}")
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the session (SQLite in a temporary PREFECT_HOME, no UI);
    stopped by PID with everything it started when the session ends."""
    with running_server(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """Flows called in this process report to the session's server (no temporary server)."""
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url
