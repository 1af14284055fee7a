"""The metric audit: how good is a super-resolved volume, block by block and as a whole.

Two kinds of evidence, because EM has no clean truth:

- PSNR and SSIM against a reference HR scan, per block of an audit grid and globally. The
  reference is itself noisy, so these understate quality; the per-block map shows *where*
  quality drops (seams, edges of the field, damaged sections).
- FRC between two results with independent noise: SR of two LR scans (`sr2`), SR against a
  second HR scan (`reference2`), and the two HR scans against each other (the acquisition's
  own resolution, for comparison). Each uses a few evenly spaced sections, cropped to a
  central square.

Volumes are streamed: read in units of about a storage chunk (the next unit's read overlaps
the current unit's maths), each chunk once, never the whole volume. Results go to
`metrics.json`, `quality_heatmap.png` and `frc.png` in `out_dir`.

Identical images have infinite PSNR, which JSON cannot hold: it is written as
`PSNR_IDENTICAL_DB` (999 dB), far above any finite PSNR of real data (one uint16 grey level
of error in 10¹⁵ voxels is 246 dB), so 999 can only mean "no difference at all".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from types import MappingProxyType

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emsr.errors import DataError, EMSRError
from emsr.metrics import SSIM_WINDOW, FRCCurve, frc_curve, frc_resolution, psnr, ssim
from pipeline.errors import PlanError
from pipeline.geometry import Box, Triple
from pipeline.urls import confine, redact
from pipeline.volumes import Volume, VolumeInfo, open_volume

AUDIT_SIDE = 256  # largest in-plane side of a default audit block, px
MIN_AUDIT_SIDE = 64  # smallest: SSIM leaves out a 3 px border of each block
FRC_SECTIONS = 5
FRC_MAX_SIDE = 1024  # a 1024² crop already resolves the curve to 1/1024 cycles per pixel
PSNR_IDENTICAL_DB = 999.0
MAX_LABELLED_CELLS = 150  # heatmaps with fewer cells print each block's PSNR on it
INTEGER_RANGES = MappingProxyType({np.dtype("uint8"): 255.0, np.dtype("uint16"): 65535.0})
ROLE_NAMES = MappingProxyType(
    {"sr": "SR", "reference": "reference", "reference2": "reference 2", "sr2": "SR 2"}
)
FRC_PAIRS = (("sr", "sr2"), ("sr", "reference2"), ("reference", "reference2"))

ProgressCallback = Callable[[int, int], None]


class AuditOutputError(EMSRError):
    """An audit output folder that cannot be created or written."""


@dataclass(frozen=True)
class AuditRequest:
    """What to compare. `block` is the audit grid's block (z, y, x); None picks one from the
    SR volume's shape and storage chunks (see `default_block`)."""

    sr_url: str
    out_dir: Path
    reference_url: str | None = None
    reference2_url: str | None = None
    sr2_url: str | None = None
    block: Triple | None = None
    frc_sections: int = FRC_SECTIONS

    def urls(self) -> dict[str, str | None]:
        return {
            "sr": self.sr_url,
            "reference": self.reference_url,
            "reference2": self.reference2_url,
            "sr2": self.sr2_url,
        }


@dataclass(frozen=True)
class AuditResult:
    metrics: dict
    metrics_path: Path
    heatmap_path: Path
    frc_path: Path


@dataclass(frozen=True)
class BlockScore:
    """One audit block: its box, PSNR and SSIM, and its summed squared error (for the global
    PSNR, which is the PSNR of all voxels, not a mean of block PSNRs)."""

    box: Box
    grid_yx: tuple[int, int]
    psnr: float
    ssim: float
    squared_error: float


@dataclass(frozen=True, eq=False)
class FRCComparison:
    """The FRC of one pair of volumes on `sections` cropped to `crop` (y, x slices), with the
    resolutions in pixels (1/7 and half-bit thresholds)."""

    pair: tuple[str, str]
    sections: list[int]
    crop: tuple[slice, slice]
    curve: FRCCurve
    resolution_px: float
    resolution_half_bit_px: float

    @property
    def name(self) -> str:
        return "_vs_".join(self.pair)

    @property
    def label(self) -> str:
        return " vs ".join(ROLE_NAMES[role] for role in self.pair)


# --- inputs -----------------------------------------------------------------------------------


def open_inputs(request: AuditRequest) -> dict[str, Volume]:
    """Open the given volumes and check that they image the same grid (shape, voxel size)."""
    if not (request.reference_url or request.sr2_url or request.reference2_url):
        raise DataError(
            "nothing to audit: give --reference (PSNR, SSIM) and/or --sr2 or "
            "--reference2 (FRC resolution)"
        )
    volumes = {role: open_volume(url) for role, url in request.urls().items() if url}
    sr = volumes["sr"].info
    for role, volume in volumes.items():
        check_same_grid(sr, volume.info, ROLE_NAMES[role])
    if "reference" in volumes and volumes["reference"].info.dtype != sr.dtype:
        reference = volumes["reference"].info
        raise DataError(
            f"reference {reference.url} is {reference.dtype} but SR {sr.url} is "
            f"{sr.dtype}: PSNR and SSIM need both on the same intensity scale"
        )
    return volumes


def check_same_grid(sr: VolumeInfo, other: VolumeInfo, role: str) -> None:
    """Same shape, and the same voxel size where both volumes know theirs; else one line."""
    if other.shape != sr.shape:
        raise DataError(
            f"{role} {other.url} has shape {other.shape} but SR {sr.url} has "
            f"{sr.shape}: compare volumes of the same field on the same grid"
        )
    both_known = sr.voxel_size_known and other.voxel_size_known
    if both_known and not np.allclose(other.voxel_size_nm, sr.voxel_size_nm, rtol=1e-3):
        raise DataError(
            f"{role} {other.url} has voxel size {other.voxel_size_nm} nm but SR "
            f"{sr.url} has {sr.voxel_size_nm} nm: compare volumes at the same "
            "resolution"
        )


def voxel_size(volumes: dict[str, Volume]) -> tuple[float, float, float] | None:
    """The first known voxel size among the inputs; None if no input records one."""
    known = [v.info.voxel_size_nm for v in volumes.values() if v.info.voxel_size_known]
    return known[0] if known else None


def data_range(reference: Volume, boxes: list[Box], on_step: Callable[[], None]) -> float:
    """The intensity range PSNR and SSIM are relative to: the dtype's for integers; for
    float32 the reference's own max - min, found in one streaming pass."""
    info = reference.info
    if info.dtype in INTEGER_RANGES:
        return INTEGER_RANGES[info.dtype]
    low, high = math.inf, -math.inf
    for box, (block,) in prefetched([reference], boxes):
        if not np.isfinite(block).all():
            raise DataError(
                f"reference {info.url} has NaN or infinite values in {box}: fill "
                "them before auditing"
            )
        low, high = min(low, float(block.min())), max(high, float(block.max()))
        on_step()
    if high <= low:
        raise DataError(
            f"reference {info.url} is constant ({low}): PSNR and SSIM need a "
            "reference with contrast"
        )
    return high - low


# --- the audit grid ---------------------------------------------------------------------------


def default_block(shape: Triple, read_chunk: Triple) -> Triple:
    """One storage chunk deep; in plane a quarter of the shorter side, kept within 64-256 px,
    so that a small volume still gives a map of several blocks a side."""
    side = min(max(min(shape[1:]) // 4, MIN_AUDIT_SIDE), AUDIT_SIDE)
    return tuple(min(b, n) for b, n in zip((read_chunk[0], side, side), shape))  # type: ignore[return-value]


def check_block(block: Triple) -> None:
    if len(block) != 3 or min(block) <= 0:
        raise PlanError(f"--block must be three positive sizes Z,Y,X, got {block}")
    if min(block[1:]) < SSIM_WINDOW:
        raise PlanError(
            f"--block {','.join(map(str, block))} is too small in plane: SSIM "
            f"needs at least {SSIM_WINDOW} px in y and x"
        )


def axis_ranges(size: int, step: int, min_last: int = 1) -> list[tuple[int, int]]:
    """[start, stop) ranges of `step` covering `size`; a last range shorter than `min_last`
    joins its neighbour (SSIM cannot use a strip thinner than its window)."""
    starts = list(range(0, size, step))
    if len(starts) > 1 and size - starts[-1] < min_last:
        starts.pop()
    return list(zip(starts, [*starts[1:], size]))


@dataclass(frozen=True)
class ReadUnit:
    """A box read in one go, about a storage chunk, and the audit blocks inside it with each
    block's (row, column) in the y-x grid. Blocks smaller than chunks share one read, so no
    chunk is fetched once per block."""

    box: Box
    blocks: list[tuple[Box, tuple[int, int]]]


def audit_grid(shape: Triple, block: Triple, chunk: Triple) -> list[ReadUnit]:
    """The audit blocks, z-major, grouped into read units of `chunk // block` blocks a side."""
    ranges = [
        axis_ranges(shape[0], block[0]),
        *(axis_ranges(n, b, SSIM_WINDOW) for n, b in zip(shape[1:], block[1:])),
    ]
    groups = []
    for axis_range, b, c in zip(ranges, block, chunk):
        indexed, per_read = list(enumerate(axis_range)), max(1, c // b)
        groups.append([indexed[i : i + per_read] for i in range(0, len(indexed), per_read)])
    units = []
    for group_z, group_y, group_x in product(*groups):
        first, last = (group_z[0], group_y[0], group_x[0]), (group_z[-1], group_y[-1], group_x[-1])
        box = Box(tuple(r[0] for _, r in first), tuple(r[1] for _, r in last))
        blocks = [
            (Box((z[0], y[0], x[0]), (z[1], y[1], x[1])), (iy, ix))
            for (_, z), (iy, y), (ix, x) in product(group_z, group_y, group_x)
        ]
        units.append(ReadUnit(box, blocks))
    return units


def prefetched(volumes: list[Volume], boxes: list[Box]) -> Iterator[tuple[Box, list[np.ndarray]]]:
    """Each box's data from every volume, reading the next box while the caller works."""

    def start(box: Box) -> list:
        return [volume.read_async(box.slices()) for volume in volumes]

    pending = start(boxes[0]) if boxes else []
    for index, box in enumerate(boxes):
        current = pending
        if index + 1 < len(boxes):
            pending = start(boxes[index + 1])
        yield box, [future.result() for future in current]


def within(outer: Box, inner: Box) -> tuple[slice, slice, slice]:
    """Slices selecting `inner` from an array holding `outer`."""
    return inner.shift(tuple(-b for b in outer.begin)).slices()  # type: ignore[arg-type]


# --- measurements -----------------------------------------------------------------------------


def score_blocks(
    sr: Volume,
    reference: Volume,
    units: list[ReadUnit],
    value_range: float,
    on_step: Callable[[], None],
) -> list[BlockScore]:
    """PSNR, SSIM and squared error of each block; a block the metrics refuse (NaN, too
    small) is named in the one-line error."""
    scores = []
    reads = prefetched([sr, reference], [unit.box for unit in units])
    for unit, (_, (sr_unit, reference_unit)) in zip(units, reads):
        for box, position in unit.blocks:
            a, b = sr_unit[within(unit.box, box)], reference_unit[within(unit.box, box)]
            scores.append(score_block(a, b, box, position, value_range, sr.info.url))
            on_step()
    return scores


def score_block(
    a: np.ndarray,
    b: np.ndarray,
    box: Box,
    position: tuple[int, int],
    value_range: float,
    sr_url: str,
) -> BlockScore:
    try:
        block_psnr, block_ssim = psnr(a, b, value_range), ssim(a, b, value_range)
    except DataError as error:
        raise DataError(f"SR {sr_url}, block {box}: {error}") from None
    error = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return BlockScore(box, position, block_psnr, block_ssim, error)


def psnr_from_error(squared_error: float, voxels: int, value_range: float) -> float:
    """PSNR of `voxels` voxels whose squared errors sum to `squared_error` (inf if none)."""
    if squared_error == 0:
        return math.inf
    return 10.0 * math.log10(value_range**2 * voxels / squared_error)


def global_scores(scores: list[BlockScore], value_range: float) -> tuple[float, float]:
    """PSNR of all voxels (from the summed squared error) and the voxel-weighted mean SSIM."""
    voxels = np.array([s.box.size for s in scores], dtype=np.float64)
    total_error = math.fsum(s.squared_error for s in scores)
    mean_ssim = float(np.dot(voxels, [s.ssim for s in scores]) / voxels.sum())
    return psnr_from_error(total_error, int(voxels.sum()), value_range), mean_ssim


def frc_sections(depth: int, count: int) -> list[int]:
    """`count` sections evenly spaced from the first to the last (fewer if there are fewer)."""
    return sorted({round(z) for z in np.linspace(0, depth - 1, min(count, depth))})


def central_square(height: int, width: int) -> tuple[slice, slice]:
    side = min(height, width, FRC_MAX_SIDE)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return slice(y0, y0 + side), slice(x0, x0 + side)


def read_sections(volume: Volume, sections: list[int], crop: tuple[slice, slice]) -> np.ndarray:
    futures = [volume.read_async((slice(z, z + 1), *crop)) for z in sections]
    return np.concatenate([future.result() for future in futures])


def compare_frc(
    volumes: dict[str, Volume], count: int, on_step: Callable[[], None]
) -> list[FRCComparison]:
    """The FRC of every pair in `FRC_PAIRS` whose two volumes were given, in pixels."""
    depth, height, width = volumes["sr"].info.shape
    sections, crop = frc_sections(depth, count), central_square(height, width)
    comparisons = []
    for pair in (p for p in FRC_PAIRS if all(role in volumes for role in p)):
        a, b = (read_sections(volumes[role], sections, crop) for role in pair)
        comparisons.append(
            FRCComparison(
                pair,
                sections,
                crop,
                frc_curve(a, b),
                frc_resolution(a, b, 1.0, "1/7"),
                frc_resolution(a, b, 1.0, "half_bit"),
            )
        )
        on_step()
    return comparisons


# --- the audit --------------------------------------------------------------------------------


def audit(request: AuditRequest, on_progress: ProgressCallback | None = None) -> AuditResult:
    """Measure, plot and write `metrics.json`; returns the metrics and the written paths."""
    volumes = open_inputs(request)
    sr = volumes["sr"].info
    block = request.block or default_block(sr.shape, sr.read_chunk)
    check_block(block)
    out_dir = prepared_output(request.out_dir)
    reference = volumes.get("reference")
    units = audit_grid(sr.shape, block, sr.read_chunk) if reference else []
    float_pass = len(units) if reference and reference.info.dtype not in INTEGER_RANGES else 0
    frc_pairs = sum(all(role in volumes for role in pair) for pair in FRC_PAIRS)
    blocks = sum(len(unit.blocks) for unit in units)
    step = StepCounter(float_pass + blocks + frc_pairs, on_progress)

    value_range, scores = None, []
    if reference:
        value_range = data_range(reference, [unit.box for unit in units], step)
        scores = score_blocks(volumes["sr"], reference, units, value_range, step)
    comparisons = compare_frc(volumes, request.frc_sections, step)

    voxel_nm = voxel_size(volumes)
    metrics = metrics_document(request, sr.shape, block, voxel_nm, value_range, scores, comparisons)
    heatmap_path, frc_path = out_dir / "quality_heatmap.png", out_dir / "frc.png"
    plot_heatmap(heatmap_path, scores, value_range, voxel_nm)
    plot_frc(frc_path, comparisons, voxel_nm)
    metrics_path = out_dir / "metrics.json"
    write_text(metrics_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return AuditResult(metrics, metrics_path, heatmap_path, frc_path)


class StepCounter:
    """Counts finished steps and reports (done, total), starting with (0, total)."""

    def __init__(self, total: int, on_progress: ProgressCallback | None) -> None:
        self.done, self.total, self.on_progress = 0, total, on_progress
        self.report()

    def __call__(self) -> None:
        self.done += 1
        self.report()

    def report(self) -> None:
        if self.on_progress:
            self.on_progress(self.done, self.total)


def prepared_output(out_dir: Path) -> Path:
    """The output folder, created now so an unwritable one fails before any work is done."""
    confine(out_dir)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AuditOutputError(
            f"cannot create {out_dir}: {error.strerror}; choose a writable --out"
        ) from None
    return Path(out_dir)


def write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise AuditOutputError(f"cannot write {path}: {error.strerror}") from None


def json_psnr(value: float) -> float:
    return PSNR_IDENTICAL_DB if math.isinf(value) else value


def in_plane_pixel_nm(voxel_nm: tuple[float, float, float] | None) -> float | None:
    """The pixel size FRC rings are measured in: y and x (their geometric mean if unequal)."""
    return math.sqrt(voxel_nm[1] * voxel_nm[2]) if voxel_nm else None


def metrics_document(
    request: AuditRequest,
    shape: Triple,
    block: Triple,
    voxel_nm: tuple[float, float, float] | None,
    value_range: float | None,
    scores: list[BlockScore],
    comparisons: list[FRCComparison],
) -> dict:
    """The contents of metrics.json; keys that cannot be computed are null.

    `frc_resolution_nm` is the SR result's: SR vs SR 2 if given, else SR vs reference 2; the
    acquisition's own (reference vs reference 2) is under `frc` with every other pair.
    """
    psnr_db = ssim_mean = None
    if scores and value_range:
        psnr_db, ssim_mean = global_scores(scores, value_range)
    pixel_nm = in_plane_pixel_nm(voxel_nm)
    frc = {c.name: frc_entry(c, pixel_nm) for c in comparisons}
    headline = next((frc[name] for name in ("sr_vs_sr2", "sr_vs_reference2") if name in frc), {})
    return {
        "psnr": None if psnr_db is None else json_psnr(psnr_db),
        "ssim": ssim_mean,
        "frc_resolution_nm": headline.get("resolution_nm"),
        "frc_resolution_half_bit_nm": headline.get("resolution_half_bit_nm"),
        "inputs": {role: redact(url) if url else None for role, url in request.urls().items()},
        "voxel_size_nm": list(voxel_nm) if voxel_nm else None,
        "shape": list(shape),
        "block": list(block),
        "data_range": value_range,
        "frc": frc,
        "blocks": [{"box": str(s.box), "psnr": json_psnr(s.psnr), "ssim": s.ssim} for s in scores],
    }


def frc_entry(comparison: FRCComparison, pixel_nm: float | None) -> dict:
    def in_nm(px: float) -> float | None:
        return px * pixel_nm if pixel_nm else None

    crop_y, crop_x = comparison.crop
    return {
        "pair": list(comparison.pair),
        "resolution_nm": in_nm(comparison.resolution_px),
        "resolution_half_bit_nm": in_nm(comparison.resolution_half_bit_px),
        "resolution_px": comparison.resolution_px,
        "resolution_half_bit_px": comparison.resolution_half_bit_px,
        "sections": comparison.sections,
        "crop_yx": f"{crop_y.start}:{crop_y.stop},{crop_x.start}:{crop_x.stop}",
    }


# --- plots ------------------------------------------------------------------------------------


def column_psnr(scores: list[BlockScore], value_range: float) -> np.ndarray:
    """PSNR per (y, x) block column, from the squared error summed over its z blocks (the
    same definition as the global PSNR, so a column with one bad section still shows)."""
    rows, columns = (max(s.grid_yx[axis] for s in scores) + 1 for axis in (0, 1))
    error, voxels = np.zeros((rows, columns)), np.zeros((rows, columns))
    for s in scores:
        error[s.grid_yx] += s.squared_error
        voxels[s.grid_yx] += s.box.size
    return np.array(
        [
            [psnr_from_error(e, int(n), value_range) for e, n in zip(*row)]
            for row in zip(error, voxels)
        ]
    )


def block_edges(scores: list[BlockScore], axis: int) -> np.ndarray:
    """Edges of the grid's blocks along y (axis 1) or x (axis 2), in voxels."""
    ranges = {(s.box.begin[axis], s.box.end[axis]) for s in scores}
    return np.array(sorted({edge for pair in ranges for edge in pair}), dtype=np.float64)


def plot_heatmap(
    path: Path,
    scores: list[BlockScore],
    value_range: float | None,
    voxel_nm: tuple[float, float, float] | None,
) -> None:
    """Block PSNR over (y, x), z folded in; axes in µm (px if the voxel size is unknown).
    Blocks identical to the reference (infinite PSNR) are drawn light grey."""
    if not scores or value_range is None:
        save_message(path, "PSNR per block", "no --reference given: PSNR was not computed")
        return
    grid = column_psnr(scores, value_range)
    scale, unit = ((voxel_nm[1] / 1000, voxel_nm[2] / 1000), "µm") if voxel_nm else ((1, 1), "px")
    y_edges, x_edges = (block_edges(scores, axis) * s for axis, s in zip((1, 2), scale))
    finite = grid[np.isfinite(grid)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if high - low < 0.1:
        low, high = low - 0.05, high + 0.05
    colours = colormaps["viridis"].with_extremes(over="0.8")

    height, width = y_edges[-1] - y_edges[0], x_edges[-1] - x_edges[0]
    aspect = float(np.clip(height / width, 0.3, 1.5))
    figure = Figure(figsize=(7.0, 1.2 + 5.2 * aspect), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    shown = np.where(np.isinf(grid), high + 1.0, grid)  # inf would be masked, not "over"
    mesh = axes.pcolormesh(
        x_edges, y_edges, shown, cmap=colours, vmin=low, vmax=high, edgecolors="face"
    )
    axes.set_xlim(x_edges[0], x_edges[-1])
    axes.set_ylim(y_edges[-1], y_edges[0])  # y down, as the sections are displayed
    axes.set_aspect("equal")
    axes.set_xlabel(f"x ({unit})")
    axes.set_ylabel(f"y ({unit})")
    depth = max(s.box.end[0] for s in scores)
    psnr_db, _ = global_scores(scores, value_range)
    overall = "identical" if math.isinf(psnr_db) else f"{psnr_db:.2f} dB"
    axes.set_title(f"PSNR per block, over all {depth} sections (global {overall})")
    if grid.size <= MAX_LABELLED_CELLS:
        label_cells(axes, grid, y_edges, x_edges, mesh, decimals=2 if high - low < 1 else 1)
    identical = bool(np.isinf(grid).any())
    bar = figure.colorbar(mesh, ax=axes, extend="max" if identical else "neither")
    bar.set_label("PSNR (dB)" + ("; grey: identical to the reference" if identical else ""))
    save_figure(figure, path)


def label_cells(
    axes, grid: np.ndarray, y_edges: np.ndarray, x_edges: np.ndarray, mesh, decimals: int
) -> None:
    """Write each cell's PSNR on it, dark on light colours and light on dark ones."""
    centres_y, centres_x = ((edges[:-1] + edges[1:]) / 2 for edges in (y_edges, x_edges))
    for (row, column), value in np.ndenumerate(grid):
        text = "∞" if np.isinf(value) else f"{value:.{decimals}f}"
        red, green, blue, _ = mesh.to_rgba(value)
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        axes.text(
            centres_x[column],
            centres_y[row],
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="black" if light else "white",
        )


def plot_frc(
    path: Path, comparisons: list[FRCComparison], voxel_nm: tuple[float, float, float] | None
) -> None:
    """FRC curves against spatial frequency, with the 1/7 and half-bit thresholds; each
    legend entry gives the pair's resolution and a dot marks its 1/7 crossing."""
    if not comparisons:
        save_message(
            path,
            "Fourier ring correlation",
            "no independent pair: give --sr2 or --reference2 to measure resolution",
        )
        return
    pixel_nm = in_plane_pixel_nm(voxel_nm)
    per_unit, unit = (1 / pixel_nm, "nm") if pixel_nm else (1.0, "px")
    figure = Figure(figsize=(7.5, 4.8), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    for comparison in comparisons:
        curve, resolution = comparison.curve, comparison.resolution_px / per_unit
        half_bit = comparison.resolution_half_bit_px / per_unit
        label = f"{comparison.label}: {resolution:.1f} {unit} (1/7), {half_bit:.1f} {unit} (½-bit)"
        (line,) = axes.plot(curve.frequency * per_unit, curve.correlation, lw=1.6, label=label)
        axes.plot(1 / resolution, 1 / 7, "o", color=line.get_color(), ms=5)
    first = comparisons[0]
    frequency = first.curve.frequency * per_unit
    axes.axhline(1 / 7, color="0.3", ls="--", lw=1, label="threshold 1/7")
    axes.plot(
        frequency,
        first.curve.half_bit_threshold,
        color="0.3",
        ls=":",
        lw=1.2,
        label="threshold half-bit",
    )
    axes.set_xlim(0, frequency[-1])
    axes.set_ylim(-0.2, 1.05)
    axes.set_xlabel(f"spatial frequency (1/{unit})")
    axes.set_ylabel("Fourier ring correlation")
    side = first.crop[0].stop - first.crop[0].start
    axes.set_title(f"FRC, mean of {len(first.sections)} sections ({side}×{side} px central crop)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    label_resolutions(axes, frequency[-1], unit)
    save_figure(figure, path)


def label_resolutions(axes, highest_frequency: float, unit: str) -> None:
    """A top axis naming the resolution (1 / frequency) at the bottom axis's ticks."""
    ticks = MaxNLocator(nbins=7).tick_values(0, highest_frequency)
    ticks = ticks[(ticks > 0) & (ticks <= highest_frequency)]
    top = axes.secondary_xaxis("top")
    top.set_xticks(ticks, labels=[f"{1 / t:.3g}" for t in ticks])
    top.set_xlabel(f"resolution ({unit})")


def save_message(path: Path, title: str, message: str) -> None:
    """A small figure saying why a plot is empty, so every audit leaves the same files."""
    figure = Figure(figsize=(6, 2.5), dpi=100)
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save_figure(figure, path)


def save_figure(figure: Figure, path: Path) -> None:
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise AuditOutputError(f"cannot write {path}: {error.strerror}") from None
