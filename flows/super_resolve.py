"""The super-resolve flow: one coarse Prefect flow around the blockwise pipeline.

Blocks run as plain Dask tasks inside it (Prefect's per-task overhead would dominate
10⁵ small blocks); the flow contributes parameters, progress and a summary artifact.
"""

import json
import urllib.parse

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.params import SuperResolveParams
from flows.progress import ProgressReport, run_status
from flows.states import fail_on_user_error
from pipeline.dispatch import RunProgress, RunReport
from pipeline.errors import BlockFailedError
from pipeline.superresolve import output_source, super_resolve


def neuroglancer_link(source: str) -> str:
    """A Neuroglancer URL showing `source` as an image layer."""
    state = {"layers": [{"type": "image", "source": source, "name": "super-resolved"}]}
    return "https://neuroglancer-demo.appspot.com/#!" + urllib.parse.quote(json.dumps(state))


def summary(report: RunReport, source: str) -> dict:
    rate = report.voxels_written / report.seconds if report.seconds else 0.0
    return {
        "output": source,
        "blocks_total": report.blocks_total,
        "blocks_skipped": report.blocks_skipped,
        "blocks_computed": report.blocks_computed,
        "voxels_written": report.voxels_written,
        "seconds": round(report.seconds, 3),
        "voxels_per_second": round(rate, 1),
        "redundant_compute": round(report.redundancy, 4),
        "blocks_retried": report.retried,
        "utilisation": round(report.utilisation, 3),
    }


def summary_markdown(result: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items())
    return (
        f"## Super-resolution\n\n| | |\n|---|---|\n{rows}\n\n"
        f"[Open in Neuroglancer]({neuroglancer_link(result['output'])})\n"
    )


def failures_markdown(failure: BlockFailedError) -> str:
    """Every block that failed, with its output box and last error: what a rerun redoes."""
    rows = "\n".join(
        f"| {block.index} | `{block.box}` | {block.attempts} | {block.error.replace('|', '/')} |"
        for block in failure.failed
    )
    return (
        f"## Failed blocks\n\n{failure}\n\n| block | output box | attempts | last error |\n"
        f"|---|---|---|---|\n{rows}\n"
    )


@flow(name="super-resolve", log_prints=True)
@fail_on_user_error
def super_resolve_flow(params: SuperResolveParams) -> dict:
    """Super-resolve a volume blockwise on a Dask cluster; resumable from the done ledger."""
    with ProgressReport("super-resolve", "blocks") as progress:

        def on_progress(update: RunProgress) -> None:
            progress.advance_to(update.blocks_done, run_status(update))

        try:
            report = super_resolve(
                params.to_request(), on_start=progress.start, on_progress=on_progress
            )
        except BlockFailedError as failure:
            create_markdown_artifact(failures_markdown(failure), key="super-resolve-failures")
            raise
    result = summary(report, output_source(params.output_url))
    create_markdown_artifact(summary_markdown(result), key="super-resolve-summary")
    return result
