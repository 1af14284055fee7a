"""`emsr super-resolve --cluster slurm` on a real single-node SLURM: the Dask workers are
SLURM jobs, the output equals a local run's, and no job is left queued."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from slurm import queued_job_ids, small_slurm_settings

from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import open_volume

ALL = (slice(None),) * 3
OPTIONS = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu"}


def emsr(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("emsr")), *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_super_resolve_on_slurm_workers_matches_a_local_run(
    slurm, prefect_server, lr_url, checkpoint_dir, cluster_address, tmp_path
):
    config = small_slurm_settings(tmp_path, memory="3GB")
    output = tmp_path / "sr_slurm.zarr"
    result = emsr(
        "super-resolve", lr_url, str(output), "--checkpoint", str(checkpoint_dir),
        "--chunk", "1,32,32", "--block", "2,64,64", "--tile", "32", "--device", "cpu",
        "--cluster", "slurm", "--workers", "1", "--slurm-config", str(config),
        env=prefect_server.environment(slurm),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "output: zarr3://file://" in result.stderr
    assert queued_job_ids() == []
    assert list((tmp_path / "logs").iterdir()), "the worker ran as a SLURM job and logged there"

    local = tmp_path / "sr_local.zarr"
    super_resolve(
        SuperResolveRequest(
            lr_url, str(local), str(checkpoint_dir), cluster=cluster_address, **OPTIONS
        )
    )
    assert np.array_equal(open_volume(str(output)).read(ALL), open_volume(str(local)).read(ALL))
