"""Zarr and OME-Zarr at the storage edge: which array a URL means, its voxel size, and the
metadata of the OME-Zarr 0.5 image we create (a group holding the single scale "0").

Zarr v3 keeps a group's attributes in `zarr.json` under `attributes`; v2 in `.zattrs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from pipeline.errors import VolumeError
from pipeline.urls import VolumeSource, redact
from pipeline.volume_spec import VolumeSpec
from pipeline.world import NM_PER_UNIT, Voxel

ARRAY_PATH = "0"
"""The full-resolution array inside the image groups we create."""
SCALES_TYPE = "none"
"""The multiscale's `type`, the method that made its lower scales: none, there is one scale."""


@dataclass(frozen=True)
class ZarrArray:
    """The array a Zarr URL names: its tensorstore spec, its voxel size, and the metadata
    document whose attributes hold our provenance (`zarr.json` or `.zattrs`)."""

    spec: dict
    voxel_size_nm: Voxel
    voxel_size_known: bool
    attributes_key: str
    origin_nm: Voxel = (0.0, 0.0, 0.0)


def zarr_array(source: VolumeSource, fmt: str, url: str) -> ZarrArray:
    """A group is read as OME-Zarr and its first dataset is the volume; a bare array has no
    voxel size of its own."""
    if fmt == "zarr3":
        metadata, _ = source.read_json("zarr.json")
        is_group, attributes = metadata["node_type"] == "group", metadata.get("attributes", {})
        key = "zarr.json"
    else:
        is_group = source.read_json(".zgroup")[0] is not None
        attributes = source.read_json(".zattrs")[0] or {}
        key = ".zattrs"
    if not is_group:
        return ZarrArray({"driver": fmt, "kvstore": source.kvstore}, (1.0, 1.0, 1.0), False, key)
    multiscales = attributes.get("ome", attributes).get("multiscales")
    if not multiscales:
        raise VolumeError(
            f"{redact(url)} is a Zarr group without OME-Zarr multiscales: give the "
            "URL of the array inside it"
        )
    dataset = multiscales[0]["datasets"][0]
    voxel_size, centre = _ome_geometry(multiscales[0], dataset, url)
    origin = tuple(c - v / 2 for c, v in zip(centre, voxel_size, strict=True))
    spec = {"driver": fmt, "kvstore": source.child(dataset["path"])}
    return ZarrArray(spec, voxel_size, True, key, origin)


def _ome_geometry(multiscale: dict, dataset: dict, url: str) -> tuple[Voxel, Voxel]:
    """The dataset's (z, y, x) voxel size and the centre of its voxel 0, in nm: the dataset's
    transformations, then the multiscale-wide ones, applied in order, times the axes' units."""
    axes = [
        axis if isinstance(axis, dict) else {"name": axis}  # OME 0.3 names axes by string
        for axis in multiscale.get("axes") or "zyx"
    ]
    scale, translation = np.ones(len(axes)), np.zeros(len(axes))
    for transform in [
        *dataset.get("coordinateTransformations", []),
        *multiscale.get("coordinateTransformations", []),
    ]:
        if transform["type"] == "scale":
            factors = np.asarray(transform["scale"], dtype=float)
            scale, translation = scale * factors, translation * factors
        elif transform["type"] == "translation":
            translation = translation + np.asarray(transform["translation"], dtype=float)
    space = [
        i
        for i, axis in enumerate(axes)
        if axis.get("type", "space" if axis["name"] in ("z", "y", "x") else None) == "space"
    ]
    units = [axes[i].get("unit") for i in space]
    if len(space) != 3 or not all(unit is None or unit in NM_PER_UNIT for unit in units):
        raise VolumeError(
            f"{redact(url)}: OME-Zarr axes {axes} are not 3 spatial axes in "
            f"known units ({', '.join(NM_PER_UNIT)})"
        )
    nm = [(i, NM_PER_UNIT.get(u, 1.0)) for i, u in zip(space, units, strict=True)]  # none: nm
    return (
        tuple(float(scale[i]) * f for i, f in nm),
        tuple(float(translation[i]) * f for i, f in nm),
    )


def zarr3_metadata(spec: VolumeSpec) -> dict:
    """The `zarr.json` of the array: blosc-zstd chunks, inside shards when asked."""
    little_endian = {"name": "bytes", "configuration": {"endian": "little"}}
    codecs: list[dict] = [
        little_endian,
        {
            "name": "blosc",
            "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"},
        },
    ]
    if spec.shard:
        codecs = [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": spec.chunk,
                    "codecs": codecs,
                    "index_codecs": [little_endian, {"name": "crc32c"}],
                },
            }
        ]
    grid = {"name": "regular", "configuration": {"chunk_shape": spec.shard or spec.chunk}}
    return {
        "shape": spec.shape,
        "data_type": spec.dtype.name,
        "chunk_grid": grid,
        "codecs": codecs,
        "fill_value": 0,
        "dimension_names": ["z", "y", "x"],
    }


def image_group(spec: VolumeSpec, name: str, attributes: dict) -> dict:
    """An OME-Zarr 0.5 image group whose single scale is the array `ARRAY_PATH`, placed so
    that voxel 0's corner is at `spec.origin_nm` (OME translations name voxel centres).

    The multiscale carries the spec's recommended `name` (viewers show it as the layer's
    name), `type` and `metadata` (how the scales were made: here one scale, no downsampling)."""
    centre = [o + v / 2 for o, v in zip(spec.origin_nm, spec.voxel_size_nm, strict=True)]
    transforms = [
        {"type": "scale", "scale": list(spec.voxel_size_nm)},
        {"type": "translation", "translation": centre},
    ]
    multiscale = {
        "name": name,
        "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in "zyx"],
        "datasets": [{"path": ARRAY_PATH, "coordinateTransformations": transforms}],
        "type": SCALES_TYPE,
        "metadata": {
            "description": "a single scale, as written by EMSR",
            "method": "emsr",
            "version": version("emsr-pipeline"),
        },
    }
    ome = {"version": "0.5", "multiscales": [multiscale]}
    return {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"ome": ome, "emsr": attributes},
    }
