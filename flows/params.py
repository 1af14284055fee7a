"""Typed flow parameters: the Prefect UI renders each model as a form, the CLI fills them in.

Sizes are (z, y, x) lists of voxels; volume URLs are Neuroglancer source strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, model_validator

from pipeline.dispatch import WORKER_WAIT_S
from pipeline.geometry import Box, Triple
from pipeline.superresolve import DEFAULT_TILE, SuperResolveRequest
from pipeline.urls import redact
from pipeline.world import WorldBox

VolumeURL = Annotated[str, PlainSerializer(redact, return_type=str, when_used="json")]
"""A volume URL whose credentials stay out of JSON: Prefect stores flow-run parameters (in
its database, shown in its UI) as JSON, so only the in-process value keeps them."""


class SuperResolveParams(BaseModel):
    """Super-resolve INPUT into OUTPUT with a trained checkpoint."""

    input_url: VolumeURL = Field(
        description="LR volume: zarr3://, zarr://, precomputed:// or a .zarr path"
    )
    output_url: VolumeURL = Field(description="SR volume to create or continue (same URL forms)")
    checkpoint: str = Field(description="checkpoint directory (config.json + safetensors)")
    block: Triple | None = Field(None, description="output voxels per block (z, y, x)")
    chunk: Triple | None = Field(None, description="output storage chunk (z, y, x)")
    shard: Triple | None = Field(None, description="output shard (z, y, x), a multiple of chunk")
    roi: str | None = Field(None, description="output region z0:z1,y0:y1,x0:x1 (output voxels)")
    roi_nm: str | None = Field(
        None, description="output region z0:z1,y0:y1,x0:x1 in the input's world coordinates, nm"
    )
    voxel_size: tuple[float, float, float] | None = Field(
        None, description="input voxel size (z, y, x) in nm, where its metadata has none"
    )
    tile: int = Field(DEFAULT_TILE, description="LR tile core, pixels")
    halo: int | None = Field(None, ge=0, description="LR context per tile, px; unset: 16 or more")
    scale: int | None = Field(None, description="expected scale; must match the checkpoint")
    normalization: Literal["checkpoint", "dtype", "percentile"] = Field(
        "checkpoint", description="intensity mapping: the checkpoint's, or an explicit override"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="model arithmetic; auto: bf16 for uint8 on CUDA, else fp32"
    )
    compute_empty: bool = Field(False, description="compute tiles that see only zeros/no data")
    cluster: str = Field("local", description="local, slurm or tcp://HOST:PORT")
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(4, ge=1)
    retries: int = Field(2, ge=0)
    max_failures: int | None = Field(None, ge=1, description="stop after this many failed blocks")
    block_timeout: float | None = Field(
        None, gt=0, description="seconds a block may run (default: 10× the median block)"
    )
    worker_wait: float = Field(
        WORKER_WAIT_S, gt=0, description="seconds to wait for a worker when none is alive"
    )
    overwrite: bool = False
    slurm_config: str | None = Field(None, description="dask-jobqueue YAML for --cluster slurm")

    def to_request(self) -> SuperResolveRequest:
        return SuperResolveRequest(
            **self.model_dump(exclude={"roi", "roi_nm", "slurm_config"}),
            roi=Box.parse(self.roi) if self.roi else None,
            roi_nm=WorldBox.parse(self.roi_nm) if self.roi_nm else None,
            slurm_config=Path(self.slurm_config) if self.slurm_config else None,
        )


class TrainParams(BaseModel):
    """Train EMSR on a pair of aligned LR/HR volumes (both may be noisy)."""

    lr_url: VolumeURL | None = Field(None, description="LR volume (or give `pairs`)")
    hr_url: VolumeURL | None = Field(None, description="HR volume of the same field, scale× larger")
    pairs: str | None = Field(None, description="training-pair store from extract-pairs")
    out: str = Field(description="checkpoint directory to write")
    preset: Literal["small", "paper"] = "small"
    scale: int = Field(2, ge=2, le=4)
    loss: Literal["l1", "l2", "charbonnier"] = "l1"
    steps: int = Field(500, ge=0)
    batch_size: int = Field(4, ge=1)
    patch: int = Field(48, ge=8, description="LR patch size, pixels")
    learning_rate: float = Field(
        1e-4, gt=0, lt=1, allow_inf_nan=False, description="Adam's; above ~1e-2 EMSR diverges"
    )
    halve_every: int = Field(50_000, ge=1, description="halve the learning rate every N steps")
    checkpoint_every: int = Field(100, ge=1, description="save a resumable checkpoint every N")
    validate_every: int = Field(100, ge=1, description="validation PSNR every N steps")
    noisier_branch: bool = True
    edge_attention: bool = True
    self_attention: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    resume: bool = False

    @model_validator(mode="after")
    def one_source_of_pairs(self) -> TrainParams:
        volumes = self.lr_url is not None or self.hr_url is not None
        if self.pairs is not None and volumes:
            raise ValueError("give --pairs DIR or --lr and --hr, not both")
        if self.pairs is None and (self.lr_url is None or self.hr_url is None):
            raise ValueError("give either --pairs DIR or both --lr and --hr")
        return self


class ImportParams(BaseModel):
    """Import a TIFF stack (folder of per-section TIFFs or one multi-page TIFF) as OME-Zarr."""

    source: str = Field(description="folder of .tif/.tiff sections, or one multi-page TIFF")
    output_url: VolumeURL = Field(description="OME-Zarr v3 volume to create or continue")
    voxel_size: tuple[float, float, float] = Field(description="voxel size (z, y, x), nm")
    chunk: Triple | None = Field(None, description="storage chunk (z, y, x)")
    threads: int = Field(4, ge=1, le=64, description="sections decoded and written at once")
    overwrite: bool = False

    @model_validator(mode="after")
    def positive_voxel_size(self) -> ImportParams:
        if not all(0 < v < float("inf") for v in self.voxel_size):
            raise ValueError(f"voxel size must be three positive numbers, got {self.voxel_size}")
        return self
