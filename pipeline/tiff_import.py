"""Real data in: a TIFF stack written section by section as an OME-Zarr v3 volume, resumably.

Labs export serial-section EM as a folder of per-section TIFFs or as one multi-page TIFF,
8- or 16-bit, without a voxel size the pipeline can trust; so the voxel size is given by
the user, every page is checked (2-D, one shape, one supported dtype) before anything is
created, and sections are written in z-slabs of whole chunks. A slab is marked done in the
output's ledger only after its write is durable, under a key that covers the files' names,
sizes and modification times: an interrupted import resumes where it stopped, and a changed
stack is never silently mixed with the old one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from emsr.intensity import SUPPORTED_DTYPES
from pipeline.errors import LedgerError, VolumeError
from pipeline.geometry import Triple
from pipeline.ledger import DoneLedger, configuration_hash
from pipeline.urls import redact
from pipeline.volumes import Volume, create_volume

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_IMPORT_CHUNK_YX = 512


@dataclass(frozen=True)
class Section:
    """Where one z-section's pixels are: a file and a page in it."""

    file: Path
    page: int


@dataclass(frozen=True)
class TiffStack:
    """The sections of a stack in z order, all of one shape and dtype."""

    root: Path
    sections: tuple[Section, ...]
    section_shape: tuple[int, int]
    dtype: np.dtype

    @property
    def shape(self) -> Triple:
        return (len(self.sections), *self.section_shape)

    @classmethod
    def scan(cls, path: Path) -> TiffStack:
        """Read every page's header (no pixels) and refuse what the pipeline cannot use."""
        path = Path(path)
        if path.is_dir():
            files = sorted(
                (f for f in path.iterdir() if f.suffix.lower() in TIFF_SUFFIXES and f.is_file()),
                key=natural_key,
            )
            if not files:
                raise VolumeError(f"{path} holds no .tif or .tiff files")
        elif path.is_file():
            files = [path]
        else:
            raise VolumeError(f"{path} does not exist: give a folder of TIFFs or a TIFF file")
        sections, layout = [], None
        for file in files:
            for page, (shape, dtype) in enumerate(page_layouts(file)):
                layout = layout or (shape, dtype)
                if (shape, dtype) != layout:
                    raise VolumeError(
                        f"{file} page {page} is {dtype.name} {shape[0]}×{shape[1]}, but the "
                        f"stack began {layout[1].name} {layout[0][0]}×{layout[0][1]}: every "
                        "section must have the same size and type"
                    )
                sections.append(Section(file, page))
        return cls(path, tuple(sections), layout[0], layout[1])

    def read(self, z: int) -> np.ndarray:
        section = self.sections[z]
        with tifffile.TiffFile(section.file) as tiff:
            return tiff.pages[section.page].asarray()

    def fingerprint(self) -> dict:
        """What identifies the stack's content cheaply: names, sizes, modification times."""
        files = dict.fromkeys(section.file for section in self.sections)
        stats = [(file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files]
        return {"root": str(self.root.resolve()), "files": configuration_hash({"f": stats})}


def natural_key(path: Path) -> list:
    """'s2.tif' before 's10.tif', as a person numbers sections."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def page_layouts(file: Path) -> Iterator[tuple[tuple[int, int], np.dtype]]:
    """(shape, dtype) of each page of a TIFF file, from its headers alone."""
    try:
        with tifffile.TiffFile(file) as tiff:
            pages = [(tuple(page.shape), np.dtype(page.dtype)) for page in tiff.pages]
    except (OSError, tifffile.TiffFileError, ValueError) as error:
        raise VolumeError(f"{file} is not a readable TIFF: {error}") from None
    for page, (shape, dtype) in enumerate(pages):
        if len(shape) != 2:
            raise VolumeError(
                f"{file} page {page} has shape {shape}: sections must be 2-D grayscale "
                "(convert colour or multi-channel images first)"
            )
        if dtype not in SUPPORTED_DTYPES:
            supported = ", ".join(d.name for d in SUPPORTED_DTYPES)
            raise VolumeError(f"{file} page {page} is {dtype.name}; supported: {supported}")
        yield shape, dtype  # type: ignore[misc]


@dataclass
class ImportReport:
    """Counts of z-slabs (one output chunk deep) of one import."""

    slabs_total: int
    slabs_skipped: int
    slabs_written: int = 0


def default_import_chunk(section_shape: tuple[int, int]) -> Triple:
    """One section deep (EMSR reads section by section), up to 512² in-plane."""
    return (1, *(min(DEFAULT_IMPORT_CHUNK_YX, extent) for extent in section_shape))  # type: ignore[return-value]


def open_import_output(
    stack: TiffStack, output_url: str, voxel_size_nm: tuple[float, float, float],
    chunk: Triple, overwrite: bool,
) -> tuple[Volume, str]:  # fmt: skip
    """Create (or reopen) the output under the stack's configuration key."""
    configuration = {"source": stack.fingerprint(), "voxel_size_nm": list(voxel_size_nm),
                     "chunk": list(chunk), "dtype": stack.dtype.name}  # fmt: skip
    key = configuration_hash(configuration)
    attributes = {"configuration_hash": key, "imported_from": str(stack.root)}
    output = create_volume(output_url, stack.shape, stack.dtype, voxel_size_nm, chunk,
                           attributes=attributes, overwrite=overwrite)  # fmt: skip
    if output.read_attributes().get("configuration_hash") != key:
        raise LedgerError(
            f"{redact(output_url)} holds another import (its files, voxel size or chunks "
            "differ, or the TIFFs changed since); pass --overwrite to replace it"
        )
    return output, key


def import_stack(
    stack: TiffStack,
    output_url: str,
    voxel_size_nm: tuple[float, float, float],
    *,
    chunk: Triple | None = None,
    overwrite: bool = False,
    threads: int = 4,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write every section not yet done, `threads` slabs at a time (decoding a TIFF and
    encoding chunks release the GIL), marking each slab done once durable."""
    chunk = chunk or default_import_chunk(stack.section_shape)
    output, key = open_import_output(stack, output_url, voxel_size_nm, chunk, overwrite)
    depth = chunk[0]
    slab_count = -(-stack.shape[0] // depth)
    ledger = DoneLedger.open(output_url, key, slab_count)
    pending = list(ledger.pending(range(slab_count)))
    report = ImportReport(slab_count, slab_count - len(pending))
    if on_start:
        on_start(slab_count, report.slabs_skipped)

    def write_slab(slab: int) -> int:
        begin, end = slab * depth, min((slab + 1) * depth, stack.shape[0])
        pixels = np.stack([stack.read(z) for z in range(begin, end)])
        output.write((slice(begin, end), slice(None), slice(None)), pixels)
        return slab

    running: set[Future] = set()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        try:
            for slab in pending:
                running.add(pool.submit(write_slab, slab))
                if len(running) >= 2 * threads:
                    running = _record(running, ledger, report, on_progress)
            while running:
                running = _record(running, ledger, report, on_progress)
        finally:
            for future in running:
                future.cancel()
            ledger.flush()
    return report


def _record(
    running: set[Future], ledger: DoneLedger, report: ImportReport,
    on_progress: Callable[[int], None] | None,
) -> set[Future]:  # fmt: skip
    """Wait for at least one slab, mark the finished ones done; the rest stay running."""
    finished, still_running = wait(running, return_when=FIRST_COMPLETED)
    for future in finished:
        ledger.mark_done(future.result())
        report.slabs_written += 1
        if on_progress:
            on_progress(report.slabs_skipped + report.slabs_written)
    return still_running
