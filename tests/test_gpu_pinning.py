"""One worker per GPU: each worker process of a node narrows CUDA_VISIBLE_DEVICES to its own
device before CUDA starts, so `cuda` means a different GPU in each."""

from __future__ import annotations

import os

import dask
import pytest
from distributed import Client, LocalCluster

from pipeline.cluster import connect, worker_gpu_count
from pipeline.gpu_pinning import PRELOAD, device_for, worker_position


@pytest.mark.parametrize(
    ("name", "position"),
    [(0, 0), (3, 3), ("emsr-dask-1a2b-2", 2), ("gpu-node-7", 7), ("tcp://10.0.0.1:4000", None)],
)
def test_worker_position_comes_from_the_dask_name(name, position):
    assert worker_position(name) == position


def test_each_position_gets_its_own_device():
    assert [device_for(p, "3,5", 0) for p in range(2)] == ["3", "5"]
    assert [device_for(p, None, 4) for p in range(4)] == ["0", "1", "2", "3"]
    assert device_for(2, "GPU-aa, GPU-bb", 0) == "GPU-aa"  # more workers than GPUs: shared
    assert device_for(0, None, 0) is None  # a CPU node: nothing to pin
    assert device_for(None, "0,1", 0) is None  # a lone, unnumbered worker keeps both


def test_local_workers_are_pinned_one_device_each(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, preload=[PRELOAD], dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["3", "5"]


def test_emsr_local_cluster_on_a_gpu_node_pins_one_gpu_per_worker(monkeypatch):
    """`--cluster local --workers 2` on a two-GPU node: a worker per GPU, each advertising
    GPU=1, so block tasks ask for a GPU and go one at a time to each device."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with (
        dask.config.set({"distributed.worker.preload": ["pipeline.interrupts"]}),
        connect("local", 2) as client,
    ):
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        preloads = client.run(lambda dask_worker: [p.name for p in dask_worker.preloads])
        assert all(names == ["pipeline.interrupts", PRELOAD] for names in preloads.values())
        workers = client.scheduler_info()["workers"].values()
        assert sorted(seen.values()) == ["0", "1"]
        assert [w["resources"] for w in workers] == [{"GPU": 1}, {"GPU": 1}]
        assert worker_gpu_count(client) == 2


def test_a_cpu_node_starts_plain_workers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with connect("local", 1) as client:
        assert worker_gpu_count(client) == 0
