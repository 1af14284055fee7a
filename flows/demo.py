"""The whole story on the embedded default, on CPU, in minutes.

phantom with clean truth → training pairs from its noisy LR/HR scans → train `small` →
super-resolve on local Dask → audit against the truth. Everything lands under one folder.
"""

from pathlib import Path

from prefect import flow
from pydantic import BaseModel, Field

from emsr.errors import EMSRError
from flows.audit import AuditParams, audit_metrics_flow
from flows.extract_pairs import ExtractPairsParams, extract_training_pairs_flow
from flows.params import SuperResolveParams, TrainParams
from flows.phantom import write_phantom
from flows.states import fail_on_user_error, run_subflow
from flows.super_resolve import super_resolve_flow
from flows.train import train_flow
from pipeline.geometry import Triple


class DemoParams(BaseModel):
    """Where the demo writes, and how big and long it is."""

    directory: str = Field("demo-output", description="folder for every result")
    shape: Triple = Field((16, 256, 256), description="HR phantom shape (z, y, x)")
    steps: int = Field(300, ge=1, description="training steps of the small model")
    seed: int = 0
    overwrite: bool = Field(False, description="use a folder that holds other files")


MARKER = "emsr-demo.json"
"""Left in the demo's folder, so a rerun knows the results there are its own to replace."""


def claim_folder(root: Path, overwrite: bool) -> None:
    """The demo replaces its earlier results, never a user's data without --overwrite."""
    foreign = root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists()
    if foreign and not overwrite:
        raise EMSRError(
            f"{root} holds files no demo wrote: choose an empty or new folder, or pass "
            "--overwrite to let the demo replace its own results there (phantom/, pairs/, "
            "checkpoint/, sr.zarr, audit/) and nothing else"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text('{"written_by": "emsr demo"}\n')
    except OSError as error:
        raise EMSRError(
            f"cannot write in {root}: {error.strerror}; choose another folder"
        ) from None


def demo_paths(root: Path) -> dict[str, Path]:
    phantom = root / "phantom"
    return {
        "phantom": phantom,
        "lr": phantom / "lr.zarr",
        "hr": phantom / "hr.zarr",
        "hr2": phantom / "hr2.zarr",
        "truth": phantom / "hr_clean.zarr",
        "pairs": root / "pairs",
        "checkpoint": root / "checkpoint",
        "sr": root / "sr.zarr",
        "audit": root / "audit",
    }


@flow(name="demo", log_prints=True)
@fail_on_user_error
def demo_flow(params: DemoParams) -> dict:
    """Phantom → pairs → train → super-resolve → audit; returns where each result is."""
    root = Path(params.directory).resolve()
    claim_folder(root, params.overwrite)
    paths = demo_paths(root)
    write_phantom(paths["phantom"], params.shape, scale=2, seed=params.seed, overwrite=True)
    pairs = ExtractPairsParams(
        hr_url=str(paths["hr"]), lr_url=str(paths["lr"]), out=str(paths["pairs"]),
        mode="real", scale=2, overwrite=True,
    )  # fmt: skip
    store = run_subflow(extract_training_pairs_flow, pairs)
    training = TrainParams(
        pairs=store["store"], out=str(paths["checkpoint"]),
        preset="small", scale=2, steps=params.steps, learning_rate=1e-3,
        halve_every=max(1, params.steps * 2 // 3), seed=params.seed, device="cpu",
        resume=(paths["checkpoint"] / "config.json").exists(),
    )  # fmt: skip
    trained = run_subflow(train_flow, training)
    super_resolved = run_subflow(
        super_resolve_flow,
        SuperResolveParams(
            input_url=str(paths["lr"]), output_url=str(paths["sr"]),
            checkpoint=str(paths["checkpoint"]), block=(4, 512, 512), device="cpu", workers=2,
            overwrite=True,
        ),
    )  # fmt: skip
    audit = run_subflow(
        audit_metrics_flow,
        AuditParams(
            sr_url=str(paths["sr"]), reference_url=str(paths["truth"]),
            reference2_url=str(paths["hr2"]), out=str(paths["audit"]), block=(1, 64, 64),
        ),
    )  # fmt: skip
    return {
        "phantom": str(paths["phantom"]),
        "pairs": str(paths["pairs"]),
        "checkpoint": trained["checkpoint"],
        "sr": super_resolved["output"],
        "audit": str(paths["audit"]),
        "metrics": audit,
    }
