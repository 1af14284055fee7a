"""deploy/prefect.yaml end to end: a real Prefect server and process worker run the
super-resolve deployment, and its output is bit-identical to calling the pipeline directly.

Takes about a minute: the session's server starts (~15 s, shared with other modules), the four
flows are deployed, a worker picks up the run and starts the flow in a fresh process.
"""

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect_server import PrefectServer, log_tail, running_worker, wait_for_flow_run

from flows.params import SuperResolveParams
from pipeline.superresolve import super_resolve
from pipeline.volumes import open_volume

REPO = Path(__file__).resolve().parent.parent
PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
POOL = "emsr"
EXPECTED_DEPLOYMENTS = {
    "super-resolve/super-resolve",
    "train/train",
    "extract-training-pairs/extract-training-pairs",
    "audit-metrics/audit-metrics",
}
RUN_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The `emsr` process pool and every deployment of deploy/prefect.yaml, as the docs say,
    on the session's server (conftest's `prefect_server`)."""
    prefect_server.cli("work-pool", "create", POOL, "--type", "process")
    prefect_server.cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE), cwd=REPO
    )
    return prefect_server


@pytest.fixture(scope="module")
def worker(deployed: PrefectServer) -> Iterator[subprocess.Popen]:
    """A process worker of the pool; EMSR_HOME is where the deployments' pull step goes."""
    with running_worker(deployed, POOL, {"EMSR_HOME": str(REPO)}) as process:
        yield process
    assert process.returncode is not None, "the Prefect worker is still running"


def deployment_names() -> set[str]:
    """FLOW/DEPLOYMENT names that deploy/prefect.yaml should create (flow name = deployment)."""
    document = yaml.safe_load(PREFECT_FILE.read_text())
    return {f"{d['name']}/{d['name']}" for d in document["deployments"]}


def test_prefect_yaml_declares_one_deployment_per_flow() -> None:
    assert deployment_names() == EXPECTED_DEPLOYMENTS


def test_every_flow_deploys_with_a_typed_parameter_form(deployed: PrefectServer) -> None:
    """Each deployment's `params` refers to its pydantic model, which the UI renders as a form.

    `prefect deploy` falls back to an untyped schema, silently, when a flow module fails to
    import; this catches that.
    """
    with deployed.client() as client:
        deployments = {name: client.read_deployment_by_name(name) for name in EXPECTED_DEPLOYMENTS}
    for name, deployment in deployments.items():
        schema = deployment.parameter_openapi_schema
        reference = schema["properties"]["params"].get("$ref", "")
        model = reference.rsplit("/", 1)[-1]
        assert model in schema.get("definitions", {}), f"{name} has no typed params form"
        assert deployment.work_pool_name == POOL
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $EMSR_HOME }}"}}
        ]


def run_deployment(server: PrefectServer, name: str, params: dict) -> str:
    """`prefect deployment run NAME --param params=JSON`, as in deploy/README.md; the run id."""
    output = server.cli("deployment", "run", name, "--param", f"params={json.dumps(params)}")
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return match.group(1)


def test_super_resolve_deployment_matches_a_direct_pipeline_call(
    deployed: PrefectServer,
    worker: subprocess.Popen,
    lr_url: str,
    checkpoint_dir: Path,
    tmp_path: Path,
) -> None:
    params = {
        "input_url": lr_url,
        "output_url": str(tmp_path / "deployed.zarr"),
        "checkpoint": str(checkpoint_dir),
        "chunk": [1, 32, 32],
        "block": [2, 64, 160],
        "tile": 32,
        "workers": 1,
        "device": "cpu",
    }
    flow_run_id = run_deployment(deployed, "super-resolve/super-resolve", params)
    flow_run = wait_for_flow_run(deployed, flow_run_id, RUN_TIMEOUT_S)
    worker_log = log_tail(deployed.home / f"worker-{POOL}.log")
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"flow run ended {flow_run.state}:\n{worker_log}"
    )

    direct_params = SuperResolveParams(**{**params, "output_url": str(tmp_path / "direct.zarr")})
    super_resolve(direct_params.to_request())

    everything = (slice(None),) * 3
    deployed_output = open_volume(params["output_url"]).read(everything)
    direct_output = open_volume(direct_params.output_url).read(everything)
    assert deployed_output.any(), "the deployed run wrote nothing"
    assert deployed_output.dtype == direct_output.dtype
    np.testing.assert_array_equal(deployed_output, direct_output)
