"""Checks that a run can start, made before it creates anything.

A run that fails after creating its output leaves an empty store behind, and its message
("finished blocks are recorded, rerun to continue") promises a rerun that cannot help. So the
cluster must be reachable or startable, the device present and the input's metadata sane
before the output exists; each failure is one line saying what to change.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from emsr.inference import resolve_device
from pipeline.cluster import DEFAULT_SLURM_CONFIG, check_cluster, slurm_cluster_options
from pipeline.errors import ClusterError, PlanError, VolumeError
from pipeline.volumes import VolumeInfo

SCHEDULER_PROBE_TIMEOUT_S = 5.0
SLURM_PROBE_TIMEOUT_S = 15.0
MAX_TILE_PX = 4096
"""A tile of 4096² LR px (plus halo) already holds gigabytes of activations in a batch."""


def check_can_start(
    cluster: str,
    workers: int,
    threads_per_worker: int,
    device: str,
    slurm_config: Path | None = None,
) -> None:
    """Refuse a cluster or device that cannot run the blocks, without starting anything."""
    check_cluster(cluster, workers, threads_per_worker)
    if cluster == "local":
        resolve_device(device)  # local workers see this machine's devices
    elif cluster == "slurm":
        check_slurm(slurm_config or DEFAULT_SLURM_CONFIG)
    else:
        check_scheduler_reachable(cluster)


def check_scheduler_reachable(address: str) -> None:
    """A TCP connection to the scheduler's port (the address's syntax is already checked)."""
    parts = urlsplit(address)
    try:
        socket.create_connection((parts.hostname, parts.port), SCHEDULER_PROBE_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ClusterError(
            f"no Dask scheduler answers at {address} ({reason}): start one there, check the "
            "address, or use --cluster local"
        ) from None


def check_slurm(config: Path) -> None:
    """SLURM's commands present and its controller answering, and the settings file valid."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ClusterError(
            "SLURM is not available here (no sbatch/sinfo on PATH): run on a SLURM login "
            "node or use --cluster local"
        )
    slurm_cluster_options(config)
    try:
        probe = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
            timeout=SLURM_PROBE_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"SLURM's controller did not answer within {SLURM_PROBE_TIMEOUT_S:g} s "
            "(sinfo timed out): check that slurmctld runs, or use --cluster local"
        ) from None
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ClusterError(
            f"SLURM is not usable here (sinfo: {reason}): check SLURM_CONF and slurmctld, "
            "or use --cluster local"
        )


def check_input(info: VolumeInfo) -> None:
    """An input with voxels in it, and a voxel size finite and positive: the output's shape
    and voxel size are derived from them."""
    if min(info.shape) < 1:
        raise VolumeError(
            f"{info.url} is empty (shape {info.shape}, z, y, x): there is nothing to process"
        )
    if not all(math.isfinite(v) and v > 0 for v in info.voxel_size_nm):
        shown = ", ".join(f"{v:g}" for v in info.voxel_size_nm)
        raise VolumeError(
            f"{info.url} declares voxel size ({shown}) nm (z, y, x): each must be a positive "
            "finite number; fix the input's metadata"
        )


def check_tiling(tile: int, halo: int, window: int, section: tuple[int, int]) -> None:
    """Tile and halo sizes the model can use as given, at a bounded cost.

    Sizes are never silently rounded: a tile that is no multiple of the attention window, or
    a halo wider than half the tile (the model would compute over 4× the pixels it keeps), or
    wider than the sections themselves, is refused with sizes that work.
    """
    if halo < 0 or tile < 1:
        raise PlanError(f"--tile must be positive and --halo at least 0, not {tile} and {halo}")
    if halo > max(section):
        raise PlanError(
            f"--halo {halo} is wider than the {section[0]} × {section[1]} px input sections: "
            f"use at most {max(section) // window * window}"
        )
    if tile < 2 * halo:
        raise PlanError(
            f"--tile {tile} with --halo {halo} makes the model compute "
            f"{((tile + 2 * halo) / tile) ** 2:.0f}× the pixels it keeps: use --tile "
            f"{2 * halo} or more"
        )
    for name, size in (("--tile", tile), ("--halo", halo)):
        if size % window:
            lower, upper = size // window * window, -(-size // window) * window
            sizes = f"{lower} or {upper}" if lower else f"{upper}"
            raise PlanError(
                f"{name} {size} is not a multiple of the model's {window}-px attention "
                f"window: use {sizes}"
            )
    if tile > MAX_TILE_PX:
        raise PlanError(f"--tile {tile} would not fit in memory: use at most {MAX_TILE_PX}")
