"""The EMSR network, read top-down: fixed wavelet edges, the small blocks, the network, presets.

EMSR (Khateri et al., IEEE TCI 2024) super-resolves one grayscale EM section. A shallow
feature map passes through edge-attention blocks, in which multi-scale edge maps (a fixed
starlet wavelet of the input and of an intermediate image) gate the trunk features, and a
window self-attention layer mixes each 4×4 neighbourhood. PixelShuffle then enlarges x and y.

Two properties matter for blockwise inference and are kept on purpose:
- inputs of any size are *padded* (never resized) to a multiple of the attention window, at
  the bottom and right only, so windows stay anchored at the input's origin;
- nothing depends on the absolute image size, so a tile's output depends only on its pixels
  and on where its origin lies on the 4-pixel window grid.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

PRE_BLUR = (0.0026, 0.1655, 0.6638, 0.1655, 0.0026)
"""Light pre-blur applied before the starlet transform (separable, 5 taps)."""

B3_SPLINE = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
"""The B3-spline kernel of the à-trous (starlet) wavelet, applied at dilations 1, 2, 4."""

STARLET_DILATIONS = (1, 2, 4)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class StarletEdges(nn.Module):
    """Three fixed à-trous wavelet detail planes of a 1-channel image: multi-scale edge maps.

    Not learned: the planes are band-pass views of the image (fine to coarse), which is what
    lets the network find membranes and myelin edges in noisy input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pre_blur", torch.tensor(PRE_BLUR), persistent=False)
        self.register_buffer("b3", torch.tensor(B3_SPLINE), persistent=False)

    @staticmethod
    def _smooth(image: torch.Tensor, taps: torch.Tensor, dilation: int) -> torch.Tensor:
        reach = 2 * dilation
        image = F.pad(image, (reach, reach, reach, reach), mode="replicate")
        taps = taps.to(image.dtype)
        image = F.conv2d(image, taps.view(1, 1, 1, 5), dilation=(1, dilation))
        return F.conv2d(image, taps.view(1, 1, 5, 1), dilation=(dilation, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        approximations = [self._smooth(image, self.pre_blur, 1)]
        for dilation in STARLET_DILATIONS:
            approximations.append(self._smooth(approximations[-1], self.b3, dilation))
        details = [fine - coarse for fine, coarse in itertools.pairwise(approximations)]
        return torch.cat(details, dim=1)


class ResBlock(nn.Module):
    """conv → ReLU → conv, plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels), nn.ReLU(inplace=True), conv3x3(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EdgeGate(nn.Module):
    """Turns edge features e into a gate a = k4(k3(e) · σ(k2(LeakyReLU(k1(e)))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.k1 = conv3x3(channels, channels)
        self.k2 = nn.Conv2d(channels, channels, 1, bias=True)
        self.k3 = conv3x3(channels, channels)
        self.k4 = conv3x3(channels, channels)

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.k2(F.leaky_relu(self.k1(edges), 0.2)))
        return self.k4(self.k3(edges) * weights)


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, C, H, W) → (N·H/w·W/w, w·w, C): one token sequence per non-overlapping window.

    Works through the (N, H, W, C) view, which is free for channels_last input."""
    n, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(n, h // window, window, w // window, window, c)
    return x.transpose(2, 3).reshape(-1, window * window, c)


def from_windows(
    tokens: torch.Tensor, shape: torch.Size, window: int, memory_format: torch.memory_format
) -> torch.Tensor:
    """Inverse of `to_windows`, in the asked-for memory format: channels_last stays
    channels_last through the transformer (a view, no copy), NCHW stays NCHW."""
    n, c, h, w = shape
    x = tokens.view(n, h // window, w // window, window, window, c).transpose(2, 3)
    x = x.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=memory_format)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


ATTENTION_KERNELS = ("sdpa", "matmul")
"""Two implementations of the same window attention. `sdpa` is PyTorch's fused
scaled_dot_product_attention; `matmul` spells it out as two batched matmuls and a softmax,
which can be faster where the fused kernels refuse 4-wide heads (see bench/device.py)."""


def window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str
) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (batch, heads, tokens, width)."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(query, key, value)
    scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1)
    return scores.softmax(dim=-1) @ value


class WindowTransformer(nn.Module):
    """Pre-LayerNorm multi-head self-attention inside 4×4 windows, then an MLP; no shift and
    no positional encoding, so the layer is equivariant to shifts by whole windows."""

    def __init__(self, channels: int, heads: int, window: int, mlp_ratio: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.window = heads, window
        self.kernel = "sdpa"
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels),
            nn.ReLU(inplace=True),
            nn.Linear(mlp_ratio * channels, channels),
        )

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        qkv = self.qkv(tokens).view(batch, length, 3, self.heads, channels // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        mixed = window_attention(query, key, value, self.kernel)
        return self.proj(mixed.transpose(1, 2).reshape(batch, length, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = to_windows(x, self.window)
        tokens = tokens + self.attend(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return from_windows(tokens, x.shape, self.window, memory_format_of(x))


class EdgeAttentionBlock(nn.Module):
    """Residual trunk, an edge stream built from wavelet edges, edge-gated residual steps,
    window self-attention and a closing convolution."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels = config.channels
        self.trunk = nn.Sequential(*(ResBlock(channels) for _ in range(config.res_blocks)))
        self.edge_attention = config.edge_attention
        self.gated_trunk = nn.ModuleList(ResBlock(channels) for _ in range(config.gates))
        if config.edge_attention:
            self.to_image = nn.Sequential(
                conv3x3(channels, channels), nn.ReLU(inplace=True), conv3x3(channels, 1)
            )
            self.starlet = StarletEdges()
            self.edges_in = conv3x3(2 * len(STARLET_DILATIONS), channels)
            self.edge_stream = nn.ModuleList(ResBlock(channels) for _ in range(config.gates))
            self.gates = nn.ModuleList(EdgeGate(channels) for _ in range(config.gates))
        self.transformer: nn.Module = (
            WindowTransformer(channels, config.heads, config.window, config.mlp_ratio)
            if config.self_attention
            else nn.Identity()
        )
        self.tail = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor, input_edges: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        if self.edge_attention:
            own_edges = self.starlet(self.to_image(x))
            edges = self.edges_in(torch.cat([own_edges, input_edges], dim=1))
            for trunk_step, edge_step, gate in zip(
                self.gated_trunk, self.edge_stream, self.gates, strict=True
            ):
                trunk = trunk_step(x)
                edges = edge_step(edges)
                x = trunk + gate(edges) * trunk
        else:
            for trunk_step in self.gated_trunk:
                x = trunk_step(x)
        return self.tail(self.transformer(x))


def upsampler(channels: int, scale: int) -> nn.Sequential:
    """conv → PixelShuffle stages: one for ×2 and ×3, two ×2 stages for ×4."""
    factors = {2: [2], 3: [3], 4: [2, 2]}.get(scale)
    if factors is None:
        raise ValueError(f"scale must be 2, 3 or 4, not {scale}")
    stages: list[nn.Module] = []
    for factor in factors:
        stages += [nn.Conv2d(channels, channels * factor**2, 3, padding=1), nn.PixelShuffle(factor)]
    return nn.Sequential(*stages)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the architecture; stored in every checkpoint."""

    scale: int = 2
    channels: int = 64
    blocks: int = 3
    res_blocks: int = 4
    gates: int = 2
    heads: int = 16
    window: int = 4
    mlp_ratio: int = 2
    edge_attention: bool = True
    self_attention: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class EMSR(nn.Module):
    """LR section (N, 1, h, w) in [0, 1] → SR section (N, 1, s·h, s·w); no clamp."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_edges = StarletEdges()
        self.head = conv3x3(1, config.channels)
        self.body = nn.ModuleList(EdgeAttentionBlock(config) for _ in range(config.blocks))
        self.upsample = upsampler(config.channels, config.scale)
        self.tail = conv3x3(config.channels, 1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        height, width = lr.shape[-2:]
        window = self.config.window
        lr = F.pad(lr, (0, -width % window, 0, -height % window), mode="replicate")
        input_edges = self.input_edges(lr)
        x = long_skip = self.head(lr)
        for block in self.body:
            x = block(x, input_edges)
        sr = self.tail(self.upsample(x + long_skip))
        scale = self.config.scale
        return sr[..., : scale * height, : scale * width]


PRESETS: dict[str, ModelConfig] = {
    # The published network: 64 channels, 3 edge-attention blocks, 16 heads of width 4.
    "paper": ModelConfig(),
    # A narrow, shallow variant that trains in minutes on a CPU (tests, the demo).
    "small": ModelConfig(channels=16, blocks=2, res_blocks=1, gates=1, heads=4),
}


def build_model(preset: str = "paper", scale: int = 2, **overrides: object) -> EMSR:
    """The EMSR network for a named preset and scale; `overrides` switch parts off for
    ablations (e.g. ``edge_attention=False``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return EMSR(replace(PRESETS[preset], scale=scale, **overrides))


def use_attention_kernel(model: nn.Module, kernel: str) -> None:
    """Switch every window transformer of `model` to `kernel` (same values, other speed)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}")
    for module in model.modules():
        if isinstance(module, WindowTransformer):
            module.kernel = kernel


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
