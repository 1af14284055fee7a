"""One worker per GPU: each worker process of a node narrows CUDA_VISIBLE_DEVICES to its own
device before CUDA starts, so `cuda` means a different GPU in each."""

from __future__ import annotations

import os

import pytest
from distributed import Client, LocalCluster

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
        LocalCluster(n_workers=2, threads_per_worker=1, preload=[PRELOAD], dashboard_address=":0")
        as cluster,
        Client(cluster) as client,
    ):
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["3", "5"]
