"""One Dask worker per GPU: a worker preload that narrows CUDA_VISIBLE_DEVICES to one device.

Several worker processes on one multi-GPU node (`--cluster local` on a GPU box, a SLURM job
with `processes: N` and N GPUs, the compose stack's `--nworkers N`) all inherit the same
CUDA_VISIBLE_DEVICES, and `torch.device("cuda")` is `cuda:0` in each: every worker would then
compute on the first GPU while the others idle. Dask starts each worker process with this
module as a preload (`--preload pipeline.gpu_pinning`), before any block imports torch, so
the narrowed variable is what CUDA sees; the k-th worker of a node gets the k-th device.

The worker's position comes from its name: LocalCluster names workers 0, 1, …; `dask worker
--nworkers N --name X` (dask-jobqueue, compose) names them X-0, X-1, …. A lone worker with no
index keeps every device it was given.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

logger = logging.getLogger(__name__)

PRELOAD = "pipeline.gpu_pinning"
"""The module path to hand to Dask's `preload` option or `dask worker --preload`."""


def worker_position(name: object) -> int | None:
    """The worker's index among its node's worker processes, from its Dask name."""
    if isinstance(name, int):
        return name
    match = re.search(r"-(\d+)$", str(name))
    return int(match.group(1)) if match else None


def device_for(position: int | None, visible: str | None, count: int) -> str | None:
    """The one device (an entry of CUDA_VISIBLE_DEVICES, or an index) a worker should use;
    None when there is nothing to choose from or no position to choose by."""
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    if not devices:
        devices = [str(index) for index in range(count)]
    if position is None or not devices:
        return None
    return devices[position % len(devices)]


def visible_gpu_count() -> int:
    """GPUs the driver shows, asked of `nvidia-smi`: asking CUDA would initialise it in this
    process, after which narrowing CUDA_VISIBLE_DEVICES no longer has any effect."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return 0
    try:
        listing = subprocess.run(
            [executable, "--list-gpus"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def node_gpu_count() -> int:
    """GPUs this process may hand to local workers: CUDA_VISIBLE_DEVICES where it is set
    (empty means none), else what the driver shows."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip()])
    return visible_gpu_count()


def dask_setup(worker: object) -> None:
    """Dask's preload hook: pin this worker process to its own GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = 0 if visible else visible_gpu_count()
    device = device_for(worker_position(getattr(worker, "name", None)), visible, count)
    if device is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    logger.info("worker %s uses GPU %s", getattr(worker, "name", "?"), device)
