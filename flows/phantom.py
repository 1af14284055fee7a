"""`emsr phantom`: EM-like volumes with known clean truth, written as OME-Zarr v3."""

from __future__ import annotations

from pathlib import Path

from emsr.phantom import PhantomSpec, make_phantom
from pipeline.errors import VolumeError
from pipeline.volumes import write_array

PHANTOM_NAMES = ("hr_clean", "hr", "hr2", "lr")


def phantom_paths(out_dir: Path) -> list[Path]:
    return [Path(out_dir) / f"{name}.zarr" for name in PHANTOM_NAMES]


def write_phantom(
    out_dir: Path,
    shape: tuple[int, int, int],
    scale: int = 2,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write OUT_DIR/{hr_clean,hr,hr2,lr}.zarr (truth, two noisy HR scans, noisy LR).

    Stores already there are replaced only with `overwrite` (a user's real `lr.zarr` may sit
    in OUT_DIR); nothing else in OUT_DIR is touched either way.
    """
    paths = phantom_paths(out_dir)
    existing = [path.name for path in paths if path.exists()]
    if existing and not overwrite:
        raise VolumeError(
            f"{out_dir} already holds {', '.join(existing)}: pass --overwrite to replace "
            "them or choose another folder"
        )
    volumes = make_phantom(PhantomSpec(shape=shape, scale=scale, seed=seed))
    for name, path in zip(PHANTOM_NAMES, paths, strict=True):
        voxel = volumes.lr_voxel_nm if name == "lr" else volumes.hr_voxel_nm
        write_array(str(path), getattr(volumes, name), voxel, overwrite=overwrite)
    return paths
