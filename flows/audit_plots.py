"""The audit's figures: block PSNR and the quality map as heat maps over (y, x), and the FRC
curves of the global comparisons. Every audit leaves the same three files: a plot that has
nothing to show says why instead."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.audit.document import AuditOutputError
from pipeline.audit.run import AuditResult
from pipeline.audit.sections import FRCComparison, in_plane_pixel_nm
from pipeline.geometry import Box

MAX_LABELLED_CELLS = 150  # heatmaps with fewer cells print each block's value on it
PLOTS = {"psnr": "quality_heatmap.png", "map": "quality_map.png", "frc": "frc.png"}


def write_plots(result: AuditResult) -> dict[str, Path]:
    """Draw the three figures next to metrics.json; returns their paths by name."""
    out_dir = result.metrics_path.parent
    paths = {name: out_dir / file for name, file in PLOTS.items()}
    region = Box.parse(result.metrics["region"])
    reduction = result.reduction
    if result.value_range is None or not reduction.scored_voxels:
        save_message(paths["psnr"], "PSNR per block", "no --reference given: PSNR not computed")
    else:
        psnr_db = reduction.psnr(result.value_range)
        overall = "identical" if math.isinf(psnr_db) else f"{psnr_db:.2f} dB"
        grid = reduction.column_psnr(result.value_range)
        plot_grid(
            paths["psnr"], grid, region, reduction.grid.block, result.voxel_nm,
            f"PSNR per block, over all {region.shape[0]} sections (global {overall})", "PSNR (dB)",
        )  # fmt: skip
    if result.quality_map_path is None:
        save_message(paths["map"], "Quality map", "give --sr2, or --lr with --checkpoint")
    else:
        with np.errstate(all="ignore"):
            folded = np.nanmedian(reduction.resolution_nm, axis=0)
        plot_grid(
            paths["map"], folded, region, reduction.grid.block, result.voxel_nm,
            "Resolution per block without a reference (median over z)", "FRC resolution (nm)",
            colour_map="viridis_r",
        )  # fmt: skip
    plot_frc(paths["frc"], result.comparisons, result.voxel_nm)
    return paths


def cell_edges(begin: int, end: int, block: int) -> np.ndarray:
    """The audit lattice's cell edges between `begin` and `end` (cut to them)."""
    inner = range((begin // block + 1) * block, end, block)
    return np.array([begin, *inner, end], dtype=np.float64)


def plot_grid(
    path: Path,
    grid: np.ndarray,
    region: Box,
    block: tuple[int, int, int],
    voxel_nm: tuple[float, float, float] | None,
    title: str,
    label: str,
    colour_map: str = "viridis",
) -> None:
    """One value per (y, x) cell of the region; axes in µm (px if the voxel size is unknown).
    Infinite values (identical to the reference) are drawn light grey."""
    (_, y0, x0), (_, y1, x1) = region.begin, region.end
    shown_cells = grid[y0 // block[1] : -(-y1 // block[1]), x0 // block[2] : -(-x1 // block[2])]
    scale, unit = ((voxel_nm[1] / 1000, voxel_nm[2] / 1000), "µm") if voxel_nm else ((1, 1), "px")
    y_edges = cell_edges(y0, y1, block[1]) * scale[0]
    x_edges = cell_edges(x0, x1, block[2]) * scale[1]
    finite = shown_cells[np.isfinite(shown_cells)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if high - low < 0.1:
        low, high = low - 0.05, high + 0.05
    colours = colormaps[colour_map].with_extremes(over="0.8")

    height, width = y_edges[-1] - y_edges[0], x_edges[-1] - x_edges[0]
    aspect = float(np.clip(height / width, 0.3, 1.5))
    figure = Figure(figsize=(7.0, 1.2 + 5.2 * aspect), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    shown = np.where(np.isinf(shown_cells), high + 1.0, shown_cells)  # inf would be masked
    mesh = axes.pcolormesh(
        x_edges, y_edges, shown, cmap=colours, vmin=low, vmax=high, edgecolors="face"
    )
    axes.set_xlim(x_edges[0], x_edges[-1])
    axes.set_ylim(y_edges[-1], y_edges[0])  # y down, as the sections are displayed
    axes.set_aspect("equal")
    axes.set_xlabel(f"x ({unit})")
    axes.set_ylabel(f"y ({unit})")
    axes.set_title(title)
    if shown_cells.size <= MAX_LABELLED_CELLS:
        label_cells(axes, shown_cells, y_edges, x_edges, mesh, decimals=2 if high - low < 1 else 1)
    identical = bool(np.isinf(shown_cells).any())
    bar = figure.colorbar(mesh, ax=axes, extend="max" if identical else "neither")
    bar.set_label(label + ("; grey: identical to the reference" if identical else ""))
    save_figure(figure, path)


def label_cells(
    axes, grid: np.ndarray, y_edges: np.ndarray, x_edges: np.ndarray, mesh, decimals: int
) -> None:
    """Write each cell's value on it, dark on light colours and light on dark ones."""
    centres_y, centres_x = ((edges[:-1] + edges[1:]) / 2 for edges in (y_edges, x_edges))
    for (row, column), value in np.ndenumerate(grid):
        if np.isnan(value):
            continue
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
