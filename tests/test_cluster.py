"""Dask clusters: local, an existing scheduler, real SLURM jobs, and GPU task placement."""

import os
import socket
import time
from collections.abc import Iterator

import dask
import dask.array as da
import pytest
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster, Scheduler, SpecCluster, Worker, get_worker, wait
from slurm import queued_job_ids, small_slurm_settings

from pipeline.cluster import (
    DEFAULT_SLURM_CONFIG,
    cluster_has_gpus,
    connect,
    gpu_task_resources,
    slurm_cluster_options,
    slurm_job_range,
    worker_gpu_count,
)
from pipeline.errors import ClusterError

PREFECT_URL = "http://127.0.0.1:4200/api"
RESULT_TIMEOUT_S = 30  # a lost worker fails the test instead of hanging it


def worker_name(_: object = None) -> str:
    return get_worker().name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- local and address clusters --------------------------------------------------------------


def test_local_cluster_starts_the_asked_workers_which_inherit_prefect_api_url(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_URL)
    with connect("local", workers=2) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert client.submit(sum, [1, 2, 3]).result(timeout=RESULT_TIMEOUT_S) == 6
        assert (
            client.submit(os.getenv, "PREFECT_API_URL").result(timeout=RESULT_TIMEOUT_S)
            == PREFECT_URL
        )
        assert not cluster_has_gpus(client)
    assert client.status == "closed"


def test_address_joins_a_running_scheduler_and_leaves_it_running():
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", dashboard_address=":0"
    ) as running:
        with connect(running.scheduler_address) as client:
            assert client.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT_S) == 1024
        assert client.status == "closed"
        assert len(running.scheduler.workers) == 1


def test_unreachable_scheduler_address_fails_fast_with_one_line():
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with (
        pytest.raises(ClusterError, match="no Dask scheduler answered") as error,
        connect(address, timeout=2),
    ):
        pass
    assert time.monotonic() - start < 8
    assert address in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("cluster", ["foo", "tcp://", "tcp://host-without-port", "Slurm"])
def test_unknown_cluster_strings_are_refused_listing_accepted_values(cluster):
    with (
        pytest.raises(ClusterError, match=r"'local', 'slurm' or 'tcp://HOST:PORT'"),
        connect(cluster),
    ):
        pass


def test_no_workers_is_refused():
    with pytest.raises(ClusterError, match="at least 1"), connect("local", workers=0):
        pass


# --- SLURM settings (no SLURM needed) --------------------------------------------------------


def test_missing_sbatch_says_slurm_is_not_available(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with (
        pytest.raises(ClusterError, match="sbatch not found; install slurm or use --cluster"),
        connect("slurm"),
    ):
        pass


def test_shipped_slurm_settings_ask_for_one_gpu_and_forward_prefect_api_url():
    options = slurm_cluster_options(DEFAULT_SLURM_CONFIG, {"PREFECT_API_URL": PREFECT_URL})
    assert "--gres=gpu:1" in options["job_extra_directives"]
    arguments = " ".join(options["worker_extra_args"])
    assert "--resources GPU=1" in arguments and "--preload pipeline.gpu_pinning" in arguments
    assert f"export PREFECT_API_URL={PREFECT_URL}" in options["job_script_prologue"]
    assert options["job_name"] != slurm_cluster_options(DEFAULT_SLURM_CONFIG, {})["job_name"]


def test_shipped_workers_retire_well_inside_the_walltime_and_every_job_is_replaced():
    options = slurm_cluster_options(DEFAULT_SLURM_CONFIG)
    arguments = options["worker_extra_args"]
    lifetime = parse_timedelta(arguments[arguments.index("--lifetime") + 1])
    stagger = parse_timedelta(arguments[arguments.index("--lifetime-stagger") + 1])
    walltime = sum(int(v) * f for v, f in zip(options["walltime"].split(":"), (3600, 60, 1)))
    assert "--lifetime-restart" not in arguments  # it would keep the job running into walltime
    assert lifetime + stagger <= 0.97 * walltime
    assert slurm_job_range(DEFAULT_SLURM_CONFIG, 8) == (8, 8)


def test_minimum_jobs_setting_bounds_adaptive_scaling(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_text("emsr:\n  minimum-jobs: 2\n")
    assert slurm_job_range(config, 8) == (2, 8) and slurm_job_range(config, 1) == (1, 1)
    config.write_text("emsr:\n  minimum-jobs: many\n")
    with pytest.raises(ClusterError, match="minimum-jobs must be an integer"):
        slurm_job_range(config, 8)


@pytest.mark.parametrize(
    "text",
    [
        "slurm:\n  cores: 1\n",
        "jobqueue: [1, 2]\n",
        "a: [\n",
        "jobqueue:\n  slurm:\n    cores: 1\n",
        "jobqueue:\n  slurm:\n    cores: 1\n    memory: 1GB\n    gpus: 1\n",
    ],
)
def test_slurm_settings_that_dask_jobqueue_cannot_use_are_refused_in_one_line(tmp_path, text):
    config = tmp_path / "slurm.yaml"
    config.write_text(text)
    with pytest.raises(ClusterError, match=str(config)) as error:
        slurm_cluster_options(config)
    assert "\n" not in str(error.value)


# --- real SLURM --------------------------------------------------------------------------------


def test_slurm_workers_are_jobs_with_a_gpu_and_none_is_left_queued(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_URL)
    with connect("slurm", workers=1, slurm_config=small_slurm_settings(tmp_path), timeout=60) as c:
        assert queued_job_ids()
        job_id = c.submit(os.getenv, "SLURM_JOB_ID", resources={"GPU": 1}).result(
            timeout=RESULT_TIMEOUT_S
        )
        assert job_id in queued_job_ids()
        assert (
            c.submit(os.getenv, "PREFECT_API_URL").result(timeout=RESULT_TIMEOUT_S) == PREFECT_URL
        )
        assert worker_gpu_count(c) == 1
        assert gpu_task_resources(c) == {"GPU": 1}
    assert queued_job_ids() == []


def test_slurm_jobs_are_cancelled_when_the_block_is_interrupted(slurm, tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        connect("slurm", workers=1, slurm_config=small_slurm_settings(tmp_path), timeout=60),
    ):
        assert queued_job_ids()
        raise KeyboardInterrupt
    assert queued_job_ids() == []


def test_slurm_request_the_node_cannot_meet_fails_at_once(slurm, tmp_path):
    config = small_slurm_settings(tmp_path, **{"job-extra-directives": ["--gres=gpu:2"]})
    start = time.monotonic()
    with (
        pytest.raises(ClusterError, match="SLURM refuses the worker job"),
        connect("slurm", workers=1, slurm_config=config, timeout=60),
    ):
        pass
    assert time.monotonic() - start < 10
    assert queued_job_ids() == []


def test_slurm_jobs_that_die_before_a_worker_joins_fail_clearly(slurm, tmp_path):
    config = small_slurm_settings(tmp_path, python="/nonexistent/bin/python")
    with (
        pytest.raises(ClusterError, match=f"ended before a worker joined; see .*{tmp_path}"),
        connect("slurm", workers=1, slurm_config=config, timeout=60),
    ):
        pass
    assert queued_job_ids() == []


def test_slurm_jobs_still_pending_at_the_timeout_are_reported_and_cancelled(slurm, tmp_path):
    config = small_slurm_settings(tmp_path, **{"job-extra-directives": ["--begin=now+1hour"]})
    with (
        pytest.raises(ClusterError, match=r"within 1 s \(jobs: \d+ PENDING\)"),
        connect("slurm", workers=1, slurm_config=config, timeout=1),
    ):
        pass
    assert queued_job_ids() == []


# --- placing tasks on GPU workers -----------------------------------------------------------


def in_process_cluster(**workers: dict[str, float]) -> SpecCluster:
    """Thread workers named after their role, with the given resources each."""
    specs = {
        name: {"cls": Worker, "options": {"nthreads": 1, "resources": resources}}
        for name, resources in workers.items()
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=specs, scheduler=scheduler)


@pytest.fixture(scope="module")
def gpu_and_cpu_client() -> Iterator[Client]:
    with in_process_cluster(gpu={"GPU": 1}, cpu={}) as cluster, Client(cluster) as client:
        yield client


def blocks_on_gpu_worker(block):
    return block * 0 + (get_worker().name == "gpu")


def annotated_block_graph() -> da.Array:
    """An array graph whose annotated step blockwise-fusion merges with an unannotated one."""
    blocks = da.ones(16, chunks=1, dtype=int)
    with dask.annotate(resources={"GPU": 1}):
        placed = blocks.map_blocks(blocks_on_gpu_worker, dtype=int)
    return placed + 0


def test_submit_and_map_with_gpu_resource_run_only_on_gpu_workers(gpu_and_cpu_client):
    client = gpu_and_cpu_client
    resources = gpu_task_resources(client)
    futures = client.map(worker_name, range(16), resources=resources)
    wait(futures, timeout=RESULT_TIMEOUT_S)
    names = client.gather(futures)
    names.append(client.submit(worker_name, resources=resources).result(timeout=RESULT_TIMEOUT_S))
    assert set(names) == {"gpu"}


def test_compute_with_gpu_resource_keeps_an_optimised_graph_on_gpu_workers(gpu_and_cpu_client):
    future = gpu_and_cpu_client.compute(
        annotated_block_graph(), optimize_graph=True, resources={"GPU": 1}
    )
    assert future.result(timeout=RESULT_TIMEOUT_S).all()


def test_graph_optimisation_drops_gpu_annotations_so_they_are_unsafe():
    """dask #7036: annotations alone keep a graph off CPU-only workers until it is optimised."""
    with in_process_cluster(cpu={}) as cluster, Client(cluster) as client:
        assert gpu_task_resources(client) is None
        unoptimised = client.compute(annotated_block_graph(), optimize_graph=False)
        with pytest.raises(TimeoutError):
            wait(unoptimised, timeout=0.5)  # waits for a GPU that no worker has
        unoptimised.cancel()
        optimised = client.compute(annotated_block_graph(), optimize_graph=True)
        assert not optimised.result(timeout=RESULT_TIMEOUT_S).any()  # ran on the CPU worker
