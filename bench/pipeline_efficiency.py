"""Pipeline overhead: end-to-end `pipeline.superresolve.super_resolve` on `--cluster local`
against the model's own time on exactly the same tiles (DESIGN target: ≤ 1.10×).

    python bench/pipeline_efficiency.py [--preset small|paper] [--lr-shape 32,1024,1024]
        [--layouts 1x2,2x1] [--tile 512] [--block Z,Y,X] [--batch 4] [--repeats 1] [--quick]

Input: a phantom LR volume (HR 16×512×512 → LR 16×256×256 at ×2, `emsr.phantom`) mirrored
to `--lr-shape`, written to zarr; an untrained `--preset` model saved with
`save_checkpoint`. The run uses the pipeline's own plan (default chunks and blocks for
`--tile`, DEFAULT_HALO) on the CPU.

Threads. Dask's nanny sets OMP_NUM_THREADS=MKL_NUM_THREADS=1 in worker processes (and torch
takes the smaller of the two), so a worker's torch has one thread unless told otherwise. A
layout WxK runs W worker processes with one Dask thread and K torch threads each (this
process's OMP_NUM_THREADS and MKL_NUM_THREADS are set to K before the cluster starts; the
nanny takes an existing environment variable over its default). The reference runs in this
process with torch.set_num_threads(W·K): `ratio` compares against it. Since W one-thread
processes usually outrun one W-thread process on a CPU, `ratio_vs_ideal_split` also compares
against the model time at K threads divided by W (perfect parallel split: a lower bound).

Model's own time: `prepare` builds the same plan, lattice and normalisation (on a scratch
output); the same LR regions are read and cut into the same tiles as in
`process_block`; every tile of the run is passed through `Predictor.__call__` in full
batches of `--batch` after one untimed warm-up batch; only that call is timed. The pipeline
calls the predictor once per z-slab and pads each call to whole batches:
`tiles_with_padding` counts what it computes. To locate overhead, `in_process_s` runs every
block through `process_block` in this process (same threads, model loaded, no Dask):
`ratio_in_process` is the pipeline's own per-block work against the model's, and the rest
of `ratio_steady` is what Dask and the worker layout add.

End-to-end time is reported whole (`end_to_end_s`) and split: `setup_s` (checks, plan,
output creation, ledger), `cluster_s` (LocalCluster start and stop), `dispatch_s` (blocks on
workers). `worker_import_s` (importing pipeline.block in a fresh interpreter) and
`model_load_s` (read_checkpoint + Predictor) are paid once per worker inside dispatch_s;
`steady_s` = dispatch_s − both is the time without one-time costs.

CPU time is the measure that survives a busy machine: `workers_cpu_s` is what the worker
processes spent in all (start-up, imports, model load, blocks, Dask), `client_cpu_s` this
process during the run (client, scheduler, nannies), and `cpu_ratio` = workers_cpu_s over
the model's CPU time on the same tiles at the workers' thread count; `cpu_ratio_in_process`
is `ratio_in_process` in CPU time. With `--repeats N` every
timed pass runs N times and the fastest counts (a busy machine only ever slows runs down).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from model_throughput import cpu_name

from emsr.checkpoint import read_checkpoint, save_checkpoint
from emsr.inference import Predictor
from emsr.network import build_model
from emsr.phantom import PhantomSpec, make_phantom
from pipeline.block import block_slabs, cached_predictor, process_block, slab_cover, start_lr_read
from pipeline.superresolve import PreparedRun, SuperResolveRequest, prepare, super_resolve
from pipeline.tiles import cut_tiles, round_up
from pipeline.volumes import open_volume, write_array

SCALE = 2
PHANTOM_HR = (16, 512, 512)


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def triple(text: str) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in text.split(","))
    return z, y, x


def write_inputs(workdir: Path, lr_shape: tuple[int, int, int], preset: str) -> tuple[str, str]:
    """A phantom LR volume mirrored to `lr_shape`, and an untrained checkpoint."""
    phantom = make_phantom(PhantomSpec(shape=PHANTOM_HR, scale=SCALE, seed=0))
    padding = [(0, max(0, n - m)) for n, m in zip(lr_shape, phantom.lr.shape)]
    lr = np.pad(phantom.lr, padding, mode="symmetric")[tuple(slice(n) for n in lr_shape)]
    lr_url = str(workdir / "lr.zarr")
    write_array(lr_url, np.ascontiguousarray(lr), phantom.lr_voxel_nm)
    torch.manual_seed(0)
    checkpoint = workdir / "checkpoint"
    save_checkpoint(
        checkpoint, build_model(preset, SCALE), preset=preset, step=0,
        normalization={"lr": {"low": 0.0, "high": 255.0}},
    )  # fmt: skip
    return lr_url, str(checkpoint)


def run_tiles(run: PreparedRun) -> list[np.ndarray]:
    """The normalised model inputs of every z-slab of every block, as `process_block` cuts
    them (one array per predictor call)."""
    source = open_volume(run.task.input_url)
    lattice, intensity = run.task.lattice, run.task.intensity
    calls = []
    for block in run.plan.blocks():
        for part in block_slabs(run.task, block.write, run.output.info.chunk[0]):
            cover = slab_cover(block, part, lattice.halo)
            raw = start_lr_read(source, cover, lattice).result()
            calls.append(cut_tiles(intensity.normalize(raw), lattice))
    return calls


@dataclass
class Clock:
    """Wall time, this process's CPU time and the CPU time of its finished child processes
    (LocalCluster's workers, once the cluster is closed) over a `with` block. CPU times are
    far less disturbed than wall time by other work on a busy machine."""

    wall: float = 0.0
    cpu: float = 0.0
    children_cpu: float = 0.0
    _start: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    def __enter__(self) -> Clock:
        self._start = (time.perf_counter(), time.process_time(), children_cpu_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu, children = self._start
        self.wall = time.perf_counter() - wall
        self.cpu = time.process_time() - cpu
        self.children_cpu = children_cpu_seconds() - children


def children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def model_pass(checkpoint: str, tiles: np.ndarray, batch: int, threads: int) -> Clock:
    """`Predictor.__call__` on all `tiles` at `threads` torch threads, after a warm-up batch."""
    torch.set_num_threads(threads)
    predictor = Predictor(read_checkpoint(checkpoint).model, device="cpu", batch_size=batch)
    predictor(tiles[:batch])
    with Clock() as clock:
        predictor(tiles)
    return clock


def in_process_pass(run: PreparedRun, threads: int) -> Clock:
    """Every block through `process_block` in this process, one after another, with the model
    already loaded: the pipeline's own work per block (reads, tiling, padded batches,
    stitching, quantising, writes) without Dask."""
    torch.set_num_threads(threads)
    task = run.task
    cached_predictor(
        task.checkpoint_dir, task.checkpoint_sha256, task.device, task.batch_size, task.precision
    )
    with Clock() as clock:
        for block in run.plan.blocks():
            process_block(task, block)
    return clock


def model_load_seconds(checkpoint: str, batch: int) -> float:
    with Clock() as clock:
        Predictor(read_checkpoint(checkpoint).model, device="cpu", batch_size=batch)
    return clock.wall


def worker_import_seconds() -> float:
    """What a fresh worker pays to unpickle its first block task: importing the pipeline."""
    code = (
        "import time; t = time.perf_counter(); import pipeline.block; print(time.perf_counter()-t)"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    return float(result.stdout)


def set_worker_torch_threads(count: int) -> None:
    """Torch threads of the worker processes of clusters started from now on: the nanny
    prefers these environment variables to its default of 1 (torch takes the smaller)."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(count)


def end_to_end(request: SuperResolveRequest, torch_threads: int) -> dict:
    """Run the pipeline with `torch_threads` per worker; times of its phases."""
    set_worker_torch_threads(torch_threads)
    marks: dict[str, float] = {}

    def on_start(*_: int) -> None:
        marks["start"] = time.perf_counter()

    started = time.perf_counter()
    with Clock() as clock:
        report = super_resolve(request, on_start=on_start)
    setup = marks["start"] - started
    return {
        "end_to_end_s": clock.wall, "setup_s": setup, "dispatch_s": report.seconds,
        "cluster_s": clock.wall - setup - report.seconds, "workers_cpu_s": clock.children_cpu,
        "client_cpu_s": clock.cpu, "blocks": report.blocks_computed,
        "redundancy": report.redundancy,
    }  # fmt: skip


def fastest(passes: list[Clock]) -> Clock:
    return min(passes, key=lambda clock: clock.wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("small", "paper"))
    parser.add_argument("--lr-shape", type=triple, default=(32, 1024, 1024))
    parser.add_argument("--layouts", default="1x2,2x1", help="WORKERSxTORCH_THREADS, ...")
    parser.add_argument("--tile", type=int, default=None, help="default: DEFAULT_TILE")
    parser.add_argument("--block", type=triple, default=None, help="output Z,Y,X; default: ours")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--quick", action="store_true", help="LR 8×256×256, tile 128, 1x2")
    args = parser.parse_args()
    if args.quick:
        args.lr_shape, args.tile, args.layouts = (8, 256, 256), 128, "1x2"
    layouts = [tuple(int(v) for v in layout.split("x")) for layout in args.layouts.split(",")]
    pixels = int(np.prod(args.lr_shape))
    repeats = range(args.repeats)
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        workdir = Path(directory)
        lr_url, checkpoint = write_inputs(workdir, args.lr_shape, args.preset)
        base = SuperResolveRequest(
            input_url=lr_url, output_url=str(workdir / "scratch.zarr"), checkpoint=checkpoint,
            cluster="local", device="cpu", batch_size=args.batch,
            **({"tile": args.tile} if args.tile else {}),
            **({"block": args.block} if args.block else {}),
        )  # fmt: skip
        run = prepare(base)
        calls = run_tiles(run)
        tiles = np.concatenate(calls)
        one_time = {
            "worker_import_s": worker_import_seconds(),
            "model_load_s": model_load_seconds(checkpoint, args.batch),
        }
        model: dict[int, Clock] = {}
        in_process: dict[int, Clock] = {}
        for workers, threads in layouts:
            outputs = [workdir / f"sr-{workers}x{threads}-{i}.zarr" for i in repeats]
            requests = [replace(base, output_url=str(o), workers=workers) for o in outputs]
            times = min((end_to_end(r, threads) for r in requests), key=lambda t: t["end_to_end_s"])
            for count in {workers * threads, threads}:
                if count not in model:
                    model[count] = fastest(
                        [model_pass(checkpoint, tiles, args.batch, count) for _ in repeats]
                    )
                    in_process[count] = fastest([in_process_pass(run, count) for _ in repeats])
            same, split = model[workers * threads], model[threads].wall / workers
            steady = times["dispatch_s"] - sum(one_time.values())
            row = {
                "bench": "pipeline_efficiency", "preset": args.preset, "scale": SCALE,
                "lr_shape": list(args.lr_shape), "tile": base.tile, "halo": run.task.lattice.halo,
                "batch": args.batch, "workers": workers, "torch_threads_per_worker": threads,
                "reference_torch_threads": workers * threads, "repeats": args.repeats,
                "tiles": len(tiles), "predictor_calls": len(calls),
                "tiles_with_padding": sum(round_up(len(c), args.batch) for c in calls),
                **{k: round(v, 3) for k, v in {**times, **one_time}.items()},
                "steady_s": round(steady, 3), "model_s": round(same.wall, 3),
                "in_process_s": round(in_process[workers * threads].wall, 3),
                "model_ideal_split_s": round(split, 3),
                "model_cpu_s_at_worker_threads": round(model[threads].cpu, 3),
                "ratio": round(times["end_to_end_s"] / same.wall, 3),
                "ratio_steady": round(steady / same.wall, 3),
                "ratio_in_process": round(in_process[workers * threads].wall / same.wall, 3),
                "ratio_vs_ideal_split": round(times["end_to_end_s"] / split, 3),
                "cpu_ratio": round(times["workers_cpu_s"] / model[threads].cpu, 3),
                "cpu_ratio_in_process": round(in_process[workers * threads].cpu / same.cpu, 3),
                "lr_pixels_per_s_end_to_end": round(pixels / times["end_to_end_s"]),
                "lr_pixels_per_s_steady": round(pixels / steady),
                "lr_pixels_per_s_model": round(pixels / same.wall),
                "quick": args.quick, "machine": machine(),
            }  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
