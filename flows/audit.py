"""The audit flow: PSNR/SSIM per block against a reference, FRC resolution between
independent scans and the reference-free quality map, measured blockwise on Dask; the numbers
and plots land in a folder and as Prefect artifacts."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from flows.audit_plots import write_plots
from flows.params import VolumeURL
from flows.progress import ProgressReport
from flows.states import fail_on_user_error
from pipeline.audit.document import PSNR_IDENTICAL_DB
from pipeline.audit.run import AuditRequest, AuditResult, audit
from pipeline.audit.sections import FRC_SECTIONS
from pipeline.geometry import Box, Triple
from pipeline.urls import Location, refuse_overlap

TABLE_ROWS = 500  # the UI table lists this many blocks, the worst first


class AuditParams(BaseModel):
    """Measure a super-resolved volume; every volume must share SR's shape and voxel size."""

    sr_url: VolumeURL = Field(
        description="SR volume: zarr3://, zarr://, precomputed:// or a .zarr path"
    )
    out: str = Field(description="folder for metrics.json, the score store, map and plots")
    reference_url: VolumeURL | None = Field(
        None, description="HR scan of the field or part of it, placed by its origin (PSNR, SSIM)"
    )
    reference2_url: VolumeURL | None = Field(None, description="a second HR scan (FRC)")
    sr2_url: VolumeURL | None = Field(None, description="SR of a second LR scan (FRC, map)")
    lr_url: VolumeURL | None = Field(None, description="the LR scan (single-scan quality map)")
    checkpoint: str | None = Field(None, description="the SR run's checkpoint (with lr_url)")
    block: Triple | None = Field(None, description="audit block (z, y, x)")
    roi: str | None = Field(None, description="SR region z0:z1,y0:y1,x0:x1 to audit")
    frc_sections: int = Field(FRC_SECTIONS, ge=1, description="sections the FRC averages")
    cluster: str = Field("local", description="local, slurm or tcp://HOST:PORT")
    workers: int = Field(2, ge=1)
    device: str = Field("auto", description="auto, cpu or cuda (single-scan map)")
    slurm_config: str | None = Field(None, description="dask-jobqueue YAML for --cluster slurm")

    def to_request(self) -> AuditRequest:
        return AuditRequest(
            sr_url=self.sr_url, out_dir=Path(self.out), reference_url=self.reference_url,
            reference2_url=self.reference2_url, sr2_url=self.sr2_url, lr_url=self.lr_url,
            checkpoint=self.checkpoint, block=self.block,
            roi=Box.parse(self.roi) if self.roi else None, frc_sections=self.frc_sections,
            cluster=self.cluster, workers=self.workers, device=self.device,
            slurm_config=Path(self.slurm_config) if self.slurm_config else None,
        )  # fmt: skip


def progress_callback(progress: ProgressReport) -> Callable[[int, int], None]:
    """Adapt the audit's (done, total) reports: the first starts the bar, later ones move it."""
    started = False

    def on_progress(done: int, total: int) -> None:
        nonlocal started
        if not started:
            progress.start(total, done)
            started = True
        else:
            progress.advance_to(done)

    return on_progress


def summary(result: AuditResult, plots: dict[str, Path]) -> dict:
    """The global numbers and where the files are; every block's are in the score store."""
    metrics = result.metrics
    return {
        "metrics_json": str(result.metrics_path),
        "block_scores": str(result.scores_path),
        "quality_map_volume": result.quality_map_path,
        "quality_heatmap": str(plots["psnr"]),
        "quality_map_plot": str(plots["map"]),
        "frc_plot": str(plots["frc"]),
        **{key: metrics[key] for key in (
            "psnr", "ssim", "frc_resolution_nm", "frc_resolution_half_bit_nm", "data_range",
            "voxel_size_nm", "inputs", "frc", "quality_map", "blocks", "region")},
    }  # fmt: skip


def headline(result: dict) -> str:
    """'PSNR 31.20 dB, SSIM 0.874, FRC 42.1 nm', with n/a for what was not measured."""

    def shown(value: float | None, template: str) -> str:
        return "n/a" if value is None else template.format(value)

    psnr = result["psnr"]
    psnr_text = "identical" if psnr == PSNR_IDENTICAL_DB else shown(psnr, "{:.2f} dB")
    return (
        f"PSNR {psnr_text}, SSIM {shown(result['ssim'], '{:.3f}')}, "
        f"FRC {shown(result['frc_resolution_nm'], '{:.1f} nm')}"
    )


def worst_blocks(result: AuditResult, limit: int = TABLE_ROWS) -> list[dict]:
    """The quality map's blocks of coarsest resolution, each with its box, worst first."""
    resolution = result.reduction.resolution_nm
    block = result.reduction.grid.block
    measured = np.flatnonzero(np.isfinite(resolution))
    order = measured[np.argsort(-resolution.flat[measured], kind="stable")][:limit]
    rows = []
    for cell in zip(*np.unravel_index(order, resolution.shape)):
        box = Box.from_shape(block, tuple(int(c) * b for c, b in zip(cell, block)))
        rows.append({"box": str(box), "resolution_nm": float(resolution[cell])})
    return rows


def cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(result: dict) -> str:
    rows = [
        ("PSNR (dB)", result["psnr"]),
        ("SSIM", result["ssim"]),
        ("FRC resolution, 1/7 (nm)", result["frc_resolution_nm"]),
        ("FRC resolution, half-bit (nm)", result["frc_resolution_half_bit_nm"]),
    ]
    rows += [
        (f"FRC {name.replace('_', ' ')}, 1/7 (nm)", entry["resolution_nm"])
        for name, entry in result["frc"].items()
    ]
    quality_map = result["quality_map"]
    rows += [
        (f"quality map, {name} (nm)", quality_map[f"{name}_nm"])
        for name in ("p10", "median", "p90")
    ]
    rows += [(f"input: {role}", url) for role, url in result["inputs"].items() if url]
    rows += [
        ("audited region", result["region"]),
        ("blocks", result["blocks"]),
        ("metrics", result["metrics_json"]),
        ("block scores", result["block_scores"]),
        ("quality map volume", result["quality_map_volume"]),
        ("heatmap", result["quality_heatmap"]),
        ("quality map plot", result["quality_map_plot"]),
        ("FRC plot", result["frc_plot"]),
    ]
    table = "\n".join(f"| {name} | {cell(value)} |" for name, value in rows)
    return f"## Metric audit\n\n| | |\n|---|---|\n{table}\n"


@flow(name="audit-metrics", log_prints=True)
@fail_on_user_error
def audit_metrics_flow(params: AuditParams) -> dict:
    """Audit a super-resolved volume; returns the global metrics and the written paths."""
    volumes = (
        params.sr_url, params.reference_url, params.reference2_url, params.sr2_url, params.lr_url
    )  # fmt: skip
    inputs = {url: Location.of_volume(url) for url in filter(None, volumes)}
    if params.checkpoint:
        inputs[params.checkpoint] = Location.of_path(Path(params.checkpoint))
    refuse_overlap({params.out: Location.of_path(Path(params.out) / "metrics.json")}, inputs)
    with ProgressReport("audit", "steps") as progress:
        result = audit(params.to_request(), on_progress=progress_callback(progress))
    plots = write_plots(result)
    worst = worst_blocks(result)
    if worst:
        create_table_artifact(
            worst, key="audit-quality-map",
            description=f"The {len(worst)} audit blocks of coarsest reference-free resolution "
            f"(the whole map: {result.quality_map_path}; every score: {result.scores_path})",
        )  # fmt: skip
    outcome = summary(result, plots)
    create_markdown_artifact(summary_markdown(outcome), key="audit-summary")
    return outcome
