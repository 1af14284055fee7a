"""Running a trained model on LR tiles and on whole sections.

`Predictor` owns the device-specific choices (the arithmetic precision, channels_last on
CUDA, fixed batch shapes) so that callers only hand it float32 tiles in [0, 1]. Batches are
always padded to the same size: on CPU this keeps every tile's arithmetic identical whatever
else shares its batch, which is what makes blockwise output independent of the block shape.

Precision is a choice with measured consequences (BENCHMARKS.md, "Precision"): fp32 is the
reference; bf16 and fp16 run under autocast, faster on GPUs but with 8 and 11 significant
bits, which a 16-bit output resolves and an 8-bit one barely does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emsr.errors import DataError
from emsr.network import EMSR

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

NUMERICS_VERSION = 1
"""Bumped by any change that alters output values (model arithmetic, intensity mapping,
no-data rules); part of every run's configuration key, so two versions never mix."""


def default_precision(output_dtype: np.dtype, device_type: str) -> str:
    """The precision a run uses unless told: bf16 only on CUDA and only for 8-bit outputs,
    where it changes stored values by at most a few levels; fp32 elsewhere (16-bit and float
    outputs resolve bf16's rounding, and on CPU bf16 is no faster). See BENCHMARKS.md."""
    if device_type == "cuda" and np.dtype(output_dtype) == np.uint8:
        return "bf16"
    return "fp32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DataError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def device_class(device: str) -> str:
    """The kind of device ("cpu" or "cuda") `device` means on this machine; unlike
    `resolve_device` it does not refuse CUDA here, as a cluster's workers may have it."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(
            "--device cuda was asked for but no CUDA device is visible; use --device cpu"
        )
    return torch.device(device)


class Predictor:
    """Batched, gradient-free forward passes of one model on one device."""

    def __init__(
        self, model: EMSR, device: str = "auto", batch_size: int = 4, precision: str = "fp32"
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.scale = model.config.scale
        self.precision = check_precision(precision)
        memory_format = (
            torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        )
        self.memory_format = memory_format
        self.model = model.eval().to(self.device, memory_format=memory_format)

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch[:, None]).to(self.device, memory_format=self.memory_format)
        autocast = _AUTOCAST_DTYPES.get(self.precision)
        with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
            outputs = self.model(inputs)
        return outputs[:, 0].float().cpu().numpy()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """(N, h, w) float32 LR tiles → (N, s·h, s·w) float32 SR tiles, in fixed-size batches."""
        if tiles.ndim != 3:
            raise DataError(f"tiles must be (N, h, w), got shape {tiles.shape}")
        count = len(tiles)
        padded = -count % self.batch_size
        if padded:
            tiles = np.concatenate([tiles, np.zeros((padded, *tiles.shape[1:]), tiles.dtype)])
        results = [
            self._forward(np.ascontiguousarray(tiles[i : i + self.batch_size], dtype=np.float32))
            for i in range(0, len(tiles), self.batch_size)
        ]
        return np.concatenate(results)[:count]


def reflected_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices start … stop-1 mirrored into [0, size) about the edges (edges not repeated).

    One global rule for what lies beyond a volume's edge, used by whole-section and
    blockwise inference alike, so both feed the model exactly the same pixels.
    """
    indices = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    indices = np.mod(indices, period)
    return np.where(indices < size, indices, period - indices)


def super_resolve_image(predictor: Predictor, image: np.ndarray, halo: int) -> np.ndarray:
    """Whole-section inference: the reference that blockwise output must match.

    The section is reflected by `halo` LR pixels on every side (as the volume edge is in
    blockwise runs), run in one pass, and cropped back.
    """
    if image.ndim != 2:
        raise DataError(f"a section must be 2-D, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError("the section contains NaN or Inf values; clean or mask them first")
    height, width = image.shape
    rows = reflected_indices(-halo, height + halo, height)
    columns = reflected_indices(-halo, width + halo, width)
    padded = image.astype(np.float32)[np.ix_(rows, columns)]
    output = predictor(padded[None])[0]
    s = predictor.scale
    return output[s * halo : s * (halo + height), s * halo : s * (halo + width)]


def upscale_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline (and the reference for 'does SR beat interpolation')."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(tensor, scale_factor=scale, mode="bicubic", align_corners=False)[
        0, 0
    ].numpy()
