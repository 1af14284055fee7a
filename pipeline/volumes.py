"""Volumes at the storage edge: open, create, read and write (z, y, x) arrays via tensorstore.

The rest of the pipeline sees a `Volume` indexed 0-based in (z, y, x) and its `VolumeInfo`.
On-disk conventions stay in this file: precomputed's (x, y, z, channel) order and global
`voxel_offset`, OME-Zarr's group-plus-array layout and its units.

A box is `tuple[slice, slice, slice]` of 0-based (z, y, x) half-open ranges (`None` = edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import tensorstore as ts

from pipeline.errors import VolumeError
from pipeline.urls import VolumeSource, parse_volume_url, redact, reported

Box = tuple[slice, slice, slice]
Triple = tuple[int, int, int]
Voxel = tuple[float, float, float]

ALLOWED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
_NM_PER_UNIT = MappingProxyType(
    {
        None: 1.0,
        "nanometer": 1.0,
        "angstrom": 0.1,
        "picometer": 1e-3,
        "micrometer": 1e3,
        "millimeter": 1e6,
        "meter": 1e9,
    }
)
_UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class VolumeInfo:
    """What the pipeline needs to know about a volume, all in (z, y, x).

    `chunk` is the write unit (the shard when sharded): parallel writers must own whole ones.
    `read_chunk` is the smallest unit a read fetches. `offset` is precomputed's `voxel_offset`
    (reads and writes stay 0-based). `url` is redacted, so it is safe to log and record.
    """

    url: str
    shape: Triple
    dtype: np.dtype
    voxel_size_nm: Voxel
    offset: Triple
    chunk: Triple
    read_chunk: Triple
    format: str
    voxel_size_known: bool = True


@dataclass(frozen=True)
class _AttributeDoc:
    """The JSON document holding our `emsr` provenance key (in its `attributes` for zarr3)."""

    source: VolumeSource
    key: str
    under_attributes: bool = False

    def parent(self, document: dict) -> dict:
        return document.setdefault("attributes", {}) if self.under_attributes else document


class Volume:
    """An opened volume. Picklable (tensorstore serialises its spec), so Dask can ship it."""

    def __init__(self, store: ts.TensorStore, info: VolumeInfo, attributes: _AttributeDoc):
        self._store = store
        self._attributes = attributes
        self.info = info

    @property
    def array(self) -> ts.TensorStore:
        """The volume as a lazy (z, y, x) array: slicing is free, `numpy.asarray` reads."""
        return self._store

    def read_async(self, box: Box) -> ts.Future:
        """Start reading `box`; the future yields a C-ordered (z, y, x) ndarray."""
        return self._store[self._inside(box)].read(order="C")

    def read(self, box: Box) -> np.ndarray:
        return self.read_async(box).result()

    def write_async(self, box: Box, array: np.ndarray) -> ts.WriteFutures:
        """Start writing whole write chunks; `.commit` resolves once the data is durable.

        A box that cuts a chunk is refused: two tasks sharing a chunk (or shard) would
        overwrite each other's data silently.
        """
        box = self._inside(box)
        parts = zip(box, self.info.chunk, self.info.shape, strict=True)
        for axis, (part, unit, size) in enumerate(parts):
            if part.start % unit or (part.stop % unit and part.stop != size):
                raise VolumeError(
                    f"write of {_show(box)} to {self.info.url} cuts its write chunks "
                    f"{self.info.chunk} along {'zyx'[axis]}: start at multiples of the chunk and "
                    "end at multiples or at the volume's edge"
                )
        return self._store[box].write(array)

    def write(self, box: Box, array: np.ndarray) -> None:
        """Write and return once the data is durably stored."""
        self.write_async(box, array).commit.result()

    def read_attributes(self) -> dict:
        """Our provenance metadata (the `emsr` key) stored with the volume."""
        document, _ = self._attributes.source.read_json(self._attributes.key)
        return self._attributes.parent(document or {}).get("emsr", {})

    def update_attributes(self, changes: dict) -> dict:
        """Merge `changes` into the provenance metadata; a concurrent update is retried."""
        doc = self._attributes
        for _ in range(_UPDATE_ATTEMPTS):
            document, generation = doc.source.read_json(doc.key)
            document = document or {}
            parent = doc.parent(document)
            merged = parent["emsr"] = {**parent.get("emsr", {}), **changes}
            if doc.source.write_json(doc.key, document, if_equal=generation):
                return merged
        raise VolumeError(f"metadata of {self.info.url} kept changing under us: retry")

    def _inside(self, box: Box) -> Box:
        """`box` with its `None`s filled in; a VolumeError unless it lies inside the volume."""
        if len(box) != 3 or not all(isinstance(p, slice) and p.step in (None, 1) for p in box):
            raise VolumeError(f"a box is 3 slices (z, y, x) with step 1, not {box!r}")
        shape = self.info.shape
        box = tuple(
            slice(p.start or 0, n if p.stop is None else p.stop)
            for p, n in zip(box, shape, strict=True)
        )
        if not all(0 <= p.start < p.stop <= n for p, n in zip(box, shape, strict=True)):
            raise VolumeError(f"box {_show(box)} is outside {self.info.url} (shape {shape})")
        return box


def open_volume(url: str) -> Volume:
    """Open an existing volume for reading and (where the store allows) writing."""
    source = parse_volume_url(url)
    with reported("open", url, source):
        return _open(source, url)


def create_volume(
    url: str,
    shape: Triple,
    dtype: np.dtype | str,
    voxel_size_nm: Voxel,
    chunk: Triple,
    *,
    shard: Triple | None = None,
    attributes: dict | None = None,
    overwrite: bool = False,
) -> Volume:
    """Create an empty volume, or reopen an existing one that matches exactly.

    `chunk` is the storage chunk, the unit a reader fetches. `shard`, a multiple of `chunk`,
    bundles chunks into one stored object and then is the write unit (`info.chunk`).
    `attributes` (provenance) is stored under `emsr` when the volume is created.
    """
    source = parse_volume_url(url)
    spec = _NewVolume.checked(shape, dtype, voxel_size_nm, chunk, shard)
    if source.format == "zarr":
        raise VolumeError(f"cannot create Zarr v2 at {redact(url)}: use zarr3:// or a .zarr path")
    with reported("read", url, source):
        existing = source.stored_format()
    if existing and not overwrite:
        return _matching(open_volume(url), spec.expected(source.format))
    with reported("create", url, source, hint=": choose a writable output location"):
        if existing:
            source.delete_everything()
        if source.format == "precomputed":
            _write_if_absent(source, "info", spec.precomputed_info(attributes or {}))
        else:  # the array first: if the location is unwritable, nothing is left behind
            ts.open(
                {
                    "driver": "zarr3",
                    "kvstore": source.child("0"),
                    "metadata": spec.zarr3_metadata(),
                },
                create=True,
                open=True,  # the same array, created by a run that started with this one
            ).result()
            _write_if_absent(source, "zarr.json", spec.ome_group(attributes or {}))
    return _matching(open_volume(url), spec.expected(source.format))


def _write_if_absent(source: VolumeSource, key: str, document: dict) -> None:
    """Write a metadata document unless one exists, atomically: of two runs creating the
    same output at once, the first one's document (and provenance) is the one kept."""
    current, generation = source.read_json(key)
    if current is None:
        source.write_json(key, document, if_equal=generation)


def write_array(
    url: str,
    array: np.ndarray,
    voxel_size_nm: Voxel,
    chunk: Triple | None = None,
    *,
    overwrite: bool = False,
) -> Volume:
    """Store a whole (z, y, x) array as a volume in one go (phantoms, training pairs, tests).

    The default chunk is one section of up to 256 × 256: EMSR works section by section
    (in-plane SR), so a z-chunk of 1 lets each reader fetch exactly the sections it needs.
    """
    chunk = chunk or tuple(min(c, n) for c, n in zip((1, 256, 256), array.shape, strict=False))
    volume = create_volume(url, array.shape, array.dtype, voxel_size_nm, chunk, overwrite=overwrite)
    volume.write((slice(None),) * 3, array)
    return volume


@dataclass(frozen=True)
class _NewVolume:
    """A validated creation request, and the metadata documents that describe it."""

    shape: Triple
    dtype: np.dtype
    voxel_size_nm: Voxel
    chunk: Triple
    shard: Triple | None

    @classmethod
    def checked(cls, shape, dtype, voxel_size_nm, chunk, shard) -> _NewVolume:
        dtype = np.dtype(dtype)
        if dtype not in ALLOWED_DTYPES:
            raise VolumeError(f"dtype {dtype} is not supported: use uint8, uint16 or float32")
        for name, values in (
            ("shape", shape),
            ("chunk", chunk),
            ("shard", shard or chunk),
            ("voxel size (nm)", voxel_size_nm),
        ):
            if len(values) != 3 or min(values) <= 0:
                raise VolumeError(f"{name} must be 3 positive (z, y, x) numbers, not {values}")
        if shard and any(s % c for s, c in zip(shard, chunk, strict=True)):
            raise VolumeError(f"shard {tuple(shard)} must be a multiple of chunk {tuple(chunk)}")
        return cls(
            _ints(shape),
            dtype,
            tuple(map(float, voxel_size_nm)),
            _ints(chunk),
            _ints(shard) if shard else None,
        )

    def expected(self, fmt: str) -> tuple:
        """(format, shape, dtype, voxel size, write chunk, read chunk) once created."""
        write_chunk = self.shard or self.chunk
        if fmt == "precomputed" and self.shard:
            write_chunk = _precomputed_sharding(self.shape, self.chunk, self.shard)[1]
        return fmt, self.shape, self.dtype, self.voxel_size_nm, write_chunk, self.chunk

    def zarr3_metadata(self) -> dict:
        little_endian = {"name": "bytes", "configuration": {"endian": "little"}}
        codecs = [
            little_endian,
            {
                "name": "blosc",
                "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"},
            },
        ]
        if self.shard:
            codecs = [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": self.chunk,
                        "codecs": codecs,
                        "index_codecs": [little_endian, {"name": "crc32c"}],
                    },
                }
            ]
        grid = {"name": "regular", "configuration": {"chunk_shape": self.shard or self.chunk}}
        return {
            "shape": self.shape,
            "data_type": self.dtype.name,
            "chunk_grid": grid,
            "codecs": codecs,
            "fill_value": 0,
            "dimension_names": ["z", "y", "x"],
        }

    def ome_group(self, attributes: dict) -> dict:
        """An OME-Zarr 0.5 image group whose single scale is the array "0"."""
        scale = {"type": "scale", "scale": list(self.voxel_size_nm)}
        multiscale = {
            "axes": [{"name": name, "type": "space", "unit": "nanometer"} for name in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [scale]}],
        }
        ome = {"version": "0.5", "multiscales": [multiscale]}
        return {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": ome, "emsr": attributes},
        }

    def precomputed_info(self, attributes: dict) -> dict:
        resolution = [int(v) if v.is_integer() else v for v in self.voxel_size_nm[::-1]]
        scale = {
            "key": "_".join(f"{v:g}" for v in resolution),
            "resolution": resolution,
            "size": self.shape[::-1],
            "voxel_offset": [0, 0, 0],
            "chunk_sizes": [self.chunk[::-1]],
            "encoding": "raw",
        }
        if self.shard:
            scale["sharding"] = _precomputed_sharding(self.shape, self.chunk, self.shard)[0]
        return {
            "@type": "neuroglancer_multiscale_volume",
            "type": "image",
            "num_channels": 1,
            "data_type": self.dtype.name,
            "scales": [scale],
            "emsr": attributes,
        }


def _precomputed_sharding(shape: Triple, chunk: Triple, shard: Triple) -> tuple[dict, Triple]:
    """The `sharding` spec whose shards are `shard`-sized boxes of chunks, and that box.

    Precomputed numbers chunks by a compressed Morton code (bits interleaved x, y, z, a
    dimension dropping out once its grid is covered), and a shard holds the chunks that share
    all but the low `preshift_bits + minishard_bits` bits. So a shard is a box only if those
    low bits are exactly log2(shard / chunk) bits of each dimension (fewer where the shard
    spans the whole grid). Half of them pick the minishard, so minishard indices stay small.
    """
    xyz = zip(shape[::-1], chunk[::-1], shard[::-1], strict=True)
    grid_bits, ratios = zip(*[((math.ceil(n / c) - 1).bit_length(), s // c) for n, c, s in xyz])
    if any(r & (r - 1) for r in ratios):
        raise VolumeError(f"precomputed shard {shard} must be chunk {chunk} times powers of 2")
    wanted = [min(r.bit_length() - 1, g) for r, g in zip(ratios, grid_bits, strict=True)]
    morton = [d for level in range(max(grid_bits)) for d in range(3) if level < grid_bits[d]]
    low_bits = [morton[: sum(wanted)].count(d) for d in range(3)]
    if low_bits != wanted:
        aligned = tuple(c << b for c, b in zip(chunk, low_bits[::-1], strict=True))
        raise VolumeError(
            f"precomputed shard {shard} is not a Morton-aligned box of chunks in "
            f"this volume: use e.g. shard {aligned}"
        )
    bits = sum(wanted)
    sharding = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "identity",
        "preshift_bits": bits - bits // 2,
        "minishard_bits": bits // 2,
        "shard_bits": len(morton) - bits,
        "minishard_index_encoding": "gzip",
        "data_encoding": "raw",
    }
    return sharding, tuple(c << b for c, b in zip(chunk, wanted[::-1], strict=True))


def _open(source: VolumeSource, url: str) -> Volume:
    fmt = source.stored_format()
    if fmt is None:
        raise VolumeError(f"no volume at {redact(url)}: check the path/URL")
    if fmt == "precomputed":
        scale = source.read_json("info")[0]["scales"][0]
        _refuse_gzip_files(source, scale, url)
        spec = {"driver": "neuroglancer_precomputed", "kvstore": source.kvstore, "scale_index": 0}
        voxel_size, known = tuple(float(v) for v in scale["resolution"][::-1]), True
        doc = _AttributeDoc(source, "info")
    else:
        spec, voxel_size, known, doc = _zarr_array(source, fmt, url)
    writable = source.kvstore["driver"] != "http"
    store = ts.open(spec, read=True, write=writable).result()
    if fmt == "precomputed":
        if store.shape[3] != 1:
            raise VolumeError(f"{redact(url)} has {store.shape[3]} channels: EMSR needs one")
        store = store[ts.d["channel"][0]].T
    if store.rank != 3:
        raise VolumeError(f"{redact(url)} has rank {store.rank}: EMSR needs a 3-D (z, y, x) volume")
    dtype = store.dtype.numpy_dtype
    if dtype not in ALLOWED_DTYPES:
        raise VolumeError(f"{redact(url)} has dtype {dtype}: EMSR reads uint8, uint16 or float32")
    layout = store.chunk_layout
    info = VolumeInfo(
        url=redact(url),
        shape=tuple(store.shape),
        dtype=dtype,
        voxel_size_nm=voxel_size,
        offset=tuple(store.origin),
        chunk=tuple(layout.write_chunk.shape),
        read_chunk=tuple(layout.read_chunk.shape),
        format=fmt,
        voxel_size_known=known,
    )
    return Volume(store.translate_to[0], info, doc)


def _refuse_gzip_files(source: VolumeSource, scale: dict, url: str) -> None:
    """CloudVolume writes `<chunk>.gz` files on file:// by default; tensorstore reads zeros."""
    if source.kvstore["driver"] != "file" or "sharding" in scale:
        return
    extents = zip(scale["voxel_offset"], scale["chunk_sizes"][0], scale["size"], strict=True)
    first_chunk = f"{scale['key']}/" + "_".join(f"{o}-{o + min(c, n)}" for o, c, n in extents)
    if not source.exists(first_chunk) and source.exists(f"{first_chunk}.gz"):
        raise VolumeError(
            f"{redact(url)} holds gzip-compressed chunk files, which tensorstore "
            "reads as zeros: rewrite it uncompressed (CloudVolume compress=False)"
        )


def _zarr_array(
    source: VolumeSource, fmt: str, url: str
) -> tuple[dict, Voxel, bool, _AttributeDoc]:
    """The array's tensorstore spec, voxel size (and whether it is known), provenance doc.

    A group is read as OME-Zarr and its first dataset is the volume; a bare array has no
    voxel size of its own.
    """
    if fmt == "zarr3":
        metadata, _ = source.read_json("zarr.json")
        is_group, attributes = metadata["node_type"] == "group", metadata.get("attributes", {})
        doc = _AttributeDoc(source, "zarr.json", under_attributes=True)
    else:
        is_group = source.read_json(".zgroup")[0] is not None
        attributes = source.read_json(".zattrs")[0] or {}
        doc = _AttributeDoc(source, ".zattrs")
    if not is_group:
        return {"driver": fmt, "kvstore": source.kvstore}, (1.0, 1.0, 1.0), False, doc
    multiscales = attributes.get("ome", attributes).get("multiscales")
    if not multiscales:
        raise VolumeError(
            f"{redact(url)} is a Zarr group without OME-Zarr multiscales: give the "
            "URL of the array inside it"
        )
    dataset = multiscales[0]["datasets"][0]
    voxel_size = _ome_voxel_size(multiscales[0], dataset, url)
    return {"driver": fmt, "kvstore": source.child(dataset["path"])}, voxel_size, True, doc


def _ome_voxel_size(multiscale: dict, dataset: dict, url: str) -> Voxel:
    """The dataset's (z, y, x) scale in nm: its own and the multiscale-wide scale, times units."""
    axes = [
        axis if isinstance(axis, dict) else {"name": axis}  # OME 0.3 names axes by string
        for axis in multiscale.get("axes") or "zyx"
    ]
    scale = np.ones(len(axes))
    for transform in [
        *dataset.get("coordinateTransformations", []),
        *multiscale.get("coordinateTransformations", []),
    ]:
        if transform["type"] == "scale":
            scale = scale * np.asarray(transform["scale"], dtype=float)
    space = [
        i
        for i, axis in enumerate(axes)
        if axis.get("type", "space" if axis["name"] in ("z", "y", "x") else None) == "space"
    ]
    units = [axes[i].get("unit") for i in space]
    if len(space) != 3 or not all(unit in _NM_PER_UNIT for unit in units):
        raise VolumeError(
            f"{redact(url)}: OME-Zarr axes {axes} are not 3 spatial axes in "
            f"known units ({', '.join(filter(None, _NM_PER_UNIT))})"
        )
    return tuple(float(scale[i]) * _NM_PER_UNIT[u] for i, u in zip(space, units, strict=True))


def _matching(volume: Volume, expected: tuple) -> Volume:
    """`volume` if it is what `create_volume` was asked for; else say what differs."""
    info = volume.info
    names = ("format", "shape", "dtype", "voxel size (nm)", "write chunk", "read chunk")
    found = (info.format, info.shape, info.dtype, info.voxel_size_nm, info.chunk, info.read_chunk)
    differences = [
        f"{name} {have} (wanted {want})"
        for name, have, want in zip(names, found, expected, strict=True)
        if not (np.allclose(have, want, rtol=1e-6) if name.startswith("voxel") else have == want)
    ]
    if differences:
        raise VolumeError(
            f"output {info.url} exists with {', '.join(differences)}: "
            "pass --overwrite or choose another output"
        )
    return volume


def _ints(values) -> Triple:
    return tuple(int(v) for v in values)


def _show(box: Box) -> str:
    return "(" + ", ".join(f"{p.start}:{p.stop}" for p in box) + ")"
