"""A fleet run on the real single-node SLURM: worker jobs that retire at their lifetime and
are replaced mid-run, transient read and write faults, a hung block and a block that always
fails. Everything else must be written exactly once and bit-identical to an undisturbed run,
the failing block named in the last line, the exit non-zero, squeue empty; with the fault
gone, a rerun computes that block alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flaky import FaultyBlocks, attempts, block_name, faulty_environment, picked, writes
from slurm import queued_job_ids, small_slurm_settings

from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.volumes import open_volume

ALL = (slice(None),) * 3
OPTIONS = {"chunk": (1, 32, 32), "block": (1, 32, 32), "tile": 32, "halo": 8, "device": "cpu"}
FLAGS = ["--chunk", "1,32,32", "--block", "1,32,32", "--tile", "32", "--halo", "8",
         "--device", "cpu"]  # fmt: skip
FAULT_RATE = 0.1
WORKERS = 2  # the test node has 2 CPUs: one job each
LIFETIME = ["--lifetime", "40s", "--lifetime-stagger", "5s"]


@pytest.mark.slow
def test_fleet_run_through_replaced_workers_and_faults_names_only_the_failing_block(
    slurm, prefect_server, lr_url, checkpoint_dir, cluster_address, tmp_path
):
    reference = tmp_path / "reference.zarr"
    super_resolve(SuperResolveRequest(lr_url, str(reference), str(checkpoint_dir),
                                      cluster=cluster_address, **OPTIONS))  # fmt: skip
    output = tmp_path / "sr.zarr"
    job = SuperResolveRequest(lr_url, str(output), str(checkpoint_dir),
                              cluster=cluster_address, **OPTIONS)  # fmt: skip
    plan = prepare(job).plan
    boxes = {block.index: block.write for block in plan.blocks()}
    failing, hanging = boxes[17], boxes[60]
    records = tmp_path / "attempts"
    records.mkdir()
    faults = FaultyBlocks(str(records), rate=FAULT_RATE, always_failing=failing,
                          hanging=hanging, pace_seconds=0.5)  # fmt: skip
    exports = [f"export {name}='{value}'" for name, value in faulty_environment(faults).items()]
    config = small_slurm_settings(
        tmp_path, memory="2GB", walltime="00:10:00",
        **{"job-extra-directives": [], "worker-extra-args": LIFETIME,
           "job-script-prologue": exports, "death-timeout": 120},  # slow starts under load
    )  # fmt: skip
    result = subprocess.run(
        [str(Path(sys.executable).with_name("emsr")), "super-resolve", lr_url, str(output),
         "--checkpoint", str(checkpoint_dir), *FLAGS, "--cluster", "slurm",
         "--workers", str(WORKERS), "--slurm-config", str(config), "--block-timeout", "15"],
        capture_output=True, text=True, env=prefect_server.environment(slurm), timeout=600,
    )  # fmt: skip

    print(result.stderr)  # the bar's last frame: the run's utilisation, for BENCHMARKS.md
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: 1 block failed: block 17 (output box {failing}) after 3 ")
    assert queued_job_ids() == []
    jobs = list((tmp_path / "logs").glob("*.err")) or list((tmp_path / "logs").iterdir())
    assert len(jobs) >= 2 * WORKERS, "every worker job was replaced at least once"

    tried, written = attempts(records), writes(records)
    assert tried[block_name(failing)] == 3 and block_name(failing) not in written
    assert tried[block_name(hanging)] >= 2
    injected = [box for box in boxes.values() if picked(box, FAULT_RATE)]
    assert injected and all(tried[block_name(box)] >= 2 for box in injected)
    others = {block_name(box) for box in boxes.values() if box != failing}
    assert {name: written.get(name) for name in others} == dict.fromkeys(others, 1)
    expected = open_volume(str(reference)).read(ALL)
    got = open_volume(str(output)).read(ALL)
    outside = np.ones(expected.shape, bool)
    outside[failing.slices()] = False
    assert np.array_equal(got[outside], expected[outside])

    rerun = super_resolve(job)  # the fault is gone: plain process_block on the session cluster
    assert (rerun.blocks_computed, rerun.blocks_skipped) == (1, plan.block_count - 1)
    assert np.array_equal(open_volume(str(output)).read(ALL), expected)
