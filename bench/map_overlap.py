"""The same job through `dask.array.map_overlap` and through our pipeline, side by side: wall
time, peak memory of the client and of the workers, and how far apart the two outputs are.

    python bench/map_overlap.py [--preset small] [--lr-shape 32,1024,1024] [--workers 2]
        [--torch-threads 1] [--tile 512] [--block Z,Y,X] [--quick]

Both get the same input, checkpoint, halo, batch size and LocalCluster (inputs made as in
bench/pipeline_efficiency.py). The map_overlap job: `da.from_zarr` of the LR array in
chunks of (batch, core, core), where core is our lattice's tile core, so both compute the same
number of tiles and every model call is one full batch; depth (0, halo, halo), boundary
"reflect"; each overlapped chunk is normalised, padded to a multiple of 4 (reflect), run
through the same cached `Predictor` our workers use, trimmed to its core and quantised;
`da.to_zarr` writes the result. Wall times include each side's cluster start and stop;
`compute_s` is without them (our dispatch, or map_overlap's `to_zarr`).

Memory: a thread samples every 100 ms the RSS of this process (the client; LocalCluster runs
its scheduler in it too) and of every process below it (the workers), and keeps the peaks:
`client_peak_mib`, `workers_peak_mib` (of their sum) and `worker_peak_max_mib` (the largest).

Agreement: uint8 PSNR, max |difference| and the share of differing voxels over the whole
output, and again beyond `edge_band` HR px of the in-plane volume edge. dask's "reflect"
repeats the edge pixel (numpy's "symmetric") while our global rule does not, so tiles at the
volume edge see different halos; with a core that is a multiple of the 4-px attention window
the chunks' windows happen to line up with our global lattice, so interior tiles see the
same pixels. `--chunk-yx` not a multiple of 4 breaks that alignment.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
from pipeline_efficiency import machine, set_worker_torch_threads, triple, write_inputs

from emsr.metrics import psnr
from pipeline.block import BlockTask, cached_predictor
from pipeline.cluster import connect
from pipeline.superresolve import SuperResolveRequest, prepare, super_resolve
from pipeline.volumes import open_volume

MiB = 1 << 20


class PeakMemory:
    """Peak RSS of this process and of its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.client = self.workers = self.worker_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.client = max(self.client, me.memory_info().rss)
            sizes = []
            for child in me.children(recursive=True):
                try:
                    sizes.append(child.memory_info().rss)
                except psutil.Error:  # a process that ended between listing and reading
                    continue
            self.workers = max(self.workers, sum(sizes))
            self.worker_max = max(self.worker_max, *sizes, 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def to_dict(self) -> dict:
        return {
            "client_peak_mib": round(self.client / MiB, 1),
            "workers_peak_mib": round(self.workers / MiB, 1),
            "worker_peak_max_mib": round(self.worker_max / MiB, 1),
        }


def super_resolve_chunk(chunk: np.ndarray, task: BlockTask) -> np.ndarray:
    """One overlapped LR chunk (z, core + 2·halo, core + 2·halo) → its stored SR core."""
    predictor = cached_predictor(
        task.checkpoint_dir, task.checkpoint_sha256, task.device, task.batch_size, task.precision
    )
    height, width = chunk.shape[1:]
    padding = [(0, 0), (0, -height % 4), (0, -width % 4)]
    sr = predictor(np.pad(task.intensity.normalize(chunk), padding, mode="reflect"))
    s, halo = task.scale, task.lattice.halo
    core = sr[:, s * halo : s * (height - halo), s * halo : s * (width - halo)]
    return task.intensity.denormalize(core, chunk.dtype)


def run_map_overlap(
    task: BlockTask, chunks: tuple[int, int, int], output: str, workers: int
) -> dict:
    started = time.perf_counter()
    with connect("local", workers):
        lr = da.from_zarr(f"{task.input_url}/0", chunks=chunks)
        s, halo = task.scale, task.lattice.halo
        sr_chunks = (lr.chunks[0], *(tuple(s * c for c in axis) for axis in lr.chunks[1:]))
        sr = da.map_overlap(
            super_resolve_chunk, lr, depth=(0, halo, halo), boundary="reflect", trim=False,
            chunks=sr_chunks, dtype=lr.dtype, meta=np.empty((0, 0, 0), lr.dtype), task=task,
        )  # fmt: skip
        computing = time.perf_counter()
        da.to_zarr(sr, output, overwrite=True)
        compute = time.perf_counter() - computing
    return {"wall_s": time.perf_counter() - started, "compute_s": compute}


def run_pipeline(request: SuperResolveRequest) -> dict:
    started = time.perf_counter()
    report = super_resolve(request)
    return {"wall_s": time.perf_counter() - started, "compute_s": report.seconds}


def agreement(ours: np.ndarray, theirs: np.ndarray, edge_band: int) -> dict:
    """How far map_overlap's output is from ours, everywhere and away from the edges."""
    inner = (slice(None), slice(edge_band, -edge_band), slice(edge_band, -edge_band))
    stats: dict = {}
    for name, region in (("", ...), ("_beyond_edge_band", inner)):
        a, b = ours[region], theirs[region]
        if not a.size:
            continue
        difference = np.abs(a.astype(np.int16) - b)
        value = psnr(a, b, data_range=255.0)
        stats |= {
            f"psnr_uint8{name}": round(value, 2) if np.isfinite(value) else None,
            f"max_abs_diff{name}": int(difference.max()),
            f"differing_fraction{name}": round(float(np.mean(difference > 0)), 6),
        }  # fmt: skip
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("small", "paper"))
    parser.add_argument("--lr-shape", type=triple, default=(32, 1024, 1024))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1, help="per worker")
    parser.add_argument("--tile", type=int, default=None, help="default: DEFAULT_TILE")
    parser.add_argument("--block", type=triple, default=None, help="output Z,Y,X; default: ours")
    parser.add_argument("--chunk-yx", type=int, default=None, help="default: the tile core")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="LR 8×256×256, tile 128")
    args = parser.parse_args()
    if args.quick:
        args.lr_shape, args.tile = (8, 256, 256), 128
    set_worker_torch_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="emsr-bench-") as directory:
        workdir = Path(directory)
        lr_url, checkpoint = write_inputs(workdir, args.lr_shape, args.preset)
        request = SuperResolveRequest(
            input_url=lr_url, output_url=str(workdir / "ours.zarr"), checkpoint=checkpoint,
            cluster="local", workers=args.workers, device="cpu", batch_size=args.batch,
            **({"tile": args.tile} if args.tile else {}),
            **({"block": args.block} if args.block else {}),
        )  # fmt: skip
        task = prepare(replace(request, output_url=str(workdir / "scratch.zarr"))).task
        core = args.chunk_yx or task.lattice.core[0]
        with PeakMemory() as ours_memory:
            ours_times = run_pipeline(request)
        theirs_path = str(workdir / "map_overlap.zarr")
        with PeakMemory() as theirs_memory:
            theirs_times = run_map_overlap(
                task, (args.batch, core, core), theirs_path, args.workers
            )
        ours = open_volume(request.output_url).read((slice(None),) * 3)
        theirs = da.from_zarr(theirs_path).compute()
        edge_band = task.scale * 2 * task.lattice.halo
        common = {
            "bench": "map_overlap", "preset": args.preset, "lr_shape": list(args.lr_shape),
            "scale": task.scale, "tile_core": list(task.lattice.core), "halo": task.lattice.halo,
            "map_overlap_chunks": [args.batch, core, core], "batch": args.batch,
            "workers": args.workers, "torch_threads_per_worker": args.torch_threads,
            "quick": args.quick, "machine": machine(),
        }  # fmt: skip
        for name, times, memory in (
            ("pipeline", ours_times, ours_memory),
            ("map_overlap", theirs_times, theirs_memory),
        ):
            rounded = {key: round(value, 3) for key, value in times.items()}
            print(json.dumps({"job": name, **rounded, **memory.to_dict(), **common}), flush=True)
        row = {"job": "agreement", "edge_band": edge_band, **agreement(ours, theirs, edge_band)}
        print(json.dumps({**row, **common}), flush=True)


if __name__ == "__main__":
    main()
