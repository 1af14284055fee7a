"""The `emsr` command line: parses options into flow parameters, runs the flow, prints one
closing line saying where the result is. Problems the user can fix end with one line on
stderr and exit code 2 (add --debug for the traceback).

Heavy modules (torch, prefect, dask) are imported inside the commands so `--help` is quick.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from emsr.errors import DEBUG_ENV

app = typer.Typer(
    help="Super-resolve electron-microscopy volumes with EMSR.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

USER_ERROR_EXIT = 2

Triple = Annotated[str | None, typer.Option(metavar="Z,Y,X")]
PREFECT_SERVICE_LOGGERS = ("EventsWorker", "APILogWorker")
QUIET_DASK_LOGGING = {
    "distributed": "warning",
    "distributed.worker": "critical",
    "distributed.worker.memory": "warning",
    "distributed.nanny": "error",  # "still alive after 4 s, killing" on loaded machines
}
WORKER_PRELOAD_ENV = "DASK_DISTRIBUTED__WORKER__PRELOAD"
INTERRUPTED_EXIT = 130


def fail(message: str) -> None:
    from rich.markup import escape

    from flows.progress import console

    console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(USER_ERROR_EXIT)


def triple(text: str | None, name: str) -> tuple[int, int, int] | None:
    from pipeline.geometry import parse_triple

    return parse_triple(text, name) if text else None


def voxel_size_option(text: str | None) -> tuple[float, float, float] | None:
    from pipeline.world import parse_voxel_size

    return parse_voxel_size(text) if text else None


def run_flow(flow: Any, params: Any) -> dict:
    """Run a flow, reporting to the local Prefect server (started once, then reused) unless
    PREFECT_API_URL names one; a failed run becomes its one-line message and exit code 2,
    Ctrl-C one line and exit code 130."""
    from flows.server import prefect_api

    with prefect_api():
        try:
            state = flow(params, return_state=True)
        except KeyboardInterrupt:
            if os.environ.get(DEBUG_ENV):
                raise
            from flows.progress import console

            console().print("interrupted: work finished so far is kept", highlight=False)
            raise typer.Exit(INTERRUPTED_EXIT) from None
        if state.is_failed() or state.is_crashed():
            if os.environ.get(DEBUG_ENV):
                state.result()
            fail(state.message or "the run failed (rerun with --debug for details)")
        return state.result()


def done(message: str) -> None:
    from flows.progress import console

    console().print(message, highlight=False, soft_wrap=True)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="show tracebacks and Prefect's logs")] = False,
) -> None:
    """Runs before every command: quiet Prefect unless debugging."""
    from flows.server import DEFAULT_START_TIMEOUT_S

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's own temporary server (EMSR_PREFECT_SERVER=temporary) gets the same patience
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(DEFAULT_START_TIMEOUT_S))
    )
    if debug:
        os.environ[DEBUG_ENV] = "1"
    else:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
        # Local workers share this terminal; a block's failure reaches the user as our own
        # one line (with the block named), so the workers' tracebacks stay for --debug.
        os.environ.setdefault("DASK_LOGGING", repr(QUIET_DASK_LOGGING))
        # Prefect's background senders log under their class names, outside "prefect", so
        # PREFECT_LOGGING_LEVEL misses them; on a loaded machine "Still processing items"
        # then follows the command's own last line.
        for service in PREFECT_SERVICE_LOGGERS:
            logging.getLogger(service).setLevel(logging.ERROR)
    # Read by dask when the command imports it; local workers then leave Ctrl-C to us.
    os.environ.setdefault(WORKER_PRELOAD_ENV, repr(["pipeline.interrupts"]))


def one_line(error: Exception) -> str:
    """An error as one line; pydantic's multi-line report becomes 'option: problem; …'."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(map(_problem, error.errors()))
    return str(error)


def _problem(error: Any) -> str:
    """One pydantic problem; a check of several options together has no option to name."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    return f"--{'-'.join(map(str, error['loc'])).replace('_', '-')}: {message}"


def guarded(function: Any) -> Any:
    """User errors raised outside a flow (option parsing) become one line too."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from emsr.errors import EMSRError

        try:
            return function(*args, **kwargs)
        except (EMSRError, ValidationError) as error:
            if os.environ.get(DEBUG_ENV):
                raise
            fail(one_line(error))

    return wrapper


@app.command()
@guarded
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="folder for hr_clean, hr, hr2 and lr .zarr")],
    shape: Annotated[str, typer.Option(metavar="Z,Y,X", help="HR shape")] = "16,256,256",
    scale: Annotated[int, typer.Option(help="LR is this much coarser in y and x")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace phantom stores already there")] = False,
) -> None:
    """Write EM-like phantom volumes with known clean truth (the project's test data)."""
    from flows.phantom import write_phantom

    written = write_phantom(out_dir, triple(shape, "--shape"), scale, seed, overwrite=overwrite)
    done(f"phantom volumes: {', '.join(str(p) for p in written)}")


@app.command("import")
@guarded
def import_tiff(
    source: Annotated[Path, typer.Argument(help="folder of per-section TIFFs, or one TIFF")],
    output_url: Annotated[str, typer.Argument(metavar="OUTPUT", help="OME-Zarr volume")],
    voxel_size: Annotated[
        str | None, typer.Option(metavar="Z,Y,X", help="voxel size in nm (required)")
    ] = None,
    chunk: Triple = None,
    threads: Annotated[int, typer.Option(help="sections decoded and written at once")] = 4,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier import in OUTPUT")] = False,
) -> None:
    """Import a TIFF stack (8/16-bit) as an OME-Zarr volume; rerun to resume."""
    from flows.import_stack import import_tiff_flow
    from flows.params import ImportParams

    if voxel_size is None:
        fail("--voxel-size Z,Y,X (nm) is required: TIFFs rarely record it reliably")
    params = ImportParams(
        source=str(source), output_url=output_url, voxel_size=voxel_size_option(voxel_size),
        chunk=triple(chunk, "--chunk"), threads=threads, overwrite=overwrite,
    )  # fmt: skip
    result = run_flow(import_tiff_flow, params)
    z, y, x = result["shape"]
    done(
        f"volume: {result['output']} ({z}×{y}×{x} {result['dtype']}, "
        f"{result['slabs_written']} slabs written, {result['slabs_skipped']} already done)"
    )


@app.command()
@guarded
def train(
    out: Annotated[Path, typer.Option(help="checkpoint directory")],
    lr: Annotated[str | None, typer.Option(help="LR volume URL")] = None,
    hr: Annotated[str | None, typer.Option(help="HR volume URL (may be noisy)")] = None,
    pairs: Annotated[Path | None, typer.Option(help="pair store from extract-pairs")] = None,
    preset: Annotated[str, typer.Option(help="small or paper")] = "small",
    scale: Annotated[int, typer.Option()] = 2,
    loss: Annotated[str, typer.Option(help="l1, l2 or charbonnier")] = "l1",
    steps: Annotated[int, typer.Option()] = 500,
    batch_size: Annotated[int, typer.Option()] = 4,
    patch: Annotated[int, typer.Option(help="LR patch size, px")] = 48,
    learning_rate: Annotated[float, typer.Option()] = 1e-4,
    halve_every: Annotated[
        int, typer.Option(help="halve the learning rate every N steps")
    ] = 50_000,
    checkpoint_every: Annotated[
        int, typer.Option(help="save a resumable checkpoint every N steps")
    ] = 100,
    validate_every: Annotated[int, typer.Option(help="validation PSNR every N steps")] = 100,
    noisier_branch: Annotated[bool, typer.Option(help="noise-robust weight sharing")] = True,
    edge_attention: Annotated[bool, typer.Option(help="edge-attention gates (ablation)")] = True,
    self_attention: Annotated[bool, typer.Option(help="window self-attention (ablation)")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="continue the checkpoint in --out")] = False,
) -> None:
    """Train EMSR on an LR/HR pair of volumes (or a pair store); no clean reference needed."""
    from flows.params import TrainParams
    from flows.train import train_flow

    params = TrainParams(
        lr_url=lr, hr_url=hr, pairs=str(pairs) if pairs else None, out=str(out),
        preset=preset, scale=scale, loss=loss, steps=steps,
        batch_size=batch_size, patch=patch, learning_rate=learning_rate, halve_every=halve_every,
        checkpoint_every=checkpoint_every, validate_every=validate_every,
        noisier_branch=noisier_branch, edge_attention=edge_attention,
        self_attention=self_attention, device=device, seed=seed, resume=resume,
    )  # fmt: skip
    result = run_flow(train_flow, params)
    psnr = result["validation_psnr_db"]
    tail = f", validation PSNR {psnr:.2f} dB" if psnr is not None else ""
    halo = result["validated_halo_px"]
    tail += f", validated halo {halo} px" if halo is not None else ", no halo validated"
    done(f"checkpoint: {result['checkpoint']} at step {result['step']}{tail}")


@app.command("extract-pairs")
@guarded
def extract_pairs(
    hr: Annotated[str, typer.Option(help="HR volume URL")],
    out: Annotated[Path, typer.Option(help="training-pair store directory to write")],
    lr: Annotated[str | None, typer.Option(help="acquired LR volume URL of the same field")] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="real, synthetic or denoised (default: real with --lr, else synthetic)"),
    ] = None,
    scale: Annotated[int, typer.Option(help="LR pixels are this much larger in y and x")] = 2,
    psf_sigma: Annotated[float, typer.Option(help="synthetic: PSF sigma, HR px")] = 1.0,
    noise: Annotated[
        str, typer.Option(help="synthetic: none, gaussian, poisson_gaussian or local_variance")
    ] = "gaussian",
    noise_sigma: Annotated[float, typer.Option(help="synthetic: noise std, 0-1 range")] = 0.03,
    fit_noise: Annotated[bool, typer.Option(help="synthetic: match the noise of --lr")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store in --out")] = False,
    voxel_size: Annotated[
        str | None, typer.Option(metavar="Z,Y,X", help="HR voxel size, nm (if not recorded)")
    ] = None,
) -> None:
    """Make a training-pair store: acquired LR + HR, synthetic LR from HR, or LR + denoised HR."""
    from flows.extract_pairs import ExtractPairsParams, extract_training_pairs_flow

    params = ExtractPairsParams(
        hr_url=hr, lr_url=lr, out=str(out), mode=mode, scale=scale, psf_sigma=psf_sigma,
        noise=noise, noise_sigma=noise_sigma, fit_noise=fit_noise, seed=seed, overwrite=overwrite,
        voxel_size=voxel_size_option(voxel_size),
    )  # fmt: skip
    result = run_flow(extract_training_pairs_flow, params)
    done(f"training pairs: {result['store']} (manifest {result['manifest']})")


@app.command("super-resolve")
@guarded
def super_resolve(
    input_url: Annotated[str, typer.Argument(metavar="INPUT", help="LR volume URL")],
    output_url: Annotated[str, typer.Argument(metavar="OUTPUT", help="SR volume URL")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory")],
    block: Triple = None,
    chunk: Triple = None,
    shard: Triple = None,
    roi: Annotated[
        str | None, typer.Option(metavar="z0:z1,y0:y1,x0:x1", help="output voxels")
    ] = None,
    roi_nm: Annotated[
        str | None,
        typer.Option(metavar="z0:z1,y0:y1,x0:x1", help="world nm, in the input's frame"),
    ] = None,
    voxel_size: Annotated[
        str | None, typer.Option(metavar="Z,Y,X", help="input voxel size, nm (if not recorded)")
    ] = None,
    tile: Annotated[int, typer.Option(help="LR tile core, px")] = 512,
    halo: Annotated[
        int | None,
        typer.Option(help="LR context per tile side, px; unset: 16, or more if the model needs it"),
    ] = None,
    scale: Annotated[int | None, typer.Option(help="must match the checkpoint")] = None,
    normalization: Annotated[
        str, typer.Option(help="checkpoint (the training mapping), dtype or percentile")
    ] = "checkpoint",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16")] = "auto",
    compute_empty: Annotated[
        bool, typer.Option(help="compute tiles that see only zeros and no data")
    ] = False,
    cluster: Annotated[str, typer.Option(help="local, slurm or tcp://HOST:PORT")] = "local",
    workers: Annotated[int, typer.Option()] = 2,
    threads_per_worker: Annotated[int, typer.Option()] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    batch_size: Annotated[int, typer.Option()] = 4,
    retries: Annotated[int, typer.Option(help="attempts after a block's first failure")] = 2,
    max_failures: Annotated[int | None, typer.Option(help="stop after N failed blocks")] = None,
    block_timeout: Annotated[
        float | None, typer.Option(help="seconds a block may run [default: 10× median block]")
    ] = None,
    worker_wait: Annotated[
        float | None, typer.Option(help="seconds to wait for workers when none is alive")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an output of another run")] = False,
    slurm_config: Annotated[Path | None, typer.Option(help="dask-jobqueue YAML")] = None,
) -> None:
    """Super-resolve a volume blockwise on Dask; rerun the same command to resume."""
    from flows.params import SuperResolveParams
    from flows.super_resolve import super_resolve_flow

    params = SuperResolveParams(
        input_url=input_url, output_url=output_url, checkpoint=str(checkpoint),
        block=triple(block, "--block"), chunk=triple(chunk, "--chunk"),
        shard=triple(shard, "--shard"), roi=roi, roi_nm=roi_nm,
        voxel_size=voxel_size_option(voxel_size), tile=tile, halo=halo, scale=scale,
        normalization=normalization, precision=precision, compute_empty=compute_empty,
        cluster=cluster, workers=workers,
        threads_per_worker=threads_per_worker, device=device, batch_size=batch_size,
        retries=retries, max_failures=max_failures, block_timeout=block_timeout,
        **({"worker_wait": worker_wait} if worker_wait else {}), overwrite=overwrite,
        slurm_config=str(slurm_config) if slurm_config else None,
    )  # fmt: skip
    result = run_flow(super_resolve_flow, params)
    done(
        f"output: {result['output']} ({result['blocks_computed']} blocks computed, "
        f"{result['blocks_skipped']} already done)"
    )


@app.command()
@guarded
def plan(
    input_url: Annotated[str, typer.Argument(metavar="INPUT", help="LR volume URL")],
    output_url: Annotated[str, typer.Argument(metavar="OUTPUT", help="SR volume URL")],
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint directory")] = None,
    scale: Annotated[int | None, typer.Option(help="SR scale without --checkpoint")] = None,
    block: Triple = None,
    chunk: Triple = None,
    shard: Triple = None,
    roi: Annotated[str | None, typer.Option(metavar="z0:z1,y0:y1,x0:x1")] = None,
    tile: Annotated[int, typer.Option(help="LR tile core, px")] = 512,
    halo: Annotated[int | None, typer.Option(help="LR context per tile side, px")] = None,
    lr_px_per_s: Annotated[float | None, typer.Option(help="LR pixels/s per GPU")] = None,
    measure: Annotated[bool, typer.Option(help="measure LR px/s with the checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for --measure)")] = "auto",
) -> None:
    """Dry run of super-resolve: blocks, objects, bytes, memory, GPU-hours; writes nothing."""
    from rich.console import Console
    from rich.table import Table

    from flows.plan import PlanParams, plan_flow

    params = PlanParams(
        input_url=input_url, output_url=output_url,
        checkpoint=str(checkpoint) if checkpoint else None, scale=scale,
        block=triple(block, "--block"), chunk=triple(chunk, "--chunk"),
        shard=triple(shard, "--shard"), roi=roi, tile=tile, halo=halo,
        lr_px_per_s=lr_px_per_s, measure=measure, device=device,
    )  # fmt: skip
    table = Table("quantity", "value", title="super-resolve plan (nothing written)")
    for name, value in run_flow(plan_flow, params):
        table.add_row(name, value)
    Console(width=120).print(table)  # the result: on stdout
    done(f"plan of {output_url}: nothing was written")


@app.command()
@guarded
def audit(
    sr: Annotated[str, typer.Option(help="super-resolved volume URL")],
    out: Annotated[Path, typer.Option(help="folder for metrics.json, scores, map and plots")],
    reference: Annotated[str | None, typer.Option(help="HR scan of (part of) the field")] = None,
    reference2: Annotated[str | None, typer.Option(help="a second HR scan (FRC)")] = None,
    sr2: Annotated[str | None, typer.Option(help="SR of a second LR scan (FRC, map)")] = None,
    lr: Annotated[str | None, typer.Option(help="the LR scan (single-scan map)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="the run's checkpoint (--lr)")] = None,
    block: Annotated[str | None, typer.Option(metavar="Z,Y,X", help="audit block, voxels")] = None,
    roi: Annotated[str | None, typer.Option(metavar="z0:z1,y0:y1,x0:x1")] = None,
    cluster: Annotated[str, typer.Option(help="local, slurm or tcp://HOST:PORT")] = "local",
    workers: Annotated[int, typer.Option()] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Audit SR quality blockwise: PSNR/SSIM against a reference, FRC, a reference-free map."""
    from flows.audit import AuditParams, audit_metrics_flow, headline

    params = AuditParams(
        sr_url=sr, out=str(out), reference_url=reference, reference2_url=reference2,
        sr2_url=sr2, lr_url=lr, checkpoint=str(checkpoint) if checkpoint else None,
        block=triple(block, "--block"), roi=roi, cluster=cluster, workers=workers, device=device,
    )  # fmt: skip
    result = run_flow(audit_metrics_flow, params)
    done(f"metrics: {result['metrics_json']} ({headline(result)})")


@app.command()
@guarded
def demo(
    directory: Annotated[Path, typer.Argument(help="folder for every result")] = Path(
        "demo-output"
    ),
    steps: Annotated[int, typer.Option(help="training steps of the small model")] = 300,
    overwrite: Annotated[
        bool, typer.Option(help="use a folder holding other files (only the demo's are replaced)")
    ] = False,
) -> None:
    """The whole story on CPU in minutes: phantom → pairs → train → super-resolve → audit."""
    from flows.demo import DemoParams, demo_flow

    params = DemoParams(directory=str(directory), steps=steps, overwrite=overwrite)
    result = run_flow(demo_flow, params)
    metrics = result["metrics"]
    done(
        f"demo done: phantom {result['phantom']}, checkpoint {result['checkpoint']}, "
        f"super-resolved {result['sr']}, audit {result['audit']} "
        f"(PSNR {metrics['psnr']:.2f} dB and SSIM {metrics['ssim']:.3f} against the clean truth)"
    )


@app.command("stop-server")
@guarded
def stop_server() -> None:
    """Stop the local Prefect server that commands start once and then reuse."""
    from flows.server import stop_local_server

    pid = stop_local_server()
    done(f"stopped the local Prefect server (pid {pid})" if pid else "no local Prefect server ran")


if __name__ == "__main__":
    app()
