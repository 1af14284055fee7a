"""Does the reference-free quality map rank audit blocks like the FRC against the clean truth?

A test phantom whose LR noise differs from block to block (σ log-uniform per audit-block
column, on top of the phantom's own varied content) is super-resolved by the pipeline with a
small model trained on another phantom, then audited with the clean truth as reference:
once with two independent LR scans (map = FRC of SR vs SR 2) and once with one (map = FRC of
the SR of two recorruptions of the LR, see `pipeline.audit.quality`). Each map is compared
with the per-block FRC of the SR against the truth by Spearman's ρ. Writes
`quality_map_validation.json`.

    .venv/bin/python bench/quality_map_validation.py            # EXPERIMENTS.md's numbers
    .venv/bin/python bench/quality_map_validation.py --quick    # ~30 min on 2 loaded vCPUs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from distributed import LocalCluster
from scipy.stats import spearmanr

from emsr.data import PairedVolumes
from emsr.phantom import PhantomSpec, make_phantom
from emsr.training import TrainConfig, train
from pipeline.audit.run import AuditRequest, audit
from pipeline.audit.scores import read_scores
from pipeline.superresolve import SuperResolveRequest, super_resolve
from pipeline.volumes import write_array

SCALE = 2
FULL = {"train": (8, 256, 256), "test": (4, 512, 768), "block": (1, 128, 128), "steps": 400}
QUICK = {"train": (4, 128, 128), "test": (4, 256, 320), "block": (2, 64, 64), "steps": 40}
NOISE_RANGE = (0.02, 0.25)  # LR noise std per block column, [0, 1] intensities


def noisy_lr(clean: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One LR scan: the clean LR plus Gaussian noise of the per-pixel std `sigma`, as uint8."""
    noisy = clean.astype(np.float64) / 255 + sigma * rng.standard_normal(clean.shape)
    return np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def noise_map(lr_shape: tuple[int, int, int], lr_block: int, rng: np.random.Generator):
    """A std per LR block column (log-uniform over NOISE_RANGE), expanded to every pixel."""
    cells = [-(-n // lr_block) for n in lr_shape[1:]]
    low, high = np.log(NOISE_RANGE)
    sigma = np.exp(rng.uniform(low, high, size=cells))
    expanded = np.kron(sigma, np.ones((lr_block, lr_block)))[: lr_shape[1], : lr_shape[2]]
    return np.broadcast_to(expanded, lr_shape)


def trained_checkpoint(out: Path, shape: tuple[int, int, int], steps: int, seed: int) -> Path:
    training = make_phantom(PhantomSpec(shape=shape, scale=SCALE, seed=seed))
    pairs = PairedVolumes.from_arrays(training.lr, training.hr, SCALE)
    config = TrainConfig(
        preset="small", scale=SCALE, steps=steps, batch_size=4, patch=32, learning_rate=1e-3,
        halve_every=max(1, steps * 2 // 3), device="cpu", seed=seed,
        validate_every=steps, checkpoint_every=steps,
    )  # fmt: skip
    directory = out / "checkpoint"
    if not (directory / "config.json").exists():
        train(pairs, config, directory)
    return directory


def spearman(map_px: np.ndarray, truth_px: np.ndarray) -> dict:
    measured = np.isfinite(map_px) & np.isfinite(truth_px)
    rho = spearmanr(map_px[measured], truth_px[measured]).statistic
    return {"rho": float(rho), "blocks": int(measured.sum())}


def validate(quick: bool, out: Path, seed: int, workers: int) -> dict:
    sizes = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = trained_checkpoint(out, sizes["train"], sizes["steps"], seed)
    test = make_phantom(
        PhantomSpec(shape=sizes["test"], scale=SCALE, seed=seed + 1000, lr_noise_std=0.0)
    )
    rng = np.random.default_rng(seed)
    sigma = noise_map(test.lr.shape, sizes["block"][1] // SCALE, rng)
    urls = {name: str(out / f"{name}.zarr") for name in ("truth", "lr", "lr2", "sr", "sr2")}
    write_array(urls["truth"], test.hr_clean, test.hr_voxel_nm, overwrite=True)
    for name in ("lr", "lr2"):
        write_array(urls[name], noisy_lr(test.lr, sigma, rng), test.lr_voxel_nm, overwrite=True)
    result = {"quick": quick, "seed": seed, "sizes": sizes, "noise_range": NOISE_RANGE}
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        for lr, sr in (("lr", "sr"), ("lr2", "sr2")):
            super_resolve(
                SuperResolveRequest(
                    input_url=urls[lr], output_url=urls[sr], checkpoint=str(checkpoint),
                    cluster=address, device="cpu", overwrite=True,
                )
            )  # fmt: skip
        audits = {
            "two_scans": {"sr2_url": urls["sr2"]},
            "single_scan": {"lr_url": urls["lr"], "checkpoint": str(checkpoint)},
        }
        for name, inputs in audits.items():
            request = AuditRequest(
                sr_url=urls["sr"], reference_url=urls["truth"], out_dir=out / f"audit-{name}",
                block=sizes["block"], cluster=address, device="cpu", **inputs,
            )  # fmt: skip
            scores = read_scores(audit(request).scores_path)
            result[name] = spearman(scores["resolution_px"], scores["frc_reference_px"])
            result[name]["median_map_px"] = float(np.nanmedian(scores["resolution_px"]))
            result[name]["median_truth_px"] = float(np.nanmedian(scores["frc_reference_px"]))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    (out / "quality_map_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few training steps")
    parser.add_argument("--out", type=Path, default=Path("quality-map-validation"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = validate(args.quick, args.out, args.seed, args.workers)
    for name in ("two_scans", "single_scan"):
        row = result[name]
        print(f"{name}: Spearman rho {row['rho']:.3f} over {row['blocks']} blocks")
    print(f"{result['seconds']} s; {args.out / 'quality_map_validation.json'}")


if __name__ == "__main__":
    main()
