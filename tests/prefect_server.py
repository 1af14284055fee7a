"""A real Prefect server, worker and command line for end-to-end tests.

`running_server` starts `prefect server start` on 127.0.0.1 at a free port, with its own
temporary PREFECT_HOME (so the SQLite database, profiles and logs live there and nothing of the
user's Prefect setup is read or changed), and yields once `/api/health` answers. `running_worker`
starts `prefect worker start` against it. Both are subprocesses in their own process groups;
on exit each is stopped together with everything it started (uvicorn, flow-run processes, their
Dask workers), by PID, and an error is raised if anything survives.

Reuse: tests/test_deployments.py wraps `running_server` in the session-scoped `prefect_server`
fixture; moved to conftest.py, that fixture lets every module share one server (~15 s to start).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from flows.server import DEFAULT_START_TIMEOUT_S

PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT_S = DEFAULT_START_TIMEOUT_S  # what a loaded machine needs, as for the CLI
STOP_TIMEOUT_S = 20.0
SERVER_LOG = "server.log"
LOG_TAIL_CHARS = 4000


class PrefectProcessError(RuntimeError):
    """A Prefect subprocess failed; the message carries the tail of its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""


def prefect_environment(
    home: Path, api_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without its PREFECT_* settings, pointed at `api_url`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {
        **inherited,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(extra or {}),
    }


@dataclass(frozen=True)
class PrefectServer:
    """A running server: where it answers, its PREFECT_HOME, and how to talk to it."""

    api_url: str
    home: Path
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.home / SERVER_LOG

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return prefect_environment(self.home, self.api_url, extra)

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 120.0) -> str:
        """Run `prefect ARGS` against this server; return its output, raise if it fails."""
        result = subprocess.run(
            [PREFECT, *args],
            cwd=cwd or self.home,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise PrefectProcessError(
                f"prefect {' '.join(args)} exited {result.returncode}:\n{output[-LOG_TAIL_CHARS:]}"
            )
        return output

    def client(self) -> SyncPrefectClient:
        """A synchronous API client of this server (use it as a context manager)."""
        return SyncPrefectClient(self.api_url)


def wait_until_healthy(api_url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectProcessError(f"the Prefect server exited:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if json.load(response) is True:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise PrefectProcessError(f"no answer from {api_url}/health in {timeout:g} s:\n{log_tail(log)}")


@contextmanager
def running_server(home: Path, timeout: float = SERVER_START_TIMEOUT_S) -> Iterator[PrefectServer]:
    """A Prefect server (SQLite under `home`, no UI) until the block ends."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with (home / SERVER_LOG).open("w") as log:
        process = subprocess.Popen(
            command, cwd=home, env=prefect_environment(home, api_url), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = PrefectServer(api_url, home, process)
    try:
        wait_until_healthy(api_url, process, server.log, timeout)
        yield server
    finally:
        stop_process_tree(process)


@contextmanager
def running_worker(
    server: PrefectServer, pool: str, environment: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL` (polling every second) until the block ends.

    It runs in PREFECT_HOME, not in the repository, so a deployment only finds its code if
    its pull steps take it there. Its output goes to `worker-POOL.log` there.
    """
    log_path = server.home / f"worker-{pool}.log"
    env = server.environment({"PREFECT_WORKER_QUERY_SECONDS": "1", **(environment or {})})
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
            cwd=server.home, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop_process_tree(process)


def wait_for_flow_run(server: PrefectServer, flow_run_id: str, timeout: float) -> FlowRun:
    """Poll the flow run until it reaches a final state; return it (raise on timeout)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                state = flow_run.state.name if flow_run.state else "no state"
                raise TimeoutError(f"flow run {flow_run_id} still {state} after {timeout:g} s")
            time.sleep(1.0)


def stop_process_tree(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a process started with `start_new_session=True` and everything it started.

    SIGTERM goes to its process group and to descendants that made groups of their own (Prefect
    starts each flow run in a new session); whatever still runs after `timeout` gets SIGKILL.
    Raises if any of them is still alive at the end.
    """
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    for member in tree:  # one SIGTERM each: Prefect's CLI turns a second one into SIGKILL
        with suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(member.pid) != process.pid:
                member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for member in alive:
        with suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    process.poll()
    survivors = [member.pid for member in tree if _is_alive(member)]
    if survivors:
        raise PrefectProcessError(f"processes {survivors} survived stopping {process.args}")


def _is_alive(member: psutil.Process) -> bool:
    try:
        return member.is_running() and member.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
