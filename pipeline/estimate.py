"""A dry run of super-resolve: what a run would cut, write and cost, without writing anything.

It reads the input's metadata (and the checkpoint, when given) and applies the run's own
defaults (`choose_layout`), so the numbers are those of the run the same options would
start: blocks, stored objects, bytes written, buffer memory per worker and GPU-hours at a
given or measured LR pixel rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import prod

import numpy as np

from emsr.checkpoint import read_checkpoint
from emsr.errors import DataError
from emsr.inference import Predictor
from pipeline.block import slab_sections
from pipeline.geometry import Box, Triple
from pipeline.ledger import LEDGER_CHUNK
from pipeline.plan import BlockPlan
from pipeline.seams import DEFAULT_HALO
from pipeline.superresolve import SuperResolveRequest, choose_layout, stored_objects
from pipeline.tiles import TileLattice
from pipeline.urls import absolute_url, parse_volume_url, redact
from pipeline.volumes import open_volume

FLOAT_BYTES = 4
MEASURE_SECONDS = 3.0  # how long the rate measurement runs the model, at least


@dataclass(frozen=True)
class RunEstimate:
    """The numbers of one planned run; `rows()` lays them out as one table."""

    input_url: str
    output_url: str
    output_format: str
    scale: int
    output_shape: Triple
    chunk: Triple
    shard: Triple | None
    block: Triple
    blocks: int
    stored_objects: int
    bytes_written: int
    worker_memory_bytes: int
    lr_pixels_computed: int
    lr_px_per_s: float | None
    rate_source: str

    @property
    def gpu_hours(self) -> float | None:
        if not self.lr_px_per_s:
            return None
        return self.lr_pixels_computed / self.lr_px_per_s / 3600

    def rows(self) -> list[tuple[str, str]]:
        def shown(value: Triple | None) -> str:
            return "unsharded" if value is None else ",".join(map(str, value))

        hours = self.gpu_hours
        return [
            ("input", self.input_url),
            ("output", f"{self.output_url} ({self.output_format}, level 0)"),
            ("scale", f"×{self.scale} in y and x"),
            ("output shape (z, y, x)", shown(self.output_shape)),
            ("voxels written", f"{prod(self.output_shape):.3e}"),
            ("chunk", shown(self.chunk)),
            ("shard", shown(self.shard)),
            ("block", shown(self.block)),
            ("blocks", f"{self.blocks:,}"),
            ("storage objects", f"{self.stored_objects:,}"),
            ("bytes written (uncompressed)", f"{self.bytes_written:.3e}"),
            ("memory per worker (buffers)", f"{self.worker_memory_bytes / 2**30:.2f} GiB"),
            ("LR pixels computed (with halos)", f"{self.lr_pixels_computed:.3e}"),
            ("LR px/s per GPU", "n/a" if not self.lr_px_per_s else
             f"{self.lr_px_per_s:,.0f} ({self.rate_source})"),
            ("GPU-hours", "n/a (give --lr-px-per-s or --checkpoint)" if hours is None else
             f"{hours:,.1f}"),
        ]  # fmt: skip


def worker_memory(block: Triple, sections: int, scale: int, halo: int, itemsize: int) -> int:
    """Bytes of data one worker holds for a block slab of `sections`: the LR read (and the
    next one in flight) as stored and as float32 tiles, the float32 SR result, and the
    stored result plus the previous slab's write in flight. Model activations come on top
    (they scale with the batch, not the block; see BENCHMARKS.md)."""
    lr = sections * (block[1] // scale + 2 * halo) * (block[2] // scale + 2 * halo)
    sr = sections * block[1] * block[2]
    return lr * (2 * itemsize + 2 * FLOAT_BYTES) + sr * (FLOAT_BYTES + 2 * itemsize)


def measured_rate(checkpoint_dir: str, lattice: TileLattice, device: str, batch: int) -> float:
    """LR px/s of the checkpoint's model on this machine's device, on full batches of tiles."""
    checkpoint = read_checkpoint(checkpoint_dir)
    predictor = Predictor(checkpoint.model, device=device, batch_size=batch)
    tiles = np.random.default_rng(0).random((batch, *lattice.input_shape), dtype=np.float32)
    predictor(tiles)  # warm-up: first-call allocations and kernel selection
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < MEASURE_SECONDS:
        predictor(tiles)
        calls += 1
    return calls * tiles.size / (time.perf_counter() - started)


def estimate_run(
    request: SuperResolveRequest, lr_px_per_s: float | None = None, measure: bool = False
) -> RunEstimate:
    """The plan of `request` (its `checkpoint` may be empty when `scale` is given)."""
    source = open_volume(absolute_url(request.input_url))
    output_format = parse_volume_url(request.output_url).format
    checkpoint = read_checkpoint(request.checkpoint) if request.checkpoint else None
    scale = checkpoint.scale if checkpoint else request.scale
    if scale is None:
        raise DataError("give --checkpoint or --scale: the plan needs the SR scale")
    window = checkpoint.model.config.window if checkpoint else 4
    info = source.info
    layout = choose_layout(request, info.shape, scale)
    halo = DEFAULT_HALO if request.halo is None else request.halo  # a run may raise it
    lattice = TileLattice.for_section(info.shape[1:], request.tile, halo, window)  # type: ignore[arg-type]
    plan = BlockPlan(
        Box.from_shape(layout.shape), layout.block, layout.write_unit, request.roi,
        scale=scale, tile=lattice.core, halo=lattice.halo,
    )  # fmt: skip
    region = plan.written_region
    blocks = plan.block_count if request.roi is None else sum(1 for _ in plan.indices())
    rows, columns = lattice.index_range(Box.from_shape(layout.block).in_plane_footprint(scale))
    sections = slab_sections(len(rows) * len(columns), layout.chunk[0], request.batch_size)
    memory = worker_memory(
        layout.block, min(sections, layout.block[0]), scale, lattice.halo, info.dtype.itemsize
    )
    if measure and lr_px_per_s is None:
        if checkpoint is None:
            raise DataError("measuring the LR px/s needs --checkpoint")
        lr_px_per_s = measured_rate(request.checkpoint, lattice, request.device, request.batch_size)
    written = stored_objects(region.shape, layout.write_unit)
    ledger = -(-plan.block_count // LEDGER_CHUNK)
    return RunEstimate(
        input_url=redact(request.input_url), output_url=redact(request.output_url),
        output_format=output_format, scale=scale, output_shape=layout.shape,
        chunk=layout.chunk, shard=layout.shard, block=layout.block, blocks=blocks,
        stored_objects=written + ledger, bytes_written=region.size * info.dtype.itemsize,
        worker_memory_bytes=memory,
        lr_pixels_computed=lattice.computed_pixels(region.in_plane_footprint(scale)),
        lr_px_per_s=lr_px_per_s,
        rate_source="measured here" if measure else "given",
    )  # fmt: skip
