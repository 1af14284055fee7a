"""Storage defaults and the dry-run plan: a petavoxel output stays within 10⁷ stored objects,
and `emsr plan` writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.estimate import estimate_run
from pipeline.superresolve import MAX_STORED_OBJECTS, SuperResolveRequest, stored_objects
from pipeline.volumes import create_volume, open_volume

EMSR = str(Path(sys.executable).with_name("emsr"))
# LR 4000 × 250,000² at ×2: 10¹⁵ output voxels. Only metadata is written: no chunk exists.
PETAVOXEL_LR = (4000, 250_000, 250_000)


@pytest.fixture(scope="module")
def petavoxel_input(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("peta") / "lr.zarr")
    create_volume(url, PETAVOXEL_LR, "uint8", (40.0, 8.0, 8.0), (1, 512, 512))
    return url


def test_default_sharding_keeps_a_petavoxel_output_within_ten_million_objects(
    petavoxel_input, tmp_path
) -> None:
    request = SuperResolveRequest(
        input_url=petavoxel_input, output_url=str(tmp_path / "sr.zarr"), checkpoint="", scale=2
    )
    plan = estimate_run(request)
    assert plan.output_shape == (4000, 500_000, 500_000)
    assert plan.chunk == (1, 512, 512) and plan.shard == (8, 4096, 4096)
    assert plan.stored_objects <= MAX_STORED_OBJECTS
    assert plan.stored_objects == 500 * 123 * 123 + -(-plan.blocks // 65536)
    assert plan.block[0] % 8 == 0 and plan.block[1] % 4096 == 0  # blocks write whole shards
    unsharded = stored_objects(plan.output_shape, plan.chunk)
    assert unsharded > 3.7e9  # what single chunks would make: ~4 × 10⁹ files

    # A chunk given by the user is kept unsharded; small outputs stay unsharded too.
    chosen = estimate_run(SuperResolveRequest(**{**request.__dict__, "chunk": (1, 512, 512)}))
    assert chosen.shard is None and chosen.stored_objects > 3.7e9


def test_the_default_shard_is_one_precomputed_can_store(tmp_path) -> None:
    """The shard is k × k × k chunks, which precomputed's Morton-ordered shards can hold."""
    url = f"precomputed://file://{tmp_path}/sr"
    volume = create_volume(
        url, (4000, 500_000, 500_000), "uint8", (40.0, 4.0, 4.0), (1, 512, 512),
        shard=(8, 4096, 4096),
    )  # fmt: skip
    assert volume.info.chunk == (8, 4096, 4096) and volume.info.read_chunk == (1, 512, 512)


def test_small_outputs_stay_unsharded(lr_url, checkpoint_dir, tmp_path) -> None:
    request = SuperResolveRequest(
        input_url=lr_url, output_url=str(tmp_path / "sr.zarr"), checkpoint=str(checkpoint_dir)
    )
    plan = estimate_run(request, lr_px_per_s=1000.0)
    assert plan.shard is None and plan.output_shape == (6, 128, 160)
    assert plan.gpu_hours == pytest.approx(plan.lr_pixels_computed / 1000 / 3600)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_plan_command_prints_the_table_and_writes_nothing(
    prefect_server, phantom, checkpoint_dir, tmp_path
) -> None:
    from pipeline.volumes import write_array

    lr = str(tmp_path / "in" / "lr.zarr")
    write_array(lr, phantom.lr, phantom.lr_voxel_nm)
    before = listing(tmp_path)
    output = tmp_path / "out" / "sr.zarr"
    result = subprocess.run(
        [EMSR, "plan", lr, str(output), "--checkpoint", str(checkpoint_dir), "--measure",
         "--device", "cpu"],
        capture_output=True, text=True, env=prefect_server.environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for quantity in ("blocks", "storage objects", "memory per worker", "GPU-hours"):
        assert quantity in result.stdout
    assert "measured here" in result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith("nothing was written")
    assert listing(tmp_path) == before and not output.parent.exists()
    assert open_volume(lr).info.shape == phantom.lr.shape
