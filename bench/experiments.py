"""The paper's claims tested against clean truth, on the phantom: one command, every number in
EXPERIMENTS.md.

    python bench/experiments.py [--seeds 0,1,2] [--steps 400] [--preset small|paper]
        [--device cpu] [--parts 1,2,3,4,5] [--out experiments-output] [--quick]

The paper could only score its models against noisy references; the phantom (`emsr.phantom`)
renders the clean truth with the scans, so every model here is scored against the truth on
held-out sections of a phantom it never saw (another seed): PSNR and SSIM (data range 1), and
FRC resolution (nm, 1/7 threshold) of the result against the truth.

Parts (every trained model gets the same budget: `--steps` Adam steps of `--batch` patches of
`--patch` LR px, learning rate `--learning-rate`, ℓ1 unless stated):
1. no clean reference: references = the acquired noisy HR vs the clean truth, ℓ1 and ℓ2;
2. break point: Gaussian reference noise σ swept from weak to very strong, and a skewed
   zero-mean noise (σ·(Exp(1) − 1): its median is −0.31σ, so ℓ1, which learns the median,
   should drift and ℓ2, which learns the mean, should not);
3. training pairs: the acquired LR with the noisy HR ("acquired"), a synthetic LR made from
   the noisy HR by our degradation model ("synthetic"), the acquired LR with an NL-means
   denoised HR ("denoised");
4. ablations: without edge attention, without self-attention, without the noisier branch;
5. baselines: bicubic; a plain residual CNN of similar size trained the same way.

Seeds change the training phantom, the initialisation and the patches; the held-out phantom
is the same for every run. Rows go to `OUT/results.jsonl` as they finish (a rerun skips rows
already there), then `OUT/report.md` (the tables) and `OUT/break_point.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from experiments_report import write_report
from model_throughput import cpu_name
from torch import nn

from emsr.checkpoint import load_checkpoint
from emsr.data import PairedVolumes, PatchSampler
from emsr.degradations import Degradation
from emsr.inference import Predictor, super_resolve_image, upscale_bicubic
from emsr.losses import get_loss
from emsr.metrics import frc_resolution, psnr, ssim
from emsr.network import count_parameters
from emsr.phantom import PhantomSpec, PhantomVolumes, make_phantom
from emsr.training import TrainConfig, train
from pipeline.pairs import denoise_section

SCALE = 2
TRAIN_SHAPE = (12, 256, 256)
TEST_SHAPE = (4, 256, 256)
TEST_SEED = 1000
HALO = 16
HR_NOISE = PhantomSpec(TRAIN_SHAPE).hr_noise_std
SWEEP_SIGMAS = (0.01, 0.035, 0.08, 0.16, 0.3)
SKEWED_SIGMA = 0.1


@dataclass(frozen=True)
class Budget:
    steps: int
    batch: int
    patch: int
    learning_rate: float


@dataclass(frozen=True)
class Trained:
    """A model ready to score: LR section in [0, 1] → SR section."""

    predict: Callable[[np.ndarray], np.ndarray]
    parameters: int


@dataclass(frozen=True)
class Setting:
    """One trained (or untrained) model of one part."""

    part: int
    name: str
    reference: str = "acquired"
    loss: str = "l1"
    lr_source: str = "acquired"
    model: str = "emsr"
    edge_attention: bool = True
    self_attention: bool = True
    noisier_branch: bool = True
    sweep: bool = False


def settings(parts: set[int]) -> list[Setting]:
    """Every row of the suite; identical configurations across parts are trained once (the
    runner keys models by their configuration, not by their part)."""
    rows = [
        Setting(1, "noisy reference, ℓ1"),
        Setting(1, "noisy reference, ℓ2", loss="l2"),
        Setting(1, "clean reference, ℓ1", reference="clean"),
        Setting(1, "clean reference, ℓ2", reference="clean", loss="l2"),
        *(Setting(2, f"gaussian σ={s}, ℓ1", reference=f"gaussian:{s}", sweep=True)
          for s in SWEEP_SIGMAS),
        Setting(2, f"skewed σ={SKEWED_SIGMA}, ℓ1", reference=f"skewed:{SKEWED_SIGMA}", sweep=True),
        Setting(2, f"skewed σ={SKEWED_SIGMA}, ℓ2", reference=f"skewed:{SKEWED_SIGMA}", loss="l2",
                sweep=True),
        Setting(3, "acquired pairs"),
        Setting(3, "synthetic LR from noisy HR", lr_source="synthetic"),
        Setting(3, "denoised HR", reference="denoised"),
        Setting(4, "full EMSR"),
        Setting(4, "without edge attention", edge_attention=False),
        Setting(4, "without self-attention", self_attention=False),
        Setting(4, "without noisier branch", noisier_branch=False),
        Setting(5, "bicubic", model="bicubic"),
        Setting(5, "residual CNN", model="residual_cnn"),
        Setting(5, "EMSR"),
    ]  # fmt: skip
    return [row for row in rows if row.part in parts]


def training_key(setting: Setting) -> str:
    """Settings with equal keys are the same model (e.g. part 1's ℓ1 noisy reference is part
    3's acquired pairs and part 4's full model)."""
    return json.dumps(
        [
            setting.reference,
            setting.loss,
            setting.lr_source,
            setting.model,
            setting.edge_attention,
            setting.self_attention,
            setting.noisier_branch,
        ]
    )


# --- data ------------------------------------------------------------------------------------


def phantom(shape: tuple[int, int, int], seed: int) -> PhantomVolumes:
    return make_phantom(PhantomSpec(shape=shape, scale=SCALE, seed=seed))


def unit(volume: np.ndarray) -> np.ndarray:
    return volume.astype(np.float32) / 255.0


def reference(kind: str, volumes: PhantomVolumes, rng: np.random.Generator) -> np.ndarray:
    """The HR training target in [0, 1] (not clipped: clipping would bias the noise)."""
    clean = unit(volumes.hr_clean)
    if kind == "acquired":
        return unit(volumes.hr)
    if kind == "clean":
        return clean
    if kind == "denoised":
        return np.stack([denoise_section(section) for section in unit(volumes.hr)])
    noise, _, sigma = kind.partition(":")
    draws = (
        rng.standard_normal(clean.shape)
        if noise == "gaussian"
        else rng.exponential(size=clean.shape) - 1.0
    )
    return (clean + float(sigma) * draws).astype(np.float32)


def training_lr(source: str, volumes: PhantomVolumes, rng: np.random.Generator) -> np.ndarray:
    """The LR training input in [0, 1]: the acquired scan, or one synthesised from the noisy
    HR by our degradation model fitted to the acquisition (extra PSF on top of the HR's own,
    the LR scan's noise)."""
    if source == "acquired":
        return unit(volumes.lr)
    spec = PhantomSpec(TRAIN_SHAPE)
    extra_psf = float(np.sqrt(spec.lr_psf_sigma_px**2 - spec.hr_psf_sigma_px**2))
    degradation = Degradation(psf_sigma_px=extra_psf, scale=SCALE, noise_sigma=spec.lr_noise_std)
    return np.stack([degradation.apply(section, rng) for section in unit(volumes.hr)])


# --- models ----------------------------------------------------------------------------------


class ResidualCNN(nn.Module):
    """The plain baseline: conv head, residual blocks, PixelShuffle, conv tail, plus the
    bicubic upscaling of the input (so it learns a residual, as EMSR's output is)."""

    def __init__(self, channels: int = 32, blocks: int = 3, scale: int = SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1))
            for _ in range(blocks)
        )  # fmt: skip
        self.upsample = nn.Sequential(
            nn.Conv2d(channels, channels * scale**2, 3, padding=1), nn.PixelShuffle(scale)
        )
        self.tail = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        for block in self.body:
            features = features + block(features)
        bicubic = nn.functional.interpolate(lr, scale_factor=self.scale, mode="bicubic")
        return bicubic + self.tail(self.upsample(features))


def train_residual_cnn(pairs: PairedVolumes, budget: Budget, loss: str, seed: int) -> Trained:
    """The baseline trained on the same pairs, patches and budget as EMSR (Adam, no
    schedule, no noisier branch: it has none)."""
    torch.manual_seed(seed)
    model = ResidualCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.learning_rate)
    sampler = PatchSampler(pairs, np.arange(pairs.sections), budget.patch,
                           np.random.default_rng(seed))  # fmt: skip
    objective = get_loss(loss)
    model.train()
    for _ in range(budget.steps):
        lr, hr = sampler.sample(budget.batch)
        value = objective(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    model.eval()

    @torch.inference_mode()
    def predict(image: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(image)[None, None])[0, 0].numpy()

    return Trained(predict, count_parameters(model))


def train_emsr(
    pairs: PairedVolumes, setting: Setting, budget: Budget, preset: str, device: str, seed: int
) -> Trained:
    config = TrainConfig(
        preset=preset, scale=SCALE, loss=setting.loss, steps=budget.steps,
        batch_size=budget.batch, patch=budget.patch, learning_rate=budget.learning_rate,
        halve_every=max(1, budget.steps * 2 // 3), noisier_branch=setting.noisier_branch,
        edge_attention=setting.edge_attention, self_attention=setting.self_attention,
        device=device, seed=seed, validate_every=budget.steps, checkpoint_every=budget.steps,
    )  # fmt: skip
    with TemporaryDirectory(prefix="emsr-experiment-") as directory:
        train(pairs, config, directory)
        predictor = Predictor(load_checkpoint(directory), device=device)

    def predict(image: np.ndarray) -> np.ndarray:
        return super_resolve_image(predictor, image, HALO)

    return Trained(predict, count_parameters(predictor.model))


BICUBIC = Trained(lambda image: upscale_bicubic(image, SCALE), parameters=0)


# --- scoring ---------------------------------------------------------------------------------


def score(model: Trained, test: PhantomVolumes) -> dict:
    """PSNR/SSIM against the clean truth (mean over held-out sections) and FRC resolution of
    the result against the truth."""
    truth = unit(test.hr_clean)
    results = np.stack([np.clip(model.predict(section), 0, 1) for section in unit(test.lr)])
    return {
        "psnr_db": float(np.mean([psnr(r, t, 1.0) for r, t in zip(results, truth)])),
        "ssim": float(np.mean([ssim(r, t, 1.0) for r, t in zip(results, truth)])),
        "frc_nm": frc_resolution(results, truth, test.hr_voxel_nm[1]),
    }


def scans_row(test: PhantomVolumes) -> dict:
    """What the acquisition itself gives, for the resolution table: the acquired HR scans
    against the truth and against each other."""
    hr, hr2, truth = unit(test.hr), unit(test.hr2), unit(test.hr_clean)
    pixel = test.hr_voxel_nm[1]
    return {
        "part": 6, "name": "acquired HR scan", "seed": None,
        "psnr_db": float(np.mean([psnr(a, t, 1.0) for a, t in zip(hr, truth)])),
        "ssim": float(np.mean([ssim(a, t, 1.0) for a, t in zip(hr, truth)])),
        "frc_nm": frc_resolution(hr, truth, pixel),
        "frc_hr_vs_hr2_nm": frc_resolution(hr, hr2, pixel),
        "frc_truth_limit_nm": 2 * pixel,
    }  # fmt: skip


# --- running ---------------------------------------------------------------------------------


def machine() -> dict:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_suite(args: argparse.Namespace, budget: Budget, out: Path) -> list[dict]:
    """Train and score every (setting, seed) not yet in results.jsonl, appending as it goes."""
    results = out / "results.jsonl"
    rows = read_rows(results)
    done = {(row["name"], row["part"], row["seed"]) for row in rows}
    test = phantom(TEST_SHAPE, TEST_SEED)
    if not any(row["part"] == 6 for row in rows) and 6 in args.parts:
        rows.append(scans_row(test))
        with results.open("a") as stream:
            stream.write(json.dumps(rows[-1]) + "\n")
    scores: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:
        train_volumes = phantom(TRAIN_SHAPE, seed)
        for setting in settings(args.parts):
            if setting.sweep and seed not in args.sweep_seeds:
                continue
            if (setting.name, setting.part, seed) in done:
                continue
            key = (training_key(setting), seed)
            if key not in scores:
                scores[key] = trained_score(setting, train_volumes, test, budget, args, seed)
                print(f"seed {seed} {setting.name}: {scores[key]['psnr_db']:.2f} dB "
                      f"({scores[key]['train_seconds']:.0f} s)", flush=True)  # fmt: skip
            row = {"part": setting.part, "name": setting.name, "seed": seed,
                   "reference": setting.reference, "loss": setting.loss, **scores[key],
                   "budget": budget.__dict__, "preset": args.preset,
                   "machine": machine()}  # fmt: skip
            rows.append(row)
            with results.open("a") as stream:
                stream.write(json.dumps(row) + "\n")
    return rows


def trained_score(
    setting: Setting, volumes: PhantomVolumes, test: PhantomVolumes, budget: Budget,
    args: argparse.Namespace, seed: int,
) -> dict:  # fmt: skip
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    if setting.model == "bicubic":
        model = BICUBIC
    else:
        lr = training_lr(setting.lr_source, volumes, rng)
        pairs = PairedVolumes.from_arrays(lr, reference(setting.reference, volumes, rng), SCALE)
        if setting.model == "residual_cnn":
            model = train_residual_cnn(pairs, budget, setting.loss, seed)
        else:
            model = train_emsr(pairs, setting, budget, args.preset, args.device, seed)
    seconds = time.perf_counter() - started
    return {**score(model, test), "train_seconds": round(seconds, 1),
            "parameters": model.parameters}  # fmt: skip


def integers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=integers, default=[0, 1, 2])
    parser.add_argument("--sweep-seeds", type=integers, default=[0], help="seeds for part 2")
    parser.add_argument("--parts", type=integers, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--preset", default="small", choices=("small", "paper"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("experiments-output"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 4 steps")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sweep_seeds, args.steps, args.patch = [0], [0], 4, 24
    args.parts = set(args.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.steps, args.batch, args.patch, args.learning_rate)
    started = time.perf_counter()
    rows = run_suite(args, budget, args.out)
    minutes = (time.perf_counter() - started) / 60
    write_report(rows, args.out, command_line(args), minutes)


def command_line(args: argparse.Namespace) -> str:
    return (f"python bench/experiments.py --seeds {','.join(map(str, args.seeds))} "
            f"--steps {args.steps} --preset {args.preset} --device {args.device}")  # fmt: skip


if __name__ == "__main__":
    main()
