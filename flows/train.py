"""The train flow: EMSR on aligned LR/HR volumes (noisy references are fine), with progress;
when training ends, the halo its tiles need is measured and stored in the checkpoint."""

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from emsr.checkpoint import CONFIG
from emsr.data import PairedVolumes
from emsr.errors import DataError
from emsr.training import TrainConfig, TrainProgress, train
from flows.params import TrainParams
from flows.progress import ProgressReport
from flows.states import fail_on_user_error
from pipeline.pairs import MANIFEST, check_voxel_sizes, read_pair_store
from pipeline.preflight import check_input
from pipeline.seams import MEASURE_TILE, record_halo_validation, sample_sections
from pipeline.urls import Location, confine, refuse_overlap
from pipeline.volumes import open_volume


def open_pairs(lr_url: str, hr_url: str, scale: int) -> PairedVolumes:
    """Open both volumes lazily (patches are read as drawn) and check they pair at `scale`."""
    lr, hr = open_volume(lr_url), open_volume(hr_url)
    check_input(lr.info)
    check_input(hr.info)
    check_voxel_sizes(lr, hr, scale)
    return PairedVolumes.from_arrays(lr.array, hr.array, scale)


def train_config(params: TrainParams) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in params.model_dump().items() if k in fields})


@flow(name="train", log_prints=True)
@fail_on_user_error
def train_flow(params: TrainParams) -> dict:
    """Train (or resume) EMSR and leave a checkpoint directory."""
    out = Path(confine(params.out))
    if params.pairs:
        store = read_pair_store(confine(params.pairs))
        if store.scale != params.scale:
            raise DataError(f"{params.pairs} holds ×{store.scale} pairs, not ×{params.scale}")
        lr_url, hr_url, inputs = store.lr_url, store.hr_url, {params.pairs: store.directory}
    else:
        lr_url, hr_url, inputs = params.lr_url, params.hr_url, {}
    refuse_overlap(
        {params.out: Location.of_path(out / CONFIG)},
        {**{url: Location.of_volume(url) for url in (lr_url, hr_url)},
         **{name: Location.of_path(path / MANIFEST) for name, path in inputs.items()}},
    )  # fmt: skip
    pairs = open_pairs(lr_url, hr_url, params.scale)
    config = train_config(params)
    with ProgressReport("train", "steps") as progress:
        progress.start(config.steps)

        def on_progress(update: TrainProgress) -> None:
            psnr = f"val {update.validation_psnr:.2f} dB" if update.validation_psnr else ""
            progress.advance_to(update.step, f"loss {update.loss:.4f} {psnr}")

        result = train(pairs, config, params.out, resume=params.resume, on_progress=on_progress)
        progress.advance_to(result.step, "measuring the halo the seams need…")
        sample = sample_sections(pairs.lr, pairs.lr_range, MEASURE_TILE)
        halo = record_halo_validation(result.checkpoint, sample)
        progress.advance_to(result.step, halo.summary())
    record = halo.record()
    summary = {
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "validation_psnr_db": result.validation_psnr,
        "validated_halo_px": record.halo if record else None,
        "seam_psnr_db": record.seam_psnr_db if record else None,
    }
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    create_markdown_artifact(f"## Training\n\n| | |\n|---|---|\n{rows}\n", key="train-summary")
    return summary
