"""The extract-training-pairs flow: a checked training-pair store from acquired volumes.

Thin: the parameters as a Prefect form, a progress bar over sections and a summary artifact;
the work is `pipeline.pairs.extract_pairs`.
"""

from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.params import VolumeURL
from flows.progress import ProgressReport
from flows.states import fail_on_user_error
from pipeline.pairs import (
    DEFAULT_MAX_OFFSET_LR_PX,
    DEFAULT_MIN_CONFIDENCE,
    MANIFEST,
    PairRequest,
    PairStore,
    extract_pairs,
)

MAX_PSF_SIGMA_PX = 16.0
"""EM PSFs are a few HR pixels wide; a wider blur erases the sections, and its filter would
run for minutes per section, deaf to Ctrl-C and SIGTERM."""


class ExtractPairsParams(BaseModel):
    """Make a training-pair store: acquired LR + HR, synthetic LR from HR, or LR + denoised HR."""

    hr_url: VolumeURL = Field(
        description="HR volume: zarr3://, zarr://, precomputed:// or a .zarr path"
    )
    out: str = Field(description="store directory to write (lr.zarr, hr.zarr, manifest.json)")
    lr_url: VolumeURL | None = Field(None, description="acquired LR volume of the same field")
    mode: Literal["real", "synthetic", "denoised"] | None = Field(
        None, description="default: real with an LR volume (unless fit_noise), else synthetic"
    )
    scale: int = Field(2, ge=2, le=4, description="LR pixels are this much larger in y and x")
    psf_sigma: float = Field(
        1.0, ge=0, le=MAX_PSF_SIGMA_PX, allow_inf_nan=False,
        description="synthetic: in-plane PSF sigma, HR pixels",
    )  # fmt: skip
    downsample: Literal["area", "bicubic"] = Field("area", description="synthetic: binning")
    noise: Literal["none", "gaussian", "poisson_gaussian", "local_variance"] = Field(
        "gaussian", description="synthetic: noise model"
    )
    noise_sigma: float = Field(
        0.03,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="synthetic: noise std in units of the intensity range",
    )
    photons_at_white: float = Field(
        100.0, gt=0, allow_inf_nan=False, description="synthetic poisson_gaussian: dose"
    )
    fit_noise: bool = Field(False, description="synthetic: match the acquired LR's noise std")
    seed: int = Field(0, ge=0)
    max_offset: float = Field(
        DEFAULT_MAX_OFFSET_LR_PX,
        ge=0,
        allow_inf_nan=False,
        description="largest LR↔HR offset accepted, LR pixels",
    )
    min_confidence: float = Field(
        DEFAULT_MIN_CONFIDENCE,
        ge=-1,
        le=1,
        allow_inf_nan=False,
        description="least LR↔HR correlation accepted",
    )
    overwrite: bool = Field(False, description="replace an existing store in `out`")
    voxel_size: tuple[float, float, float] | None = Field(
        None, description="HR voxel size (z, y, x) in nm, where its metadata has none"
    )

    def to_request(self) -> PairRequest:
        return PairRequest(**self.model_dump())


def summary(store: PairStore) -> dict:
    manifest = store.manifest
    result = {
        "store": str(store.directory),
        "manifest": str(store.directory / MANIFEST),
        "mode": manifest["mode"],
        "scale": store.scale,
        "lr_shape": manifest["shape"]["lr"],
        "hr_shape": manifest["shape"]["hr"],
        "noise_sigma": manifest["noise_sigma"],
    }
    for key in ("offset_lr_px", "offset_confidence", "degradation", "noise_fit"):
        if key in manifest:
            result[key] = manifest[key]
    return result


def summary_markdown(result: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items())
    return f"## Training pairs\n\n| | |\n|---|---|\n{rows}\n"


@flow(name="extract-training-pairs", log_prints=True)
@fail_on_user_error
def extract_training_pairs_flow(params: ExtractPairsParams) -> dict:
    """Write a training-pair store that `emsr train --pairs` reads."""
    with ProgressReport("extract pairs", "sections") as progress:

        def on_progress(done: int, total: int) -> None:
            if done == 0:
                progress.start(total)
            else:
                progress.advance_to(done)

        store = extract_pairs(params.to_request(), on_progress=on_progress)
    result = summary(store)
    create_markdown_artifact(summary_markdown(result), key="training-pairs-summary")
    return result
