"""`emsr phantom`: EM-like volumes with known clean truth, written as OME-Zarr v3."""

from __future__ import annotations

from pathlib import Path

from emsr.phantom import PhantomSpec, make_phantom
from pipeline.volumes import write_array

PHANTOM_NAMES = ("hr_clean", "hr", "hr2", "lr")


def write_phantom(
    out_dir: Path, shape: tuple[int, int, int], scale: int = 2, seed: int = 0
) -> list[Path]:
    """Write OUT_DIR/{hr_clean,hr,hr2,lr}.zarr (truth, two noisy HR scans, noisy LR)."""
    volumes = make_phantom(PhantomSpec(shape=shape, scale=scale, seed=seed))
    written = []
    for name in PHANTOM_NAMES:
        path = Path(out_dir) / f"{name}.zarr"
        voxel = volumes.lr_voxel_nm if name == "lr" else volumes.hr_voxel_nm
        write_array(str(path), getattr(volumes, name), voxel, overwrite=True)
        written.append(path)
    return written
