"""The import flow: a lab's TIFF stack in, an OME-Zarr volume the pipeline reads out."""

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.params import ImportParams
from flows.progress import ProgressReport
from flows.states import fail_on_user_error
from pipeline.superresolve import output_source
from pipeline.tiff_import import TiffStack, import_stack


@flow(name="import-tiff", log_prints=True)
@fail_on_user_error
def import_tiff_flow(params: ImportParams) -> dict:
    """Write a folder of per-section TIFFs (or a multi-page TIFF) as OME-Zarr; resumable."""
    stack = TiffStack.scan(Path(params.source))
    with ProgressReport("import", "slabs") as progress:
        report = import_stack(
            stack, params.output_url, params.voxel_size, chunk=params.chunk,
            overwrite=params.overwrite, threads=params.threads,
            on_start=progress.start, on_progress=progress.advance_to,
        )  # fmt: skip
    result = {
        "output": output_source(params.output_url),
        "shape": list(stack.shape),
        "dtype": stack.dtype.name,
        "voxel_size_nm": list(params.voxel_size),
        "slabs_written": report.slabs_written,
        "slabs_skipped": report.slabs_skipped,
    }
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items())
    create_markdown_artifact(f"## Import\n\n| | |\n|---|---|\n{rows}\n", key="import-summary")
    return result
