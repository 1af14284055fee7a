"""Volumes at the storage edge: open, create, read and write (z, y, x) arrays via tensorstore.

The rest of the pipeline sees a `Volume` indexed 0-based in (z, y, x) and its `VolumeInfo`.
Each format's on-disk conventions live in its own module: `pipeline.precomputed` (the `info`,
its (x, y, z, channel) order and global `voxel_offset`, sharding) and `pipeline.omezarr`
(the group-plus-array layout and its units), `pipeline.n5` (input only); `pipeline.world`
says where voxels are in nm, and `pipeline.volume_spec` checks what to create.

A box is `tuple[slice, slice, slice]` of 0-based (z, y, x) half-open ranges (`None` = edge).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tensorstore as ts

from pipeline import n5, omezarr, precomputed
from pipeline.errors import VolumeError
from pipeline.geometry import Triple
from pipeline.urls import VolumeSource, parse_volume_url, redact, reported
from pipeline.volume_spec import ALLOWED_DTYPES, VolumeSpec, Voxel

Box = tuple[slice, slice, slice]

_UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class VolumeInfo:
    """What the pipeline needs to know about a volume, all in (z, y, x).

    `chunk` is the write unit (the shard when sharded): parallel writers must own whole ones.
    `read_chunk` is the smallest unit a read fetches. `offset` is precomputed's `voxel_offset`
    (reads and writes stay 0-based). `origin_nm` is the world position of voxel 0's corner
    (see `pipeline.world`). `url` is redacted, so it is safe to log and record.
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
    origin_nm: Voxel = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _AttributeDoc:
    """The JSON document holding our `emsr` provenance key (in its `attributes` for zarr3)."""

    source: VolumeSource
    key: str

    def parent(self, document: dict) -> dict:
        if self.key == "zarr.json":
            return document.setdefault("attributes", {})
        return document


class Volume:
    """An opened volume. Picklable (tensorstore serialises its spec), so Dask can ship it."""

    def __init__(self, store: ts.TensorStore, info: VolumeInfo, attributes: _AttributeDoc):
        self._store = store
        self._attributes = attributes
        self.info = info

    def described_as(self, info: VolumeInfo) -> Volume:
        """The same stored volume with `info` corrected (a voxel size the user gave)."""
        return Volume(self._store, info, self._attributes)

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


def open_volume(url: str, voxel_size_nm: Voxel | None = None) -> Volume:
    """Open an existing volume for reading and (where the store allows) writing.

    `voxel_size_nm` (the `--voxel-size` options) replaces what the metadata says, for volumes
    that record none or a wrong one."""
    source = parse_volume_url(url)
    with reported("open", url, source):
        volume = _open(source, url)
    if voxel_size_nm is None:
        return volume
    given = tuple(map(float, voxel_size_nm))
    if len(given) != 3 or not all(np.isfinite(given)) or min(given) <= 0:
        raise VolumeError(f"--voxel-size must be 3 positive (z, y, x) nm, not {voxel_size_nm}")
    old = zip(volume.info.origin_nm, volume.info.voxel_size_nm, given, strict=True)
    origin = tuple(o / v * new for o, v, new in old)  # the same voxel stays at the corner
    info = replace(volume.info, voxel_size_nm=given, voxel_size_known=True, origin_nm=origin)
    return volume.described_as(info)


def require_voxel_size(info: VolumeInfo, option: str = "--voxel-size") -> Voxel:
    """The volume's voxel size; a VolumeError naming `option` where its metadata has none
    (a bare Zarr array): an invented size would misplace and mis-scale every output."""
    if not info.voxel_size_known:
        raise VolumeError(f"{info.url} records no voxel size: give it with {option} Z,Y,X (nm)")
    return info.voxel_size_nm


def create_volume(
    url: str,
    shape: Triple,
    dtype: np.dtype | str,
    voxel_size_nm: Voxel,
    chunk: Triple,
    *,
    shard: Triple | None = None,
    origin_nm: Voxel = (0.0, 0.0, 0.0),
    attributes: dict | None = None,
    overwrite: bool = False,
) -> Volume:
    """Create an empty volume, or reopen an existing one that matches exactly.

    `chunk` is the storage chunk, the unit a reader fetches. `shard`, a multiple of `chunk`,
    bundles chunks into one stored object and then is the write unit (`info.chunk`).
    `origin_nm` places voxel 0's corner in the world (nm). `attributes` (provenance) is
    stored under `emsr` when the volume is created.
    """
    source = parse_volume_url(url)
    spec = VolumeSpec.checked(shape, dtype, voxel_size_nm, chunk, shard, origin_nm)
    if source.format in ("zarr", "n5"):
        name = {"zarr": "Zarr v2", "n5": "N5"}[source.format]
        raise VolumeError(
            f"cannot create {name} at {redact(url)}: use zarr3://, precomputed:// or a .zarr path"
        )
    with reported("read", url, source):
        existing, foreign = source.stored_format(), source.foreign_format()
    if foreign:
        raise VolumeError(
            f"{redact(url)} holds a {foreign} volume, which EMSR never replaces (not even "
            "with --overwrite): choose another output"
        )
    if existing and not overwrite:
        return _matching(open_volume(url), spec, source.format)
    with reported("create", url, source, hint=": choose a writable output location"):
        if existing:
            source.delete_everything()
        if source.format == "precomputed":
            _write_if_absent(source, "info", precomputed.info_document(spec, attributes or {}))
        else:  # the array first: if the location is unwritable, nothing is left behind
            ts.open(
                {
                    "driver": "zarr3",
                    "kvstore": source.child(omezarr.ARRAY_PATH),
                    "metadata": omezarr.zarr3_metadata(spec),
                },
                create=True,
                open=True,  # the same array, created by a run that started with this one
            ).result()
            group = omezarr.image_group(spec, _image_name(source), attributes or {})
            _write_if_absent(source, "zarr.json", group)
    return _matching(open_volume(url), spec, source.format)


def _image_name(source: VolumeSource) -> str:
    """The name viewers show for a volume: its folder's name without `.zarr`."""
    return source.kvstore["path"].rstrip("/").rpartition("/")[2].removesuffix(".zarr")


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


def _open(source: VolumeSource, url: str) -> Volume:
    fmt = source.stored_format()
    if fmt is None:
        raise VolumeError(f"no volume at {redact(url)}: check the path/URL")
    if fmt == "precomputed":
        scale = precomputed.first_scale(source)
        spec = {"driver": "neuroglancer_precomputed", "kvstore": source.kvstore, "scale_index": 0}
        voxel_size, known = tuple(float(v) for v in scale["resolution"][::-1]), True
        origin = precomputed.origin_nm(scale)
        doc = _AttributeDoc(source, "info")
    elif fmt == "n5":
        dataset = n5.n5_dataset(source, url)
        spec, voxel_size, known = dataset.spec, dataset.voxel_size_nm, dataset.voxel_size_known
        origin = dataset.origin_nm
        doc = _AttributeDoc(source, n5.ATTRIBUTES)
    else:
        array = omezarr.zarr_array(source, fmt, url)
        spec, voxel_size, known = array.spec, array.voxel_size_nm, array.voxel_size_known
        origin = array.origin_nm
        doc = _AttributeDoc(source, array.attributes_key)
    if fmt == "precomputed" and precomputed.has_compressed_chunk_files(source, scale):
        store = precomputed.cloudvolume_store(source, scale)
    else:
        store = ts.open(spec, read=True, write=source.kvstore["driver"] != "http").result()
    if fmt == "precomputed":
        if store.shape[3] != 1:
            raise VolumeError(f"{redact(url)} has {store.shape[3]} channels: EMSR needs one")
        store = store[ts.d["channel"][0]].T
    elif fmt == "n5":
        store = store.T
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
        origin_nm=origin,
    )
    return Volume(store.translate_to[0], info, doc)


def _matching(volume: Volume, spec: VolumeSpec, fmt: str) -> Volume:
    """`volume` if it is what `create_volume` was asked for; else say what differs."""
    info = volume.info
    if fmt == "precomputed":
        write_chunk = precomputed.write_chunk(spec)
    else:
        write_chunk = spec.shard or spec.chunk
    expected = (
        fmt, spec.shape, spec.dtype, spec.voxel_size_nm, spec.origin_nm, write_chunk, spec.chunk
    )  # fmt: skip
    names = ("format", "shape", "dtype", "voxel size (nm)", "origin (nm)", "write chunk",
             "read chunk")  # fmt: skip
    found = (info.format, info.shape, info.dtype, info.voxel_size_nm, info.origin_nm, info.chunk,
             info.read_chunk)  # fmt: skip
    differences = [
        f"{name} {have} (wanted {want})"
        for name, have, want in zip(names, found, expected, strict=True)
        if not (np.allclose(have, want, rtol=1e-6) if "(nm)" in name else have == want)
    ]
    if differences:
        raise VolumeError(
            f"output {info.url} exists with {', '.join(differences)}: "
            "pass --overwrite or choose another output"
        )
    return volume


def _show(box: Box) -> str:
    return "(" + ", ".join(f"{p.start}:{p.stop}" for p in box) + ")"
