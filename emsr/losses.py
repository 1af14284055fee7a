"""Losses and the noise-robust (noisier-input, weight-sharing) training objective.

With a noisy reference x = x_clean + n and E[n] = 0, the ℓ2 minimiser is the same as against
x_clean (the Noise2Noise argument); for ℓ1 the gap is bounded by the noise's mean. The
noisier-input branch feeds y and y′ = y + N(0, σ²) through the *same* network and asks that
both reproduce the reference and agree with each other, which makes f robust to input noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(prediction, target)


def l2(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction, target)


def charbonnier(
    prediction: torch.Tensor, target: torch.Tensor, epsilon: float = 1e-3
) -> torch.Tensor:
    """A smooth ℓ1: √(d² + ε²), differentiable at zero."""
    return torch.sqrt((prediction - target) ** 2 + epsilon**2).mean()


LOSSES: dict[str, Loss] = {"l1": l1, "l2": l2, "charbonnier": charbonnier}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


@dataclass(frozen=True)
class NoisierBranchObjective:
    """L(x, f(y)) + L(x, f(y′)) + L(f(y), f(y′)), y′ = y + N(0, σ²), σ ~ U(0, σ_max) per batch.

    With ``enabled=False`` it is the plain L(x, f(y)) (the ablation without the branch).
    """

    loss: Loss
    sigma_max: float = 5 / 255
    enabled: bool = True

    def __call__(
        self,
        model: nn.Module,
        lr: torch.Tensor,
        hr: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss, f(y)); both branches share one forward pass as one batch."""
        if not self.enabled:
            sr = model(lr)
            return self.loss(sr, hr), sr
        sigma = self.sigma_max * torch.rand((), generator=generator)
        noise = torch.randn(lr.shape, generator=generator).to(lr.device, lr.dtype)
        noisier = lr + sigma.item() * noise
        sr, sr_noisier = model(torch.cat([lr, noisier])).chunk(2)
        total = self.loss(sr, hr) + self.loss(sr_noisier, hr) + self.loss(sr, sr_noisier)
        return total, sr
