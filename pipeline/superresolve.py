"""A super-resolve run end to end: check everything, plan blocks, create the output with its
provenance, open the ledger, dispatch the pending blocks to Dask workers.

Every check that can fail on bad input runs before anything is written (DESIGN invariant 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from math import prod
from pathlib import Path

import numpy as np

from emsr.checkpoint import Checkpoint, read_checkpoint
from emsr.inference import NUMERICS_VERSION, check_precision, default_precision, device_class
from emsr.intensity import IntensityMapping
from pipeline.block import BlockTask
from pipeline.cluster import connect
from pipeline.dispatch import WORKER_WAIT_S, Dispatcher, RunProgress, RunReport, raise_for_failures
from pipeline.errors import LedgerError, PlanError
from pipeline.fingerprint import input_fingerprint
from pipeline.geometry import Box, Triple
from pipeline.ledger import DoneLedger, configuration_hash
from pipeline.normalization import choose_intensity
from pipeline.plan import BlockPlan
from pipeline.preflight import check_can_start, check_input, check_tiling
from pipeline.seams import choose_halo, sample_sections
from pipeline.tiles import TileLattice
from pipeline.urls import (
    Location,
    absolute_url,
    confine,
    parse_volume_url,
    redact,
    refuse_overlap,
    reported,
)
from pipeline.volumes import Volume, create_volume, open_volume, require_voxel_size
from pipeline.world import Voxel, WorldBox

DEFAULT_TILE = 512
"""LR tile core (px). With the default halo the model computes (512+32)²/512² ≈ 1.13× the
pixels it writes; see BENCHMARKS.md for the halo's accuracy and the redundancy."""
DEFAULT_BLOCK_SECTIONS = 16
DEFAULT_CHUNK_YX = 512
MAX_STORED_OBJECTS = 10**7
"""Default sharding keeps an output within this many stored objects where it can: a 10¹⁵-
voxel output in 512² chunks would otherwise be ~4 × 10⁹ files (inodes) or object-store keys."""
MAX_SHARD_RATIO = 16
"""At most 16 chunks per shard along each axis: 16 × 8192² voxels, 1 GiB of uint8."""


@dataclass(frozen=True)
class SuperResolveRequest:
    """Everything a user chooses for one run (the CLI's and the flow's parameters)."""

    input_url: str
    output_url: str
    checkpoint: str
    block: Triple | None = None
    chunk: Triple | None = None
    shard: Triple | None = None
    roi: Box | None = None
    roi_nm: WorldBox | None = None
    voxel_size: Voxel | None = None
    tile: int = DEFAULT_TILE
    halo: int | None = None
    """LR px around each tile; None: `DEFAULT_HALO`, raised to the checkpoint's validated halo."""
    scale: int | None = None
    normalization: str = "checkpoint"
    precision: str = "auto"
    compute_empty: bool = False
    cluster: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    device: str = "auto"
    batch_size: int = 4
    retries: int = 2
    max_failures: int | None = None
    block_timeout: float | None = None
    worker_wait: float = WORKER_WAIT_S
    overwrite: bool = False
    slurm_config: Path | None = None


@dataclass(frozen=True)
class PreparedRun:
    """A checked request: the task every block shares, the plan and the ledger's key (the
    configuration key joined with the block grid, which gives the ledger's marks meaning)."""

    task: BlockTask
    plan: BlockPlan
    key: str
    output: Volume
    provenance: dict = field(default_factory=dict)


def default_chunk(output_shape: Triple) -> Triple:
    return (1, min(DEFAULT_CHUNK_YX, output_shape[1]), min(DEFAULT_CHUNK_YX, output_shape[2]))


def stored_objects(shape: Triple, unit: Triple) -> int:
    """How many chunk or shard objects a volume of `shape` stored in `unit` boxes makes."""
    return prod(-(-n // u) for n, u in zip(shape, unit))


def default_shard(output_shape: Triple, chunk: Triple) -> Triple | None:
    """The smallest shard of k × k × k chunks (k a power of 2, so precomputed's Morton order
    can hold it) that keeps the output within `MAX_STORED_OBJECTS`; None (unsharded) when
    single chunks already do. Capped at `MAX_SHARD_RATIO` chunks a side."""
    ratio = 1
    while (
        stored_objects(output_shape, tuple(c * ratio for c in chunk)) > MAX_STORED_OBJECTS  # type: ignore[arg-type]
        and ratio < MAX_SHARD_RATIO
    ):
        ratio *= 2
    return None if ratio == 1 else tuple(c * ratio for c in chunk)  # type: ignore[return-value]


@dataclass(frozen=True)
class OutputLayout:
    """The output's shape and how it is stored and cut: chunk, shard (None: unsharded), block."""

    shape: Triple
    chunk: Triple
    shard: Triple | None
    block: Triple

    @property
    def write_unit(self) -> Triple:
        return self.shard or self.chunk


def choose_layout(request: SuperResolveRequest, input_shape: Triple, scale: int) -> OutputLayout:
    """The request's chunk, shard and block, each defaulted from the output size if not given
    (a shard only when no chunk was given either: a chosen chunk is kept unsharded)."""
    z, y, x = input_shape
    shape = (z, y * scale, x * scale)
    chunk = request.chunk or default_chunk(shape)
    shard = request.shard or (None if request.chunk else default_shard(shape, chunk))
    block = request.block or default_block(shard or chunk, scale, request.tile)
    return OutputLayout(shape, chunk, shard, block)


def default_block(chunk: Triple, scale: int, tile: int) -> Triple:
    """Blocks whose LR footprint is two tiles wide: no tile straddles two blocks."""
    in_plane = [-(-2 * tile * scale // c) * c for c in chunk[1:]]
    return (max(chunk[0], DEFAULT_BLOCK_SECTIONS // chunk[0] * chunk[0]), *in_plane)  # type: ignore[return-value]


def check_scale(request: SuperResolveRequest, checkpoint: Checkpoint) -> int:
    if request.scale is not None and request.scale != checkpoint.scale:
        raise PlanError(
            f"the checkpoint super-resolves ×{checkpoint.scale}, not ×{request.scale}; "
            "use a checkpoint trained for that scale or drop --scale"
        )
    return checkpoint.scale


def output_attributes(request: SuperResolveRequest, provenance: dict, key: str) -> dict:
    """Provenance stored with the output: the configuration, its hash and the version."""
    return {
        "version": version("emsr-pipeline"),
        "configuration_hash": key,
        "checkpoint_dir": str(Path(request.checkpoint).resolve()),
        **provenance,
    }


def configuration_mismatch(request: SuperResolveRequest, stored: dict, configuration: dict) -> str:
    """One line naming what differs between an existing output's configuration and ours."""
    output = redact(request.output_url)
    before, now = stored.get("input_fingerprint"), configuration["input_fingerprint"]
    if stored.get("input") == configuration["input"] and before not in (None, now):
        return (
            f"the input {redact(request.input_url)} changed since {output} was computed from it "
            "(its metadata or sampled content differ): restore it, or pass --overwrite to "
            "recompute the whole output, or choose another output"
        )
    changed = [name for name, value in configuration.items() if stored.get(name) != value]
    return (
        f"{output} was written with another configuration ({', '.join(changed) or 'version'} "
        "differ); pass --overwrite to replace it or choose another output"
    )


def create_output(
    request: SuperResolveRequest, source: Volume, configuration: dict, layout: OutputLayout,
    attributes: dict,
) -> Volume:  # fmt: skip
    """Create the output (or reopen it) and refuse one written with another configuration.

    The output covers the input's field: same corner in the world, voxels 1/scale in y, x."""
    scale = configuration["scale"]
    output = create_volume(
        request.output_url,
        layout.shape,
        np.dtype(configuration["output_dtype"]),
        output_voxel_size(source, scale),
        layout.chunk,
        shard=layout.shard,
        origin_nm=source.info.origin_nm,
        attributes=attributes,
        overwrite=request.overwrite,
    )
    stored = output.read_attributes()
    if stored.get("configuration_hash") != attributes["configuration_hash"]:
        raise LedgerError(configuration_mismatch(request, stored, configuration))
    return output


def output_voxel_size(source: Volume, scale: int) -> Voxel:
    """In-plane SR: the input's voxel size over (1, scale, scale)."""
    return tuple(v / f for v, f in zip(source.info.voxel_size_nm, (1, scale, scale)))  # type: ignore[return-value]


def output_roi(request: SuperResolveRequest, source: Volume, scale: int) -> Box | None:
    """The ROI in output voxels: `--roi` as given, or `--roi-nm` (world nm, in the input's
    frame) widened to the output voxels that cover it."""
    if request.roi is not None and request.roi_nm is not None:
        raise PlanError("give --roi (output voxels) or --roi-nm (world nm), not both")
    if request.roi_nm is None:
        return request.roi
    roi = request.roi_nm.voxels(source.info.origin_nm, output_voxel_size(source, scale))
    if roi.empty:
        raise PlanError(f"--roi-nm {request.roi_nm} covers no output voxel")
    return roi


def run_configuration(
    request: SuperResolveRequest, source: Volume, checkpoint: Checkpoint, lattice: TileLattice,
    intensity: IntensityMapping,
) -> dict:  # fmt: skip
    """Everything that changes the output's values, and nothing that does not (blocks,
    chunks, batch size, workers): the configuration key is its hash, so a rerun that would
    compute other values is refused and one that would not may resume."""
    device = device_class(request.device)
    precision = (
        default_precision(intensity.output_dtype, device)
        if request.precision == "auto"
        else check_precision(request.precision)
    )
    return {
        "input": redact(request.input_url),
        "input_fingerprint": input_fingerprint(source),
        "checkpoint_sha256": checkpoint.sha256,
        "architecture": checkpoint.model.config.to_dict(),
        "scale": checkpoint.scale,
        "lattice": {"core": list(lattice.core), "halo": lattice.halo},
        "intensity": intensity.to_dict(),
        "output_dtype": intensity.output_dtype,
        "precision": precision,
        "device_class": device,
        "compute_empty": request.compute_empty,
        "numerics_version": NUMERICS_VERSION,
    }


def prepare(request: SuperResolveRequest) -> PreparedRun:
    """Validate the request, then create (or reopen) the output with its provenance."""
    request = replace(
        request, input_url=absolute_url(request.input_url),
        output_url=absolute_url(request.output_url),
    )  # fmt: skip
    refuse_overlap(
        {request.output_url: Location.of_volume(request.output_url)},
        {request.input_url: Location.of_volume(request.input_url),
         request.checkpoint: Location.of_path(confine(request.checkpoint))},
    )  # fmt: skip
    check_can_start(
        request.cluster, request.workers, request.threads_per_worker, request.device,
        request.slurm_config,
    )  # fmt: skip
    checkpoint = read_checkpoint(request.checkpoint)
    scale = check_scale(request, checkpoint)
    source = open_volume(request.input_url, voxel_size_nm=request.voxel_size)
    require_voxel_size(source.info)
    check_input(source.info)
    request = replace(request, roi=output_roi(request, source, scale), roi_nm=None)
    z, y, x = source.info.shape
    check_tiling(request.tile, request.halo or 0, checkpoint.model.config.window, (y, x))
    layout = choose_layout(request, (z, y, x), scale)
    chunk, block = layout.chunk, layout.block
    reading = parse_volume_url(request.input_url)
    with reported("read", request.input_url, reading):
        intensity = choose_intensity(source, request.normalization, checkpoint)
    halo = choose_halo(
        request.halo, checkpoint, request.tile,
        lambda tile: sample_sections(source.array, intensity, tile),
    )  # fmt: skip
    window = checkpoint.model.config.window
    lattice = TileLattice.for_section((y, x), request.tile, halo, window)
    plan = BlockPlan(
        Box.from_shape(layout.shape), block, layout.write_unit, request.roi,
        scale=scale, tile=lattice.core, halo=lattice.halo,
    )  # fmt: skip
    with reported("read", request.input_url, reading):
        configuration = run_configuration(request, source, checkpoint, lattice, intensity)
    key = configuration_hash(configuration)
    provenance = {**configuration, "block": list(block), "chunk": list(chunk),
                  "batch_size": request.batch_size}  # fmt: skip
    attributes = output_attributes(request, provenance, key)
    output = create_output(request, source, configuration, layout, attributes)
    task = BlockTask(
        input_url=request.input_url,
        output_url=request.output_url,
        checkpoint_dir=str(Path(request.checkpoint).resolve()),
        checkpoint_sha256=checkpoint.sha256,
        scale=scale,
        lattice=lattice,
        intensity=intensity,
        device=configuration["device_class"],
        batch_size=request.batch_size,
        precision=configuration["precision"],
        compute_empty=request.compute_empty,
    )
    ledger_key = configuration_hash({"configuration_hash": key, "block": list(block)})
    return PreparedRun(task, plan, ledger_key, output, attributes)


def super_resolve(
    request: SuperResolveRequest,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunReport:
    """plan → skip blocks already done → dispatch the rest → record each as it lands."""
    run = prepare(request)
    ledger = DoneLedger.open(request.output_url, run.key, run.plan.block_count)
    if run.plan.roi is None:
        total, skipped = run.plan.block_count, ledger.done_count
    else:
        total = sum(1 for _ in run.plan.indices())
        skipped = sum(ledger.is_done(block.index, block.part) for block in run.plan.blocks())
    if on_start:
        on_start(total, skipped)
    if skipped == total:
        return RunReport(blocks_total=total, blocks_skipped=skipped)
    with connect(
        request.cluster,
        request.workers,
        threads_per_worker=request.threads_per_worker,
        slurm_config=request.slurm_config,
    ) as client:
        dispatcher = Dispatcher(
            client, run.task, run.plan, ledger, retries=request.retries,
            max_failures=request.max_failures, block_timeout=request.block_timeout,
            worker_wait=request.worker_wait,
        )  # fmt: skip
        report = dispatcher.run(
            ledger.pending_blocks(run.plan.blocks()), total, skipped, on_progress
        )
    raise_for_failures(report)
    return report


def output_source(url: str) -> str:
    """The output as a Neuroglancer source string, for the last line of a run."""
    if "://" in url or "|" in url:
        return redact(url)
    source = parse_volume_url(url)
    return f"{source.format}://file://{source.kvstore['path'].rstrip('/')}"
