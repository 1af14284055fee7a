"""An audit end to end: open and place the inputs, plan the audit grid, measure its units on
the same Dask engine and clusters as super-resolve (resuming from the score store), reduce
the stored rows, then write the quality map and `metrics.json`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emsr.checkpoint import read_checkpoint
from emsr.errors import DataError
from emsr.intensity import IntensityRange
from pipeline.audit.document import (
    Reduction,
    metrics_document,
    prepared_output,
    reduce_scores,
    write_json,
    write_quality_map,
)
from pipeline.audit.grid import AuditGrid, default_block
from pipeline.audit.inputs import (
    ROLE_NAMES,
    audited_region,
    check_same_grid,
    data_range,
    reference_box,
    voxel_size,
)
from pipeline.audit.measure import AuditTask, measure_unit
from pipeline.audit.scores import ScoreStore
from pipeline.audit.sections import FRC_SECTIONS, FRCComparison, compare_frc, frc_pairs
from pipeline.cluster import connect
from pipeline.dispatch import Dispatcher, RunProgress, raise_for_failures
from pipeline.geometry import Box, Triple
from pipeline.ledger import configuration_hash
from pipeline.urls import confine, redact
from pipeline.volumes import Volume, open_volume

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class AuditRequest:
    """What to compare, where, and on which cluster. `block` is the audit grid's block
    (z, y, x); None picks one from the SR's shape and storage chunks. `lr_url` with
    `checkpoint` gives the single-scan quality map when there is no `sr2_url`."""

    sr_url: str
    out_dir: Path
    reference_url: str | None = None
    reference2_url: str | None = None
    sr2_url: str | None = None
    lr_url: str | None = None
    checkpoint: str | None = None
    block: Triple | None = None
    roi: Box | None = None
    frc_sections: int = FRC_SECTIONS
    cluster: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    device: str = "auto"
    batch_size: int = 4
    retries: int = 2
    slurm_config: Path | None = None

    def urls(self) -> dict[str, str | None]:
        return {
            "sr": self.sr_url,
            "reference": self.reference_url,
            "reference2": self.reference2_url,
            "sr2": self.sr2_url,
            "lr": self.lr_url,
        }


@dataclass(frozen=True)
class AuditResult:
    """The summary, where it and the stores are, and what the plots draw."""

    metrics: dict
    metrics_path: Path
    scores_path: Path
    quality_map_path: str | None
    reduction: Reduction
    value_range: float | None
    comparisons: list[FRCComparison]
    voxel_nm: tuple[float, float, float] | None


def open_inputs(request: AuditRequest) -> dict[str, Volume]:
    """Open the given volumes; all but the reference must cover the SR's grid exactly."""
    if not (request.reference_url or request.sr2_url or request.reference2_url or request.lr_url):
        raise DataError(
            "nothing to audit: give --reference (PSNR, SSIM), --sr2 or --reference2 (FRC "
            "resolution) and/or --lr with --checkpoint (single-scan quality map)"
        )
    if bool(request.lr_url) != bool(request.checkpoint):
        raise DataError("the single-scan quality map needs both --lr and --checkpoint")
    volumes = {role: open_volume(url) for role, url in request.urls().items() if url}
    sr = volumes["sr"].info
    for role in ("reference2", "sr2"):
        if role in volumes:
            check_same_grid(sr, volumes[role].info, ROLE_NAMES[role])
    return volumes


def quality_task_fields(request: AuditRequest, volumes: dict[str, Volume]) -> dict:
    """The model, scale and intensity mapping of the single-scan map (none with `sr2`)."""
    if request.sr2_url or not request.lr_url:
        return {}
    confine(request.checkpoint)
    checkpoint = read_checkpoint(request.checkpoint)
    lr, sr = volumes["lr"], volumes["sr"]
    check_same_grid(sr.info, lr.info, ROLE_NAMES["lr"], checkpoint.scale)
    recorded = sr.read_attributes().get("intensity")
    intensity = IntensityRange(**recorded) if recorded else IntensityRange.of_dtype(lr.info.dtype)
    return {
        "lr_url": request.lr_url,
        "checkpoint_dir": str(Path(request.checkpoint).resolve()),
        "checkpoint_sha256": checkpoint.sha256,
        "intensity": intensity,
        "scale": checkpoint.scale,
    }


class StepCounter:
    """Counts finished steps and reports (done, total), starting with (0, total)."""

    def __init__(self, total: int, on_progress: ProgressCallback | None, done: int = 0) -> None:
        self.done, self.total, self.on_progress = done, total, on_progress
        self.report()

    def __call__(self) -> None:
        self.done += 1
        self.report()

    def advance_to(self, done: int) -> None:
        """Report `done` steps, once: the dispatcher repeats its progress at intervals."""
        if done != self.done:
            self.done = done
            self.report()

    def report(self) -> None:
        if self.on_progress:
            self.on_progress(self.done, self.total)


def audit(request: AuditRequest, on_progress: ProgressCallback | None = None) -> AuditResult:
    """Measure every unit not yet measured, then summarise; returns the written results."""
    volumes = open_inputs(request)
    sr, reference = volumes["sr"].info, volumes.get("reference")
    placed = reference_box(sr, reference.info) if reference else None
    region = audited_region(sr, placed, request.roi)
    block = request.block or default_block(sr.shape, sr.read_chunk)
    grid = AuditGrid.build(sr.shape, block, sr.read_chunk, region)
    quality = quality_task_fields(request, volumes)
    out_dir = prepared_output(request.out_dir)
    origin = placed.begin if placed else (0, 0, 0)
    units = list(grid.plan.indices())
    float_pass = len(units) if reference and reference.info.dtype.kind == "f" else 0
    pairs = len(frc_pairs(volumes))
    step = StepCounter(float_pass + len(units) + pairs, on_progress)
    value_range = None
    if reference:
        boxes = [grid.plan.planned(index).write for index in units] if float_pass else []
        value_range = data_range(reference, boxes, origin, step)
    task = AuditTask(
        sr_url=request.sr_url, grid=grid, reference_url=request.reference_url,
        reference_origin=origin, value_range=value_range, sr2_url=request.sr2_url,
        device=request.device, batch_size=request.batch_size, **quality,
    )  # fmt: skip
    key = configuration_hash(
        {
            "inputs": {role: redact(url) for role, url in request.urls().items() if url},
            "checkpoint_sha256": task.checkpoint_sha256,
            "shape": list(sr.shape),
            "block": list(block),
            "reference_origin": list(origin),
            "value_range": value_range,
        }
    )
    store = ScoreStore.open(out_dir, key, grid.plan.block_count, grid.blocks_per_unit)
    measure_pending(request, task, grid, store, units, step)
    voxel_nm = voxel_size(volumes)
    pixel_nm = voxel_nm[1] if voxel_nm else None
    reduction = reduce_scores(grid, pixel_nm, store.blocks(region))
    comparisons = compare_frc(volumes, request.frc_sections, step)
    map_path = None
    if quality or request.sr2_url:
        map_path = write_quality_map(
            out_dir, reduction.resolution_nm, block, voxel_nm or (1, 1, 1), sr.origin_nm
        )
    context = {
        "inputs": {role: redact(url) if url else None for role, url in request.urls().items()},
        "shape": list(sr.shape),
        "block": list(block),
        "region": str(region),
        "reference_box": str(placed) if placed else None,
        "block_scores": str(store.path),
        "quality_map_volume": map_path,
    }
    metrics = metrics_document(context, reduction, value_range, comparisons, voxel_nm)
    metrics_path = out_dir / "metrics.json"
    write_json(metrics_path, metrics)
    return AuditResult(
        metrics, metrics_path, store.path, map_path, reduction, value_range, comparisons, voxel_nm
    )


def measure_pending(
    request: AuditRequest,
    task: AuditTask,
    grid: AuditGrid,
    store: ScoreStore,
    units: list[int],
    step: StepCounter,
) -> None:
    """Dispatch the units not yet measured to the cluster; their rows land in `store`."""
    skipped = int(np.count_nonzero(store.done[np.asarray(units, dtype=np.int64)]))
    start = step.done
    if skipped:
        step.advance_to(start + skipped)
    if skipped == len(units):
        return
    with connect(
        request.cluster,
        request.workers,
        threads_per_worker=request.threads_per_worker,
        slurm_config=request.slurm_config,
    ) as client:
        dispatcher = Dispatcher(
            client, task, grid.plan, store, retries=request.retries,  # type: ignore[arg-type]
            submit=measure_unit, on_outcome=store.record,
        )  # fmt: skip

        def on_progress(update: RunProgress) -> None:
            step.advance_to(start + update.blocks_done)

        pending = store.pending(map(grid.plan.planned, units))
        report = dispatcher.run(pending, len(units), skipped, on_progress)
    raise_for_failures(report)
