"""The Prefect API the commands report to: one local server, started once and reused.

With PREFECT_API_URL set (a team's server, a deployment) that server is used and nothing is
started. Without it, Prefect 3 starts a temporary server inside every command: ~15 s each
time, and under load its start-up misses Prefect's 20 s limit and the command dies with a
traceback. Instead, the first command starts one local server in the background (SQLite and
its log under PREFECT_HOME, no UI), gives it the time a loaded machine needs, and records
where it answers; later commands find it there and start nothing. `emsr stop-server` stops
it; EMSR_PREFECT_SERVER=temporary keeps Prefect's own server-per-command instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path

from emsr.errors import EMSRError

START_TIMEOUT_ENV = "EMSR_PREFECT_START_TIMEOUT"
DEFAULT_START_TIMEOUT_S = 180.0
"""Seconds a starting server may take: ~15 s on an idle laptop, over 60 s on a loaded node."""
MODE_ENV = "EMSR_PREFECT_SERVER"
RECORD = "emsr-server.json"
LOG = "emsr-server.log"
_HEALTH_TIMEOUT_S = 2.0


class PrefectServerError(EMSRError):
    """The local Prefect server could not be started."""


def prefect_api() -> AbstractContextManager[object]:
    """Settings under which a flow called in this process reports to a running server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value() or os.environ.get(MODE_ENV) == "temporary":
        return nullcontext()
    return temporary_settings({PREFECT_API_URL: local_server()})


def local_server() -> str:
    """The API URL of the local server, started now if none answers (one at a time)."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / f"{RECORD}.lock"):
        recorded = _recorded(home)
        if recorded and _healthy(recorded["api_url"]):
            return recorded["api_url"]
        return _start(home)


def stop_local_server() -> int | None:
    """Stop the recorded local server (by its PID); the PID, or None if none was running."""
    home = prefect_home()
    with _locked(home / f"{RECORD}.lock"):
        recorded = _recorded(home)
        (home / RECORD).unlink(missing_ok=True)
    if not recorded or not _healthy(recorded["api_url"]):
        return None
    with suppress(ProcessLookupError):
        os.killpg(recorded["pid"], signal.SIGTERM)
    return recorded["pid"]


def prefect_home() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser()


def _start(home: Path) -> str:
    timeout = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    environment = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    environment.pop("PREFECT_API_URL", None)
    with (home / LOG).open("ab") as log:
        process = subprocess.Popen(
            command, cwd=home, env=environment, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,  # outlives this command
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _healthy(api_url):
            (home / RECORD).write_text(json.dumps({"api_url": api_url, "pid": process.pid}))
            return api_url
        time.sleep(0.25)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    why = "exited" if process.returncode not in (None, -signal.SIGKILL) else "did not answer"
    raise PrefectServerError(
        f"the local Prefect server {why} within {timeout:g} s (its log: {home / LOG}): set "
        f"PREFECT_API_URL to a running server, or give it longer with {START_TIMEOUT_ENV}=SECONDS"
    )


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=_HEALTH_TIMEOUT_S) as response:
            return json.load(response) is True
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def _recorded(home: Path) -> dict | None:
    try:
        return json.loads((home / RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between commands of this PREFECT_HOME (two starting at once)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
