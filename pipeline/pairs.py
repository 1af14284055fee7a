"""Training-pair stores: an LR and an HR volume of one field, checked and ready for training.

EMSR-NOTES compares three kinds of pair, all made here from acquired volumes:

- ``real``: the acquired LR scan and the acquired HR scan, both noisy;
- ``synthetic``: an LR made from the HR by a degradation model (blur, bin, noise), whose
  noise can be fitted to an acquired LR scan;
- ``denoised``: the acquired LR scan and the HR denoised by non-local means.

A store is a directory holding `lr.zarr`, `hr.zarr` and `manifest.json`, which says how the pair
was made; `read_pair_store` is all training needs. An acquired pair is checked, never silently
fixed: voxel sizes must match the scale, and the scans must be registered to within a fraction
of an LR pixel. Volumes are read and written one section at a time, so memory stays bounded by
one section whatever the volume's depth. Intensities are in units of the dtype's full range
(0–1), as the model sees them; noise levels are stds in those units.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation
from skimage.restoration import denoise_nl_means

from emsr.degradations import (
    Degradation,
    DownsampleMethod,
    NoiseKind,
    downsample,
    estimate_noise_sigma,
)
from emsr.errors import DataError
from emsr.intensity import IntensityRange
from pipeline.preflight import check_input
from pipeline.urls import Location, confine, redact, refuse_overlap
from pipeline.volumes import (
    Triple,
    Volume,
    Voxel,
    create_volume,
    open_volume,
    require_voxel_size,
)

PairMode = Literal["real", "synthetic", "denoised"]
ProgressCallback = Callable[[int, int], None]

PAIR_FORMAT = "emsr-pairs"
PAIR_VERSION = 1
MANIFEST = "manifest.json"
LR_NAME, HR_NAME = "lr.zarr", "hr.zarr"

DEFAULT_MAX_OFFSET_LR_PX = 0.5
"""Half an LR pixel: beyond that the network would learn a shift along with the detail."""
DEFAULT_MIN_CONFIDENCE = 0.3
"""Correlation of the registered LR and binned HR below which they are not the same field."""

_SAMPLED_SECTIONS = 5  # sections registered, and measured for noise, evenly spaced in z
_SAMPLE_WINDOW_LR_PX = 1024  # central crop of those sections: enough pixels, bounded cost
_MIN_REGISTRATION_PX = 16
_UPSAMPLE_FACTOR = 20  # offsets to 1/20 LR pixel
_STORE_CHUNK_YX = 256
_NLM_PATCH_PX = 5
_NLM_DISTANCE_PX = 6
_NLM_H_OVER_SIGMA = 0.8  # scikit-image's advice for its fast mode; +4 dB on the phantom's HR


class Offset(NamedTuple):
    """Where the HR content lies relative to the LR content, in LR pixels, and how sure we are.

    `confidence` is the correlation (Pearson r) of the LR with the binned HR once shifted by
    the offset: near 1 for two scans of one field, near 0 for unrelated images.
    """

    dy: float
    dx: float
    confidence: float


@dataclass(frozen=True)
class PairRequest:
    """Everything a user chooses for one store (the CLI's and the flow's parameters).

    `mode` None means ``real`` when an LR volume is given (and no noise is to be fitted to it),
    else ``synthetic``. `psf_sigma` is in HR pixels; `noise_sigma` is the synthetic noise std
    (the read noise for ``poisson_gaussian``, the std at white for ``local_variance``);
    `max_offset` is in LR pixels. `voxel_size` (nm) is the HR volume's where its metadata has
    none (an LR without one is then HR × (1, scale, scale)).
    """

    hr_url: str
    out: str
    lr_url: str | None = None
    mode: PairMode | None = None
    scale: int = 2
    psf_sigma: float = 1.0
    downsample: DownsampleMethod = "area"
    noise: NoiseKind = "gaussian"
    noise_sigma: float = 0.03
    photons_at_white: float = 100.0
    fit_noise: bool = False
    seed: int = 0
    max_offset: float = DEFAULT_MAX_OFFSET_LR_PX
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    overwrite: bool = False
    voxel_size: Voxel | None = None

    @property
    def resolved_mode(self) -> PairMode:
        if self.mode:
            return self.mode
        return "real" if self.lr_url and not self.fit_noise else "synthetic"


@dataclass(frozen=True)
class PairStore:
    """An opened training-pair store: the two volume URLs training reads, and how they were made."""

    directory: Path
    lr_url: str
    hr_url: str
    scale: int
    manifest: dict = field(repr=False)


@dataclass(frozen=True)
class _Recipe:
    """How to make section z of a pair, what the two outputs look like, what to record."""

    section: Callable[[int], tuple[np.ndarray, np.ndarray]]
    lr_shape: Triple
    hr_shape: Triple
    dtypes: tuple[np.dtype, np.dtype]
    voxel_sizes: tuple[Voxel, Voxel]
    record: dict


def estimate_offset(lr: np.ndarray, hr: np.ndarray, scale: int) -> Offset:
    """The in-plane LR↔HR offset (sub-pixel, LR px) of a section or of a stack of sections.

    The HR is area-binned by `scale` to the LR grid and cross-correlated with the LR (a Hann
    window suppresses the image edges, which would pull the peak to zero shift); a stack gives
    the median over its sections, so a section with a fold or a missing tile cannot sway it.
    """
    lr, hr = np.asarray(lr, dtype=np.float32), np.asarray(hr, dtype=np.float32)
    if lr.ndim == 2 and hr.ndim == 2:
        return _section_offset(lr, hr, scale)
    if lr.ndim != 3 or hr.ndim != 3 or len(lr) != len(hr) or len(lr) == 0:
        raise DataError(f"cannot register LR {lr.shape} with HR {hr.shape}: give matching sections")
    offsets = np.array([_section_offset(a, b, scale) for a, b in zip(lr, hr, strict=True)])
    return Offset(*(float(value) for value in np.median(offsets, axis=0)))


def _section_offset(lr: np.ndarray, hr: np.ndarray, scale: int) -> Offset:
    """Plain (unwhitened) cross-correlation: whitening, as in phase correlation proper,
    amplifies the noisy high frequencies of EM and halves the sub-pixel accuracy here."""
    binned = downsample(hr, scale, "area")
    height, width = (min(a, b) for a, b in zip(lr.shape, binned.shape, strict=True))
    if min(height, width) < _MIN_REGISTRATION_PX:
        raise DataError(
            f"sections of {lr.shape} LR px are too small to register: need "
            f"{_MIN_REGISTRATION_PX} × {_MIN_REGISTRATION_PX} or more"
        )
    lr, binned = lr[:height, :width], binned[:height, :width]
    if lr.std() == 0 or binned.std() == 0:
        return Offset(0.0, 0.0, 0.0)
    hann = window("hann", (height, width))
    shift, _, _ = phase_cross_correlation(
        (lr - lr.mean()) * hann, (binned - binned.mean()) * hann,
        upsample_factor=_UPSAMPLE_FACTOR, normalization=None,
    )  # fmt: skip
    dy, dx = (-float(s) for s in shift)  # the shift that registers the HR is minus its offset
    return Offset(dy, dx, _registered_correlation(lr, binned, (dy, dx)))


def _registered_correlation(
    lr: np.ndarray, binned: np.ndarray, offset: tuple[float, float]
) -> float:
    """Pearson r of the LR and the binned HR moved back by `offset`, away from the edges."""
    moved = ndimage.shift(binned, [-v for v in offset], order=1, mode="nearest")
    margin = math.ceil(max(abs(v) for v in offset)) + 1
    inner = (slice(margin, -margin),) * 2
    a, b = lr[inner].ravel(), moved[inner].ravel()
    if a.size < _MIN_REGISTRATION_PX**2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def denoise_section(section: np.ndarray) -> np.ndarray:
    """Non-local means of one (y, x) section in [0, 1], its strength set by its own noise."""
    sigma = estimate_noise_sigma(section)
    return denoise_nl_means(
        section, h=_NLM_H_OVER_SIGMA * sigma, sigma=sigma, patch_size=_NLM_PATCH_PX,
        patch_distance=_NLM_DISTANCE_PX, fast_mode=True,
    ).astype(np.float32)  # fmt: skip


def check_voxel_sizes(lr: Volume, hr: Volume, scale: int) -> None:
    """LR voxels must be `scale`× the HR voxels in y and x and equal in z (when both are known)."""
    if not (lr.info.voxel_size_known and hr.info.voxel_size_known):
        return
    z, y, x = hr.info.voxel_size_nm
    if not np.allclose(lr.info.voxel_size_nm, (z, y * scale, x * scale), rtol=1e-3):
        raise DataError(
            f"LR voxel size {lr.info.voxel_size_nm} nm is not HR {hr.info.voxel_size_nm} nm × "
            f"(1, {scale}, {scale}); check --scale or the pair of volumes"
        )


def extract_pairs(request: PairRequest, on_progress: ProgressCallback | None = None) -> PairStore:
    """Check the inputs, then write the store section by section and its manifest last.

    `on_progress(done, total)` is called with done = 0 once the work is known, then after each
    section. Every check runs before anything is written; a store without a manifest is
    incomplete and is never read.
    """
    mode = request.resolved_mode
    _check_request(request, mode)
    hr = open_volume(request.hr_url, voxel_size_nm=request.voxel_size)
    z, y, x = require_voxel_size(hr.info)
    lr = open_volume(request.lr_url) if request.lr_url else None
    if lr is not None and not lr.info.voxel_size_known:
        lr = open_volume(request.lr_url, voxel_size_nm=(z, y * request.scale, x * request.scale))
    for volume in filter(None, (hr, lr)):
        check_input(volume.info)
    if lr is not None:
        check_voxel_sizes(lr, hr, request.scale)
    directory = _checked_output(request)
    if mode == "synthetic":
        recipe = _synthetic_recipe(hr, lr, request)
    else:
        recipe = _acquired_recipe(lr, hr, request, denoise=mode == "denoised")
    lr_out, hr_out = _write_volumes(directory, recipe, request, mode, on_progress)
    manifest = _manifest(request, mode, recipe, lr_out, hr_out)
    _write_manifest(directory, manifest)
    return read_pair_store(directory)


def read_pair_store(directory: str | Path) -> PairStore:
    """Open a store made by `extract_pairs`; anything else is refused with one line."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{directory} is not a training-pair store (no {MANIFEST}): make one "
            "with `emsr extract-pairs`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON: rerun `emsr extract-pairs`") from None
    kind = manifest.get("format") if isinstance(manifest, dict) else None
    if kind != PAIR_FORMAT:
        raise DataError(
            f"{path} is not an {PAIR_FORMAT} manifest (format {kind!r}): give the "
            "directory written by `emsr extract-pairs`"
        )
    if manifest.get("version") != PAIR_VERSION:
        raise DataError(
            f"{path} is {PAIR_FORMAT} version {manifest.get('version')!r}; this emsr "
            f"reads version {PAIR_VERSION}: rerun `emsr extract-pairs`"
        )
    scale, lr, hr = manifest.get("scale"), manifest.get("lr"), manifest.get("hr")
    if not (isinstance(scale, int) and scale >= 1 and isinstance(lr, str) and isinstance(hr, str)):
        raise DataError(f"{path} lacks a valid scale, lr or hr entry: rerun `emsr extract-pairs`")
    return PairStore(directory, _resolve(directory, lr), _resolve(directory, hr), scale, manifest)


def _resolve(directory: Path, reference: str) -> str:
    """A store-relative volume path becomes a path; a URL or absolute path is kept."""
    if "://" in reference or "|" in reference or os.path.isabs(reference):
        return reference
    return str(directory / reference)


def _check_request(request: PairRequest, mode: PairMode) -> None:
    """Combinations of options that cannot work, refused before anything is opened."""
    if mode not in ("real", "synthetic", "denoised"):
        raise DataError(f"unknown mode {mode!r}: use real, synthetic or denoised")
    if mode != "synthetic" and not request.lr_url:
        raise DataError(f"--mode {mode} pairs the acquired LR scan with the HR: give --lr")
    if request.fit_noise:
        if mode != "synthetic" or not request.lr_url:
            raise DataError(
                "--fit-noise fits synthetic noise to an acquired LR: use it with "
                "--mode synthetic and --lr"
            )
        if request.noise != "gaussian":
            raise DataError("--fit-noise fits Gaussian noise: use --noise gaussian")
    if request.scale < 1 or int(request.scale) != request.scale:
        raise DataError(f"--scale must be a positive integer, got {request.scale}")
    if request.max_offset < 0:
        raise DataError(f"the offset tolerance must be >= 0 LR px, got {request.max_offset}")


def _checked_output(request: PairRequest) -> Path:
    """The output directory, if writing there loses nothing the user did not ask to replace."""
    if "://" in request.out:
        raise DataError(f"--out must be a local directory, not {redact(request.out)}")
    directory = Path(confine(request.out)).resolve()
    if directory.exists() and not directory.is_dir():
        raise DataError(f"--out {directory} is a file: choose a directory")
    outputs = [directory / name for name in (LR_NAME, HR_NAME, MANIFEST)]
    refuse_overlap(
        {str(path): Location.of_path(path) for path in outputs},
        {url: Location.of_volume(url) for url in filter(None, (request.hr_url, request.lr_url))},
    )
    existing = [path.name for path in outputs if path.exists()]
    if existing and not request.overwrite:
        raise DataError(
            f"{directory} already holds a training-pair store or part of one "
            f"({', '.join(existing)}): pass --overwrite to replace it (nothing else there is "
            "touched) or choose another --out"
        )
    return directory


def _sampled_sections(depth: int) -> list[int]:
    return sorted({int(z) for z in np.linspace(0, depth - 1, num=min(_SAMPLED_SECTIONS, depth))})


def _central(size: int, scale: int = 1) -> slice:
    """The central window of an LR axis of `size` px, in LR (scale 1) or HR pixels."""
    start = (size - min(size, _SAMPLE_WINDOW_LR_PX)) // 2
    return slice(start * scale, (start + min(size, _SAMPLE_WINDOW_LR_PX)) * scale)


def _read_section(volume: Volume, z: int, height: int, width: int) -> np.ndarray:
    """Section z cropped to (height, width) at the far edge, as [0, 1] float32."""
    values = volume.read((slice(z, z + 1), slice(0, height), slice(0, width)))[0]
    return _normalized(volume, values)


def _normalized(volume: Volume, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise DataError(f"{volume.info.url} contains NaN or Inf values; clean it first")
    return IntensityRange.of_dtype(volume.info.dtype).normalize(values)


def _sample(volume: Volume, lr_shape: Triple, scale: int = 1) -> np.ndarray:
    """Central crops of evenly spaced sections, (n, y, x) in [0, 1]: what registration and
    noise measurements look at instead of the whole volume."""
    _, height, width = lr_shape
    box = (_central(height, scale), _central(width, scale))
    return np.stack(
        [
            _normalized(volume, volume.read((slice(z, z + 1), *box))[0])
            for z in _sampled_sections(lr_shape[0])
        ]
    )


def _measured_noise(volume: Volume, lr_shape: Triple, scale: int = 1) -> float:
    return float(np.median([estimate_noise_sigma(s) for s in _sample(volume, lr_shape, scale)]))


def _paired_shapes(lr: Triple, hr: Triple, scale: int) -> tuple[Triple, Triple]:
    """The LR and HR extents both scans cover, cropped at the far edge (origins coincide)."""
    if lr[0] != hr[0]:
        raise DataError(
            f"LR has {lr[0]} sections and HR {hr[0]}: pairs need the same sections "
            "(SR is in-plane, z is not resampled)"
        )
    lr_shape = (lr[0], min(lr[1], hr[1] // scale), min(lr[2], hr[2] // scale))
    return lr_shape, (lr_shape[0], lr_shape[1] * scale, lr_shape[2] * scale)


def _acquired_recipe(lr: Volume, hr: Volume, request: PairRequest, denoise: bool) -> _Recipe:
    """The acquired LR with the acquired (or denoised) HR, once their registration is checked."""
    scale = request.scale
    lr_shape, hr_shape = _paired_shapes(lr.info.shape, hr.info.shape, scale)
    offset = estimate_offset(_sample(lr, lr_shape), _sample(hr, lr_shape, scale), scale)
    _check_registration(offset, request)
    hr_range = IntensityRange.of_dtype(hr.info.dtype)

    def section(z: int) -> tuple[np.ndarray, np.ndarray]:
        lr_section = lr.read((slice(z, z + 1), slice(0, lr_shape[1]), slice(0, lr_shape[2])))[0]
        if not denoise:
            hr_section = hr.read((slice(z, z + 1), slice(0, hr_shape[1]), slice(0, hr_shape[2])))
            return lr_section, hr_section[0]
        clean = denoise_section(_read_section(hr, z, *hr_shape[1:]))
        return lr_section, hr_range.denormalize(clean, hr.info.dtype)

    record = {
        "offset_lr_px": [round(offset.dy, 3), round(offset.dx, 3)],
        "offset_confidence": round(offset.confidence, 4),
    }
    if denoise:
        record["denoiser"] = {
            "method": "non-local means (skimage.restoration.denoise_nl_means, fast mode)",
            "patch_size": _NLM_PATCH_PX, "patch_distance": _NLM_DISTANCE_PX,
            "h_over_sigma": _NLM_H_OVER_SIGMA,
            "sigma": "estimated per section (emsr.degradations.estimate_noise_sigma)",
            "input_hr_noise_sigma": round(_measured_noise(hr, lr_shape, scale), 5),
        }  # fmt: skip
    return _Recipe(
        section=section, lr_shape=lr_shape, hr_shape=hr_shape,
        dtypes=(lr.info.dtype, hr.info.dtype),
        voxel_sizes=(lr.info.voxel_size_nm, hr.info.voxel_size_nm), record=record,
    )  # fmt: skip


def _check_registration(offset: Offset, request: PairRequest) -> None:
    """Refuse a pair that is not the same field, or not registered to within the tolerance."""
    if offset.confidence < request.min_confidence:
        raise DataError(
            f"LR and HR do not look like the same field (correlation {offset.confidence:.2f} at "
            f"the best offset, need >= {request.min_confidence}): check the two volumes"
        )
    if max(abs(offset.dy), abs(offset.dx)) > request.max_offset:
        raise DataError(
            f"HR is offset by ({offset.dy:+.2f}, {offset.dx:+.2f}) LR px (y, x) from the LR, more "
            f"than the {request.max_offset} px tolerated: register the pair first, then rerun"
        )


def _synthetic_recipe(hr: Volume, lr: Volume | None, request: PairRequest) -> _Recipe:
    """An LR made from the HR, section z with its own random stream (reproducible, any order)."""
    scale = request.scale
    depth, height, width = hr.info.shape
    lr_shape = (depth, height // scale, width // scale)
    if min(lr_shape[1:]) < 1:
        raise DataError(f"HR sections of {(height, width)} px hold no whole {scale}×{scale} block")
    hr_shape = (depth, lr_shape[1] * scale, lr_shape[2] * scale)
    noise_sigma, record = request.noise_sigma, {}
    if request.fit_noise and lr is not None:
        noise_sigma, record["noise_fit"] = _fitted_noise(lr, hr, request)
    degradation = _degradation(request, noise_sigma)
    hr_range = IntensityRange.of_dtype(hr.info.dtype)

    def section(z: int) -> tuple[np.ndarray, np.ndarray]:
        hr_section = hr.read((slice(z, z + 1), slice(0, hr_shape[1]), slice(0, hr_shape[2])))[0]
        rng = np.random.default_rng([request.seed, z])
        synthetic = degradation.apply(_normalized(hr, hr_section), rng)
        return hr_range.denormalize(synthetic, hr.info.dtype), hr_section

    z_nm, y_nm, x_nm = hr.info.voxel_size_nm
    record["degradation"] = {**asdict(degradation), "seed": request.seed}
    return _Recipe(
        section=section, lr_shape=lr_shape, hr_shape=hr_shape,
        dtypes=(hr.info.dtype, hr.info.dtype),
        voxel_sizes=((z_nm, y_nm * scale, x_nm * scale), hr.info.voxel_size_nm), record=record,
    )  # fmt: skip


def _degradation(request: PairRequest, noise_sigma: float) -> Degradation:
    try:
        return Degradation(
            psf_sigma_px=request.psf_sigma, scale=request.scale,
            downsample_method=request.downsample, noise=request.noise, noise_sigma=noise_sigma,
            photons_at_white=request.photons_at_white,
        )  # fmt: skip
    except ValueError as error:
        raise DataError(f"synthetic degradation: {error}") from None


def _fitted_noise(lr: Volume, hr: Volume, request: PairRequest) -> tuple[float, dict]:
    """The Gaussian std that, added to the degraded (still slightly noisy) HR, gives the
    acquired LR's noise: the two add in quadrature."""
    lr_shape, _ = _paired_shapes(lr.info.shape, hr.info.shape, request.scale)
    acquired = _measured_noise(lr, lr_shape)
    noiseless = _degradation(request, 0.0)
    degraded = noiseless.apply(_sample(hr, lr_shape, request.scale), np.random.default_rng(0))
    inherited = float(np.median([estimate_noise_sigma(s) for s in degraded]))
    added = math.sqrt(max(acquired**2 - inherited**2, 0.0))
    report = {
        "acquired_lr": round(acquired, 5),
        "inherited_from_hr": round(inherited, 5),
        "added": round(added, 5),
    }
    return added, report


def _write_volumes(
    directory: Path,
    recipe: _Recipe,
    request: PairRequest,
    mode: PairMode,
    on_progress: ProgressCallback | None,
) -> tuple[Volume, Volume]:
    """Create lr.zarr and hr.zarr (one section per chunk row) and fill them section by section."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create {directory}: {error.strerror}; choose a writable --out"
        ) from None
    (directory / MANIFEST).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    provenance = {
        "pairs": {
            "mode": mode,
            "hr": redact(request.hr_url),
            "lr": redact(request.lr_url) if request.lr_url else None,
        }
    }
    volumes = [
        create_volume(str(directory / name), shape, dtype, voxel,
                      (1, min(_STORE_CHUNK_YX, shape[1]), min(_STORE_CHUNK_YX, shape[2])),
                      attributes=provenance, overwrite=True)
        for name, shape, dtype, voxel in zip(
            (LR_NAME, HR_NAME), (recipe.lr_shape, recipe.hr_shape), recipe.dtypes,
            recipe.voxel_sizes, strict=True)
    ]  # fmt: skip
    depth = recipe.lr_shape[0]
    if on_progress:
        on_progress(0, depth)
    for z in range(depth):
        for volume, values in zip(volumes, recipe.section(z), strict=True):
            volume.write((slice(z, z + 1), slice(None), slice(None)), values[None])
        if on_progress:
            on_progress(z + 1, depth)
    return volumes[0], volumes[1]


def _manifest(
    request: PairRequest, mode: PairMode, recipe: _Recipe, lr: Volume, hr: Volume
) -> dict:
    noise = {
        "lr": round(_measured_noise(lr, recipe.lr_shape), 5),
        "hr": round(_measured_noise(hr, recipe.lr_shape, request.scale), 5),
    }
    return {
        "format": PAIR_FORMAT,
        "version": PAIR_VERSION,
        "mode": mode,
        "scale": request.scale,
        "lr": LR_NAME,
        "hr": HR_NAME,
        "source": {
            "hr": redact(request.hr_url),
            "lr": redact(request.lr_url) if request.lr_url else None,
        },
        "shape": {"lr": list(recipe.lr_shape), "hr": list(recipe.hr_shape)},
        "voxel_size_nm": {"lr": list(recipe.voxel_sizes[0]), "hr": list(recipe.voxel_sizes[1])},
        **recipe.record,
        "noise_sigma": noise,
    }


def _write_manifest(directory: Path, manifest: dict) -> None:
    """Write-then-rename: a reader sees the whole manifest or none."""
    partial = directory / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, directory / MANIFEST)
