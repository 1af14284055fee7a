"""N5 input at the storage edge: a dataset's voxel size and origin from its attributes.

N5 lists dimensions fastest first, (x, y, z), and tensorstore keeps that order; the voxel size
comes from the two common conventions: `pixelResolution` (n5-viewer, BigDataViewer) or
`resolution` with optional `units` (and funlib's `offset`, the world corner), both (x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import VolumeError
from pipeline.urls import VolumeSource, redact
from pipeline.world import NM_PER_UNIT, Voxel

ATTRIBUTES = "attributes.json"


@dataclass(frozen=True)
class N5Dataset:
    """The tensorstore spec of an N5 dataset, its (z, y, x) voxel size and corner in nm."""

    spec: dict
    voxel_size_nm: Voxel
    voxel_size_known: bool
    origin_nm: Voxel


def n5_dataset(source: VolumeSource, url: str) -> N5Dataset:
    attributes = source.read_json(ATTRIBUTES)[0] or {}
    if "dimensions" not in attributes:
        raise VolumeError(
            f"{redact(url)} is an N5 group, not a dataset: give the URL of the dataset inside "
            "it (e.g. …/s0)"
        )
    spec = {"driver": "n5", "kvstore": source.kvstore}
    xyz, units = _resolution(attributes, url)
    if xyz is None:
        return N5Dataset(spec, (1.0, 1.0, 1.0), False, (0.0, 0.0, 0.0))
    voxel = tuple(float(v) * NM_PER_UNIT[u] for v, u in zip(xyz, units, strict=True))[::-1]
    offset = attributes.get("offset", [0.0, 0.0, 0.0])
    origin = tuple(float(o) * NM_PER_UNIT[u] for o, u in zip(offset, units, strict=True))[::-1]
    return N5Dataset(spec, voxel, True, origin)  # type: ignore[arg-type]


def _resolution(attributes: dict, url: str) -> tuple[list | None, list[str]]:
    """The (x, y, z) voxel size and its units as stored, or (None, …) if none is recorded."""
    if isinstance(attributes.get("pixelResolution"), dict):
        pixel = attributes["pixelResolution"]
        values, units = pixel.get("dimensions"), [pixel.get("unit", "nm")] * 3
    else:
        values, units = attributes.get("resolution"), attributes.get("units", ["nm"] * 3)
    if values is None:
        return None, units
    if len(values) != 3 or len(units) != 3 or not all(u in NM_PER_UNIT for u in units):
        raise VolumeError(
            f"{redact(url)}: N5 resolution {values} in {units} is not 3 spatial axes in known "
            f"units ({', '.join(NM_PER_UNIT)})"
        )
    return values, units
