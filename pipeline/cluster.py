"""Dask clusters for block processing: local processes, an existing scheduler, or SLURM jobs.

`connect` is the one way the flows get a Dask client. Whatever it starts is gone when its block
ends, exceptions and Ctrl-C included; for SLURM that means no job is left in `squeue` (leaked
jobs keep burning allocations and GPU hours). Workers also get the flow's `PREFECT_API_URL`, so
Prefect code inside them talks to the flow's server instead of starting its own.

Sending block tasks to GPU workers: pass `resources=` to `client.submit`, `client.map` or
`client.compute` (see `gpu_task_resources`). Do not rely on `dask.annotate(resources=...)`:
graph optimisation fuses tasks and drops their annotations (dask issue #7036), so fused tasks
silently land on CPU-only workers.
"""

import getpass
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dask
import distributed.system
import yaml
from distributed import Client, LocalCluster

from pipeline.errors import ClusterError
from pipeline.gpu_pinning import PRELOAD, node_gpu_count

logger = logging.getLogger(__name__)

ACCEPTED_CLUSTERS = "'local', 'slurm' or 'tcp://HOST:PORT'"
DEFAULT_SLURM_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "slurm.yaml"
GPU_RESOURCE = "GPU"
# Environment variables that workers must share with the process that starts them.
FORWARDED_ENVIRONMENT = ("PREFECT_API_URL",)
SCHEDULER_CONNECT_TIMEOUT_S = 10.0
SLURM_START_TIMEOUT_S = 300.0
SLURM_CANCEL_TIMEOUT_S = 60.0
JOB_CHECK_S = 5.0
LOCAL_OVERSUBSCRIPTION = 2
LOCAL_WORKER_MEMORY_BYTES = 1 << 30
"""What one local worker (torch, a model, a block in flight) needs at the least."""


@contextmanager
def connect(
    cluster: str = "local",
    workers: int = 2,
    *,
    threads_per_worker: int = 1,
    slurm_config: Path | None = None,
    timeout: float | None = None,
) -> Iterator[Client]:
    """Yield a client of the asked-for cluster; close it and all it started on exit.

    cluster: "local" starts `workers` worker processes on this machine; "tcp://HOST:PORT"
        joins a running scheduler (its workers are not ours to start or stop); "slurm" submits
        `workers` jobs described by `slurm_config` (default deploy/slurm.yaml).
    threads_per_worker: for "local"; SLURM workers take theirs from cores / processes.
    timeout: seconds to wait for the scheduler ("tcp", default 10) or for the first SLURM
        worker to join (default 300; the other jobs join as SLURM starts them).
    """
    check_cluster(cluster, workers, threads_per_worker)
    if cluster == "local":
        session = _local_cluster(workers, threads_per_worker)
    elif cluster == "slurm":
        config = slurm_config or DEFAULT_SLURM_CONFIG
        session = _slurm_cluster(workers, config, timeout or SLURM_START_TIMEOUT_S)
    else:
        session = _existing_scheduler(cluster, timeout or SCHEDULER_CONNECT_TIMEOUT_S)
    with session as client:
        yield client


def check_cluster(cluster: str, workers: int = 1, threads_per_worker: int = 1) -> None:
    """Refuse a cluster choice that cannot work, before a run writes anything."""
    if workers < 1 or threads_per_worker < 1:
        raise ClusterError(
            f"workers and threads per worker must be at least 1, got {workers} and "
            f"{threads_per_worker}"
        )
    if cluster not in ("local", "slurm") and not cluster.startswith("tcp://"):
        raise ClusterError(f"unknown cluster {cluster!r}; use {ACCEPTED_CLUSTERS}")
    if cluster.startswith("tcp://"):
        _check_address(cluster)
    if cluster == "local":
        # Each local worker is a process holding torch and a model: more of them than the
        # cores (oversubscribed twice) or the memory can hold only thrash and never finish.
        cores, memory = dask.system.CPU_COUNT, distributed.system.MEMORY_LIMIT
        most = max(1, min(LOCAL_OVERSUBSCRIPTION * cores, memory // LOCAL_WORKER_MEMORY_BYTES))
        if workers > most or workers * threads_per_worker > LOCAL_OVERSUBSCRIPTION * cores:
            raise ClusterError(
                f"{workers} local workers × {threads_per_worker} threads are more than this "
                f"machine can run ({cores} cores, {memory / 2**30:.0f} GiB): use at most "
                f"{most} workers with {threads_per_worker} thread(s), or a bigger cluster"
            )


def worker_gpu_count(client: Client) -> int:
    """How many GPUs the connected workers advertise through their `GPU` resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return int(sum(worker.get("resources", {}).get(GPU_RESOURCE, 0) for worker in workers))


def cluster_has_gpus(client: Client) -> bool:
    """Whether some worker can run tasks that ask for a GPU."""
    return worker_gpu_count(client) > 0


def gpu_task_resources(client: Client) -> dict[str, float] | None:
    """The `resources=` to submit block tasks with: one GPU each where workers have GPUs.

    None on CPU-only clusters, because a task that asks for a resource no worker has waits
    forever instead of failing.
    """
    return {GPU_RESOURCE: 1} if cluster_has_gpus(client) else None


def slurm_cluster_options(config: Path, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The SLURMCluster keyword arguments that a dask-jobqueue YAML file asks for.

    The file is in dask's configuration layout (`jobqueue: slurm: {...}`), so it can also be
    used as a dask config file; `FORWARDED_ENVIRONMENT` variables set in `environ` are added to
    the job prologue, because a site's SLURM may not pass the submitting environment on.
    """
    spec = _read_slurm_spec(config)
    options = {key.replace("-", "_"): value for key, value in spec.items()}
    # dask-jobqueue calls the job name "name" in its config, "job_name" as an argument.
    name = options.pop("name", None) or "emsr-dask"
    options["job_name"] = f"{name}-{secrets.token_hex(4)}"
    exports = [
        f"export {variable}={shlex.quote(environ[variable])}"
        for variable in FORWARDED_ENVIRONMENT
        if environ.get(variable)
    ]
    options["job_script_prologue"] = [*(options.get("job_script_prologue") or []), *exports]
    options["scheduler_options"] = {
        "dashboard_address": ":0",
        **(options.get("scheduler_options") or {}),
    }
    return options


def _read_settings(config: Path) -> Any:
    try:
        return yaml.safe_load(Path(config).read_text())
    except OSError as error:
        raise ClusterError(f"cannot read SLURM settings {config}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ClusterError(f"SLURM settings {config} are not valid YAML{where}") from None


def slurm_job_range(config: Path, jobs: int) -> tuple[int, int]:
    """(minimum, maximum) SLURM jobs to keep: `jobs` at most, and at least the settings'
    `emsr: minimum-jobs` (default: `jobs`, so every job that ends is replaced)."""
    document = _read_settings(config)
    ours = document.get("emsr") if isinstance(document, dict) else None
    minimum = (ours or {}).get("minimum-jobs")
    if minimum is None:
        return jobs, jobs
    if not isinstance(minimum, int) or minimum < 0:
        raise ClusterError(f"SLURM settings {config}: emsr: minimum-jobs must be an integer ≥ 0")
    return min(minimum, jobs), jobs


def _read_slurm_spec(config: Path) -> dict[str, Any]:
    """The `jobqueue: slurm:` mapping of a settings file, checked against dask-jobqueue's."""
    document = _read_settings(config)
    jobqueue = document.get("jobqueue") if isinstance(document, dict) else None
    spec = jobqueue.get("slurm") if isinstance(jobqueue, dict) else None
    if not isinstance(spec, dict):
        raise ClusterError(f"SLURM settings {config} need a 'jobqueue: slurm:' mapping")
    import dask_jobqueue  # noqa: F401  (registers its documented settings with dask.config)

    known = dask.config.get("jobqueue.slurm")
    unknown = sorted(key for key in spec if str(key).replace("_", "-") not in known)
    if unknown:
        raise ClusterError(
            f"SLURM settings {config} have unknown keys {', '.join(map(str, unknown))}; "
            "use dask-jobqueue's SLURM settings (see deploy/slurm.yaml)"
        )
    if spec.get("cores") is None or spec.get("memory") is None:
        raise ClusterError(f"SLURM settings {config} must set cores and memory per job")
    return spec


def local_gpu_options() -> dict[str, Any]:
    """On a GPU node, each local worker process gets its own GPU (the pinning preload) and
    advertises it as `GPU=1`; without this every worker would compute on cuda:0. Preloads
    set in dask's configuration (the CLI's Ctrl-C handling) are kept: an explicit `preload`
    replaces them."""
    if node_gpu_count() == 0:
        return {}
    configured = dask.config.get("distributed.worker.preload", [])
    return {"preload": [*configured, PRELOAD], "resources": {GPU_RESOURCE: 1}}


@contextmanager
def _local_cluster(workers: int, threads_per_worker: int) -> Iterator[Client]:
    """Worker processes on this machine; they inherit this process's environment."""
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
            **local_gpu_options(),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def _existing_scheduler(address: str, timeout: float) -> Iterator[Client]:
    """A client of a scheduler someone else runs; closing it leaves their cluster alone."""
    _check_address(address)
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError):
        raise ClusterError(
            f"no Dask scheduler answered at {address} within {timeout:g} s; "
            "start one there or check the address"
        ) from None
    with client:
        yield client


def _check_address(address: str) -> None:
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ClusterError(f"bad scheduler address {address!r}; use {ACCEPTED_CLUSTERS}")


@contextmanager
def _slurm_cluster(jobs: int, config: Path, timeout: float) -> Iterator[Client]:
    """Up to `jobs` SLURM jobs of Dask workers, scaled adaptively and replaced as they end
    (worker lifetime, walltime, a lost node); every one of them is cancelled on the way out."""
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "SLURM is not available: sbatch not found; install slurm or use --cluster local"
        )
    options = slurm_cluster_options(config)
    job_name = options["job_name"]
    with ExitStack() as stack:
        stack.enter_context(_cancelled_on_exit(job_name))
        # Imported here: dask_jobqueue installs a signal handler on import, which fails in the
        # non-main threads where Prefect loads flows.
        from dask_jobqueue import SLURMCluster

        cluster = stack.enter_context(SLURMCluster(**options))
        _check_job_accepted(cluster.job_script(), config)
        minimum, maximum = slurm_job_range(config, jobs)
        cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)
        stack.enter_context(_replacing_ended_jobs(cluster))
        client = stack.enter_context(Client(cluster))
        _wait_for_first_worker(client, job_name, timeout, options.get("log_directory"))
        yield client


@contextmanager
def _replacing_ended_jobs(cluster: Any) -> Iterator[None]:
    """Resubmit jobs that ended while the run goes on.

    dask's adaptive scaling submits jobs only when its target changes; a job that ended
    (its worker reached `--lifetime`, SLURM's walltime, a node failure) stays in the cluster's
    plan and is never resubmitted. Re-applying the plan every `JOB_CHECK_S` seconds, on the
    cluster's own event loop, starts a job for each one that has gone.
    """
    from tornado.ioloop import PeriodicCallback

    def reapply() -> None:
        cluster.scale(len(cluster.worker_spec))

    keeper = PeriodicCallback(reapply, JOB_CHECK_S * 1000)
    cluster.loop.add_callback(keeper.start)
    try:
        yield
    finally:
        cluster.loop.add_callback(keeper.stop)


def _check_job_accepted(job_script: str, config: Path) -> None:
    """Ask SLURM whether it would run the worker job, so a bad request fails now, clearly."""
    result = subprocess.run(
        ["sbatch", "--test-only"], input=job_script, capture_output=True, text=True
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ClusterError(
            f"SLURM refuses the worker job from {config}: {reason}; "
            "adjust cores, memory, queue or job-extra-directives there"
        )


def _wait_for_first_worker(
    client: Client, job_name: str, timeout: float, log_directory: str | None
) -> None:
    """Return once a worker has joined; fail when the jobs end or the time is up without one."""
    deadline = time.monotonic() + timeout
    seen_jobs = False
    while time.monotonic() < deadline:
        if client.scheduler_info(n_workers=-1)["workers"]:
            return
        jobs = _queued_jobs(job_name)
        if seen_jobs and not jobs:
            raise ClusterError(
                f"the SLURM worker jobs ended before a worker joined; "
                f"see their output in {log_directory or 'the submit directory'}"
            )
        seen_jobs = seen_jobs or bool(jobs)
        time.sleep(0.5)
    states = ", ".join(f"{job_id} {state}" for job_id, state in _queued_jobs(job_name).items())
    raise ClusterError(
        f"no SLURM worker joined within {timeout:g} s (jobs: {states or 'none'}); "
        "wait for a free node with a longer timeout or check the queue with squeue"
    )


@contextmanager
def _cancelled_on_exit(job_name: str) -> Iterator[None]:
    """On exit cancel every job named `job_name` and wait until squeue no longer lists them.

    Jobs that outlive the grace time are an error, unless another error is already on its way
    out: then they are logged, so that the first error is the one the user sees.
    """
    try:
        yield
    except BaseException:
        if leftover := _cancel_jobs(job_name):
            logger.warning(_leftover_message(leftover, job_name))
        raise
    if leftover := _cancel_jobs(job_name):
        raise ClusterError(_leftover_message(leftover, job_name))


def _leftover_message(job_ids: list[str], job_name: str) -> str:
    return (
        f"SLURM jobs {' '.join(job_ids)} are still queued after cancelling; "
        f"run: scancel --name={job_name}"
    )


def _cancel_jobs(job_name: str) -> list[str]:
    """Cancel the named jobs of this user; return those still queued after the grace time."""
    if not _queued_jobs(job_name):
        return []
    subprocess.run(
        ["scancel", f"--name={job_name}", f"--user={getpass.getuser()}"], capture_output=True
    )
    deadline = time.monotonic() + SLURM_CANCEL_TIMEOUT_S
    while (queued := _queued_jobs(job_name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return list(queued)


def _queued_jobs(job_name: str) -> dict[str, str]:
    """Job id → state of this user's jobs with that name that squeue still lists."""
    result = subprocess.run(
        ["squeue", "-h", f"--name={job_name}", f"--user={getpass.getuser()}", "-o", "%i %T"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return {}
    return dict(line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip())
