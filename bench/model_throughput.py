"""Forward throughput of the EMSR presets: LR pixels per second, parameters, MACs per LR pixel.

    python bench/model_throughput.py [--device cpu|cuda] [--tile 256] [--batch 4] [--repeats 5]

On CUDA it runs in bf16 autocast with channels_last (as the pipeline does) and reports the
share of the GPU's dense bf16 peak that the model's multiply-adds reach. Prints one JSON
line per preset; BENCHMARKS.md records the numbers with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from emsr.inference import Predictor
from emsr.network import PRESETS, build_model, count_parameters

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (no sparsity), by GPU name fragment."""


def cpu_name() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def macs_per_lr_pixel(preset: str, scale: int) -> float:
    model = build_model(preset, scale).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 64, 64))
    return counter.get_total_flops() / 2 / (64 * 64)


def throughput(preset: str, scale: int, device: str, tile: int, batch: int, repeats: int) -> float:
    predictor = Predictor(
        build_model(preset, scale), device=device, batch_size=batch,
        precision="bf16" if device == "cuda" else "fp32",
    )  # fmt: skip
    tiles = torch.rand(batch, tile, tile).numpy()
    predictor(tiles)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        predictor(tiles)
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * batch * tile * tile / (time.perf_counter() - started)


def peak_share(macs: float, pixels_per_second: float) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return 2 * macs * pixels_per_second / (peak * 1e12) if peak else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    for preset in PRESETS:
        macs = macs_per_lr_pixel(preset, args.scale)
        rate = throughput(preset, args.scale, args.device, args.tile, args.batch, args.repeats)
        row = {
            "preset": preset, "scale": args.scale, "device": args.device, "machine": machine,
            "threads": torch.get_num_threads(), "tile": args.tile, "batch": args.batch,
            "parameters": count_parameters(build_model(preset, args.scale)),
            "macs_per_lr_pixel": round(macs), "lr_pixels_per_second": round(rate),
            "bf16_peak_share": peak_share(macs, rate) if args.device == "cuda" else None,
        }  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
