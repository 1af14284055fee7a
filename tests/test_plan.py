"""Geometry, block plans and the tile lattice."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.block import slab_sections
from pipeline.errors import PlanError
from pipeline.geometry import Box, parse_triple
from pipeline.plan import BlockPlan
from pipeline.tiles import TileLattice, cut_tiles, stitch_cores

READS = {"scale": 2, "tile": (32, 32), "halo": 4}


def test_roi_syntax_round_trips_and_bad_text_is_one_error():
    assert str(Box.parse("0:4,10:20,5:9")) == "0:4,10:20,5:9"
    for text in ("0:4,10:20", "a:b,1:2,3:4", "4:0,0:1,0:1"):
        with pytest.raises(PlanError, match="--roi"):
            Box.parse(text)
    with pytest.raises(PlanError, match="--block must be three positive integers"):
        parse_triple("8,0,8", "--block")


def test_in_plane_footprint_covers_every_hr_pixel():
    assert Box((2, 5, 6), (4, 11, 12)).in_plane_footprint(3) == Box((2, 1, 2), (4, 4, 4))


def test_box_arithmetic_grows_snaps_and_scales():
    box = Box((1, 5, 6), (3, 11, 17))
    assert box.grow((0, 2, 3)) == Box((1, 3, 3), (3, 13, 20))
    assert box.snap_out((2, 4, 8)) == Box((0, 4, 0), (4, 12, 24))
    assert box.snap_out((1, 4, 4), origin=(0, 1, 2)) == Box((1, 5, 6), (3, 13, 18))
    assert box.scale_up((1, 2, 2)) == Box((1, 10, 12), (3, 22, 34))
    assert box.scale_up((1, 2, 2)).scale_down((1, 2, 2)) == box
    assert box.relative_to((1, 5, 6)) == Box.from_shape(box.shape)


def test_planned_block_carries_its_lr_read_box_and_hr_write_box():
    plan = BlockPlan(
        Box.from_shape((4, 200, 128)), (2, 64, 64), (1, 32, 32), scale=2, tile=(16, 24), halo=4
    )
    block = plan.planned(3 * 2 + 1)  # z 0, y 3 (the edge: 192:200), x 1
    assert block.write == Box((0, 192, 64), (2, 200, 128)) and block.whole
    # LR footprint 96:100, 32:64 → whole tile cores 96:112, 24:72 → plus the halo.
    assert block.read == Box((0, 92, 20), (2, 116, 76))


def test_blocks_tile_the_volume_and_are_clipped_at_its_edge():
    plan = BlockPlan(Box.from_shape((5, 100, 70)), (2, 64, 64), (1, 32, 32), **READS)
    assert plan.grid == (3, 2, 2) and plan.block_count == 12
    covered = np.zeros((5, 100, 70), int)
    for block in plan.blocks():
        covered[block.write.slices()] += 1
    assert (covered == 1).all()
    assert plan.planned(11).write == Box((4, 64, 64), (5, 100, 70))


def test_misaligned_blocks_are_refused_naming_aligned_sizes():
    with pytest.raises(PlanError, match="use 8,256,256 or 8,512,512"):
        BlockPlan(Box.from_shape((8, 1024, 1024)), (8, 300, 300), (1, 256, 256), **READS)


def test_roi_selects_the_blocks_it_meets_and_writes_only_their_chunks_it_meets():
    plan = BlockPlan(
        Box.from_shape((4, 128, 128)), (2, 64, 64), (1, 32, 32), Box((0, 70, 0), (2, 80, 64)),
        **READS,
    )  # fmt: skip
    assert list(plan.indices()) == [2]
    block = plan.planned(2)
    assert plan.full_box(2) == Box((0, 64, 0), (2, 128, 64))
    assert block.write == Box((0, 64, 0), (2, 96, 64)) and not block.whole
    assert block.read == Box((0, 28, -4), (2, 68, 36))  # LR 32:48, 0:32 → tiles, + halo


def test_roi_outside_the_volume_is_refused():
    with pytest.raises(PlanError, match="outside the output volume"):
        BlockPlan(Box.from_shape((4, 64, 64)), (2, 64, 64), (1, 32, 32), Box((0, 0, 0), (5, 8, 8)),
                  **READS)  # fmt: skip


def test_plan_of_a_million_blocks_is_lazy():
    plan = BlockPlan(
        Box.from_shape((1000, 100_000, 100_000)), (1, 10_000, 1_000), (1, 1000, 1000), **READS
    )
    assert plan.block_count == 1_000_000
    assert plan.planned(999_999).write == Box((999, 90_000, 99_000), (1000, 100_000, 100_000))


def test_lattice_shrinks_to_small_sections_and_keeps_window_alignment():
    lattice = TileLattice.for_section((30, 500), tile=128, halo=10)
    assert lattice.core == (32, 128) and lattice.halo == 12
    with pytest.raises(PlanError, match="multiples of the 4-pixel"):
        TileLattice((30, 32), 8)


def test_cut_and_stitch_invert_each_other_with_identity_model():
    lattice = TileLattice((8, 12), 4)
    cover = Box((0, 0, 0), (2, 16, 24))
    region = np.random.default_rng(0).random((2, 16 + 8, 24 + 8)).astype(np.float32)
    tiles = cut_tiles(region, lattice)
    assert tiles.shape == (2 * 2 * 2, 16, 20)
    upscaled = tiles.repeat(2, axis=1).repeat(2, axis=2)
    stitched = stitch_cores(upscaled, lattice, cover.shape, scale=2)
    assert np.array_equal(stitched, region[:, 4:-4, 4:-4].repeat(2, axis=1).repeat(2, axis=2))


@pytest.mark.parametrize(
    ("tiles_per_section", "chunk_sections", "batch", "sections"),
    [(4, 1, 4, 1), (1, 1, 4, 4), (3, 1, 4, 4), (6, 1, 4, 2), (1, 2, 4, 4), (5, 1, 1, 1)],
)
def test_slabs_hold_whole_batches_of_tiles(tiles_per_section, chunk_sections, batch, sections):
    depth = slab_sections(tiles_per_section, chunk_sections, batch)
    assert depth == sections
    assert depth % chunk_sections == 0 and tiles_per_section * depth % batch == 0
