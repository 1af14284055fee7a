"""The audit flow: PSNR/SSIM per block against a reference, FRC resolution between
independent scans; the numbers and plots land in a folder and as Prefect artifacts."""

from collections.abc import Callable
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from flows.params import VolumeURL
from flows.progress import ProgressReport
from flows.states import fail_on_user_error
from pipeline.audit import FRC_SECTIONS, PSNR_IDENTICAL_DB, AuditRequest, AuditResult, audit
from pipeline.geometry import Triple
from pipeline.urls import Location, refuse_overlap

TABLE_ROWS = 500  # the UI table lists this many blocks, the worst first


class AuditParams(BaseModel):
    """Measure a super-resolved volume; every volume must share SR's shape and voxel size."""

    sr_url: VolumeURL = Field(
        description="SR volume: zarr3://, zarr://, precomputed:// or a .zarr path"
    )
    out: str = Field(description="folder for metrics.json, quality_heatmap.png and frc.png")
    reference_url: VolumeURL | None = Field(None, description="HR scan of the field (PSNR, SSIM)")
    reference2_url: VolumeURL | None = Field(None, description="a second HR scan (FRC)")
    sr2_url: VolumeURL | None = Field(None, description="SR of a second LR scan (FRC)")
    block: Triple | None = Field(None, description="audit block (z, y, x)")
    frc_sections: int = Field(FRC_SECTIONS, ge=1, description="sections the FRC averages")

    def to_request(self) -> AuditRequest:
        return AuditRequest(
            sr_url=self.sr_url, out_dir=Path(self.out), reference_url=self.reference_url,
            reference2_url=self.reference2_url, sr2_url=self.sr2_url, block=self.block,
            frc_sections=self.frc_sections,
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


def summary(result: AuditResult) -> dict:
    """The global numbers and where the files are; the per-block list stays in metrics.json."""
    metrics = result.metrics
    return {
        "metrics_json": str(result.metrics_path),
        "quality_heatmap": str(result.heatmap_path),
        "frc_plot": str(result.frc_path),
        **{key: metrics[key] for key in (
            "psnr", "ssim", "frc_resolution_nm", "frc_resolution_half_bit_nm", "data_range",
            "voxel_size_nm", "inputs", "frc")},
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


def worst_blocks(blocks: list[dict], limit: int = TABLE_ROWS) -> list[dict]:
    return sorted(blocks, key=lambda block: block["psnr"])[:limit]


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
    rows += [(f"input: {role}", url) for role, url in result["inputs"].items() if url]
    rows += [
        ("metrics", result["metrics_json"]),
        ("heatmap", result["quality_heatmap"]),
        ("FRC plot", result["frc_plot"]),
    ]
    table = "\n".join(f"| {name} | {cell(value)} |" for name, value in rows)
    return f"## Metric audit\n\n| | |\n|---|---|\n{table}\n"


@flow(name="audit-metrics", log_prints=True)
@fail_on_user_error
def audit_metrics_flow(params: AuditParams) -> dict:
    """Audit a super-resolved volume; returns the global metrics and the written paths."""
    inputs = (params.sr_url, params.reference_url, params.reference2_url, params.sr2_url)
    refuse_overlap(
        {params.out: Location.of_path(Path(params.out) / "metrics.json")},
        {url: Location.of_volume(url) for url in filter(None, inputs)},
    )
    with ProgressReport("audit", "steps") as progress:
        result = audit(params.to_request(), on_progress=progress_callback(progress))
    blocks = result.metrics["blocks"]
    if blocks:
        create_table_artifact(
            worst_blocks(blocks), key="audit-blocks",
            description=f"The {min(len(blocks), TABLE_ROWS)} of {len(blocks)} audit blocks "
            "with the lowest PSNR (all are in metrics.json)",
        )  # fmt: skip
    outcome = summary(result)
    create_markdown_artifact(summary_markdown(outcome), key="audit-summary")
    return outcome
