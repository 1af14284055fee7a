"""Everything a lent GPU should measure, in one call: forward throughput of the `paper`
preset by scale, precision, attention kernel (± torch.compile); the real block path end to
end on a generated multi-gigabyte volume; GPU memory peak, utilisation and host overhead.

    python bench/device.py [--device cuda] [--out device.json] [--lr-gigabytes 2] [--compile]
    python bench/device.py --device cpu --quick          # what CI runs, so this cannot rot

Prints a markdown table (paste it into BENCHMARKS.md, naming the device) and writes every row
as JSON to `--out`. Budget on an H100/H200-class GPU: under 8 minutes with the defaults.

End to end means the pipeline's own block path (`pipeline.block.process_block`: read LR +
halo with tensorstore, normalise, tile, batched forward, stitch, quantise, write whole zarr
chunks, wait until durable) over every block of the default plan, `--threads` blocks at a
time in this process, as one Dask worker with that many threads runs them; Dask itself is
left out because a GPU machine's image may not have it. The LR volume is a phantom mirrored
to the asked-for size (content does not change speed); the model is an untrained `paper`
(weights do not change speed). `share of bf16 peak` counts the network's multiply-adds on
the LR pixels the model actually processed (halos included) against the device's dense
bf16 peak, looked up from its name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from host_overhead import UINT8_MAPPING, NoOpPredictor, run_blocks
from model_throughput import BF16_PEAK_TFLOPS, cpu_name, macs_per_lr_pixel

import pipeline.block as block_path
from emsr.checkpoint import read_checkpoint, save_checkpoint
from emsr.inference import default_precision
from emsr.network import ATTENTION_KERNELS, build_model, use_attention_kernel
from emsr.phantom import PhantomSpec, make_phantom
from pipeline.block import BlockTask, process_block
from pipeline.geometry import Box
from pipeline.plan import BlockPlan
from pipeline.seams import DEFAULT_HALO
from pipeline.superresolve import DEFAULT_TILE, default_block, default_chunk
from pipeline.tiles import TileLattice
from pipeline.volumes import create_volume, open_volume

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def bf16_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return peak * 1e12 if peak else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean seconds of `run` after one warm-up call (compilation, allocator, autotuning)."""
    run()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def forward_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """LR px/s of the network alone on batches of tiles as the pipeline feeds them."""
    rows = []
    side = args.forward_tile + 2 * DEFAULT_HALO
    peak = bf16_peak_flops(device)
    for scale in args.scales:
        macs = macs_per_lr_pixel(args.preset, scale)
        model = build_model(args.preset, scale).eval().to(device, memory_format=torch.channels_last)
        batch = torch.rand(args.batch, 1, side, side, device=device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        variants = [(p, k, False) for p in args.precisions for k in ATTENTION_KERNELS]
        if args.compile:
            variants += [(p, "sdpa", True) for p in args.precisions if p != "fp32"]
        for precision, kernel, compiled in variants:
            use_attention_kernel(model, kernel)
            network = torch.compile(model, dynamic=False) if compiled else model
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def run(network=network, precision=precision, batch=batch) -> None:
                with torch.inference_mode(), autocast(device, precision):
                    network(batch)

            seconds = timed(run, device, args.repeats)
            rate = args.batch * side * side / seconds
            rows.append({
                "kind": "forward", "preset": args.preset, "scale": scale,
                "precision": precision, "attention": kernel, "compile": compiled,
                "batch": args.batch, "tile_input_px": side, "lr_px_per_s": round(rate),
                "bf16_peak_share": 2 * macs * rate / peak if peak else None,
                "gpu_memory_peak_gib": gpu_memory_peak(device),
            })  # fmt: skip
            print(f"forward ×{scale} {precision} {kernel}{' compiled' if compiled else ''}: "
                  f"{rate:,.0f} LR px/s", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def gpu_memory_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


class UtilisationSampler(threading.Thread):
    """GPU busy percentage every 0.2 s through NVML, while a run goes on."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stopped = threading.Event()
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            except Exception as error:  # no NVML: utilisation is reported as unknown
                print(f"GPU utilisation not sampled: {error}", file=sys.stderr)

    def run(self) -> None:
        while self.handle is not None and not self.stopped.wait(0.2):
            self.samples.append(self.read())

    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


@lru_cache(maxsize=1)
def phantom_lr(scale: int, side: int) -> np.ndarray:
    return make_phantom(PhantomSpec(shape=(4, side * scale, side * scale), scale=scale)).lr


def make_input(folder: Path, lr_shape: tuple[int, int, int], scale: int) -> str:
    """A phantom LR volume repeated to `lr_shape`, written section by section."""
    seed = phantom_lr(scale, min(256, lr_shape[1]))
    url = str(folder / "lr.zarr")
    volume = create_volume(url, lr_shape, "uint8", (50.0, 15.0 * scale, 15.0 * scale),
                           default_chunk(lr_shape))  # fmt: skip
    rows = np.resize(np.arange(seed.shape[1]), lr_shape[1])
    columns = np.resize(np.arange(seed.shape[2]), lr_shape[2])
    for z in range(lr_shape[0]):
        section = seed[z % len(seed)][np.ix_(rows, columns)]
        volume.write((slice(z, z + 1), slice(None), slice(None)), section[None])
    return url


def end_to_end_row(args: argparse.Namespace, device: torch.device, folder: Path) -> dict:
    """The block path over a whole generated volume: LR px/s, utilisation, memory."""
    scale = max(args.scales)
    side = int(np.sqrt(args.lr_gigabytes * 2**30 / args.sections)) // args.tile * args.tile
    lr_shape = (args.sections, max(side, args.tile), max(side, args.tile))
    lr_url = make_input(folder, lr_shape, scale)
    checkpoint = folder / "checkpoint"
    save_checkpoint(checkpoint, build_model(args.preset, scale), preset=args.preset, step=0,
                    normalization={"lr": {"low": 0.0, "high": 255.0}})  # fmt: skip
    sha = read_checkpoint(checkpoint).sha256
    hr_shape = (lr_shape[0], lr_shape[1] * scale, lr_shape[2] * scale)
    chunk = default_chunk(hr_shape)
    sr_url = str(folder / "sr.zarr")
    create_volume(sr_url, hr_shape, "uint8", (50.0, 15.0, 15.0), chunk)
    lattice = TileLattice.for_section(lr_shape[1:], args.tile, DEFAULT_HALO)
    plan = BlockPlan(Box.from_shape(hr_shape), default_block(chunk, scale, args.tile), chunk,
                     scale=scale, tile=lattice.core, halo=lattice.halo)  # fmt: skip
    task = BlockTask(lr_url, sr_url, str(checkpoint), sha, scale, lattice,
                     UINT8_MAPPING, device=str(device), batch_size=args.batch,
                     precision=default_precision(np.uint8, device.type))  # fmt: skip
    process_block(task, plan.planned(0))  # load the model, warm up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sampler = UtilisationSampler(device)
    sampler.start()
    started = time.perf_counter()

    def one_block(index: int):
        return process_block(task, plan.planned(index))

    with ThreadPoolExecutor(args.threads) as pool:
        outcomes = list(pool.map(one_block, plan.indices()))
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    lr_pixels = int(np.prod(lr_shape))
    computed = sum(outcome.lr_pixels_computed for outcome in outcomes)
    peak = bf16_peak_flops(device)
    macs = macs_per_lr_pixel(args.preset, scale)
    written = open_volume(sr_url).read((slice(0, 1), slice(0, 8), slice(0, 8)))
    return {
        "kind": "end_to_end", "preset": args.preset, "scale": scale, "lr_shape": list(lr_shape),
        "lr_gigabytes": round(lr_pixels / 2**30, 2), "blocks": plan.block_count,
        "threads": args.threads, "batch": args.batch, "precision": task.precision,
        "seconds": round(seconds, 1),
        "lr_px_per_s": round(lr_pixels / seconds),
        "bf16_peak_share": 2 * macs * computed / seconds / peak if peak else None,
        "gpu_memory_peak_gib": gpu_memory_peak(device), "gpu_utilisation_pct": sampler.mean(),
        "output_nonzero": bool(written.any()),
    }  # fmt: skip


def host_overhead_row(args: argparse.Namespace, folder: Path) -> dict:
    """The same block path with a no-op model: host milliseconds per LR megapixel."""
    scale = max(args.scales)
    lr_shape = (args.sections, 1024, 1024) if not args.quick else (2, 256, 256)
    lr_url = make_input(folder / "host", lr_shape, scale)
    hr_shape = (lr_shape[0], lr_shape[1] * scale, lr_shape[2] * scale)
    chunk = default_chunk(hr_shape)
    sr_url = str(folder / "host" / "sr.zarr")
    create_volume(sr_url, hr_shape, "uint8", (50.0, 15.0, 15.0), chunk)
    lattice = TileLattice.for_section(lr_shape[1:], DEFAULT_TILE, DEFAULT_HALO)
    plan = BlockPlan(Box.from_shape(hr_shape), default_block(chunk, scale, DEFAULT_TILE), chunk,
                     scale=scale, tile=lattice.core, halo=lattice.halo)  # fmt: skip
    task = BlockTask(lr_url, sr_url, "", "", scale, lattice,
                     UINT8_MAPPING, device="cpu")  # fmt: skip
    real = block_path.cached_predictor
    block_path.cached_predictor = lambda *_: NoOpPredictor(scale)
    try:
        seconds, _ = run_blocks(task, plan)
    finally:
        block_path.cached_predictor = real
    return {"kind": "host_overhead", "scale": scale, "lr_shape": list(lr_shape),
            "ms_per_lr_mpx": round(1e3 * seconds / (np.prod(lr_shape) / 1e6), 1)}  # fmt: skip


def markdown(rows: list[dict], name: str) -> str:
    header = "| row | settings | LR px/s | share of bf16 peak | GPU memory peak | GPU busy |"
    lines = [f"Device: {name}", "", header, "|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] == "host_overhead":
            lines.append(f"| host overhead (no-op model, ×{row['scale']}) | {row['lr_shape']} | "
                         f"{row['ms_per_lr_mpx']} ms per LR Mpx | – | – | – |")  # fmt: skip
            continue
        if row["kind"] == "forward":
            compiled = " compiled" if row["compile"] else ""
            settings = (
                f"×{row['scale']} {row['precision']} {row['attention']}{compiled}, "
                f"batch {row['batch']}"
            )
        else:
            settings = (
                f"×{row['scale']} {row['precision']} end to end, {row['lr_gigabytes']} GB LR, "
                f"{row['blocks']} blocks, {row['threads']} threads, {row['seconds']} s"
            )
        share = f"{100 * row['bf16_peak_share']:.1f} %" if row["bf16_peak_share"] else "–"
        memory = f"{row['gpu_memory_peak_gib']} GiB" if row["gpu_memory_peak_gib"] else "–"
        busy = f"{row.get('gpu_utilisation_pct')} %" if row.get("gpu_utilisation_pct") else "–"
        lines.append(
            f"| {row['kind']} | {settings} | {row['lr_px_per_s']:,} | {share} | {memory} | {busy} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device (CI)")
    parser.add_argument("--out", type=Path, default=Path("device.json"))
    parser.add_argument("--lr-gigabytes", type=float, default=2.0)
    parser.add_argument("--sections", type=int, default=32)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.preset, args.scales, args.precisions = "paper", [2, 3], list(PRECISIONS)
    args.tile = args.forward_tile = DEFAULT_TILE
    args.batch, args.repeats = 16, 5
    if args.quick:
        args.preset, args.tile, args.forward_tile, args.batch, args.repeats = "small", 64, 8, 1, 1
        args.precisions = ["fp32", "bf16"]
        args.lr_gigabytes, args.sections, args.compile = 2 * 256**2 / 2**30, 2, False
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; use --device cpu --quick")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        rows = forward_rows(args, device)
        rows.append(end_to_end_row(args, device, folder))
        rows.append(host_overhead_row(args, folder))
    name = device_name(device)
    args.out.write_text(
        json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1)
    )
    print(markdown(rows, name))
    print(f"rows written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
