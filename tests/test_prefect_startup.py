"""Commands without PREFECT_API_URL: one local Prefect server, started once and reused, and a
start-up that fails as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil
import pytest

from flows.server import LOG, RECORD, START_TIMEOUT_ENV
from pipeline.volumes import write_array

EMSR = str(Path(sys.executable).with_name("emsr"))


def command_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any PREFECT_* setting, with its own PREFECT_HOME."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**inherited, "PREFECT_HOME": str(home), **extra}


def emsr(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EMSR, *arguments], capture_output=True, text=True, env=env, timeout=400)


@pytest.fixture
def audit(tmp_path: Path) -> list[str]:
    """The arguments of a short flow-running command: audit a tiny volume against itself."""
    url = str(tmp_path / "v.zarr")
    write_array(url, np.arange(2 * 32 * 32, dtype=np.uint8).reshape(2, 32, 32), (50.0, 8.0, 8.0))
    return ["audit", "--sr", url, "--reference", url, "--out", str(tmp_path / "audit")]


def test_commands_start_one_local_server_and_reuse_it(tmp_path, audit):
    home = tmp_path / "home"
    env = command_env(home)
    record: dict = {}
    try:
        first = emsr(*audit, env=env)
        assert first.returncode == 0, first.stderr
        record = json.loads((home / RECORD).read_text())
        second = emsr(*audit, env=env)
        assert second.returncode == 0, second.stderr
        assert json.loads((home / RECORD).read_text()) == record and psutil.pid_exists(
            record["pid"]
        )
        stopped = emsr("stop-server", env=env)
        assert f"pid {record['pid']}" in stopped.stdout + stopped.stderr
        psutil.Process(record["pid"]).wait(timeout=30)
    finally:
        with suppress(ProcessLookupError, KeyError, PermissionError):
            os.killpg(record["pid"], signal.SIGKILL)


def test_a_server_that_cannot_start_in_time_is_one_line_exit_2_and_leaves_nothing(tmp_path, audit):
    home = tmp_path / "home"
    env = command_env(
        home, **{START_TIMEOUT_ENV: "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    )
    started = time.monotonic()
    result = emsr(*audit, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: "), result.stderr
    assert len([line for line in lines if "error" in line]) == 1, result.stderr
    assert "PREFECT_API_URL" in lines[-1] and START_TIMEOUT_ENV in lines[-1]
    assert not (home / RECORD).exists() and (home / LOG).exists()
    assert time.monotonic() - started < 120
    prefect_servers = [
        p for p in psutil.process_iter(["cmdline", "environ"])
        if "server" in (p.info["cmdline"] or []) and
        (p.info["environ"] or {}).get("PREFECT_HOME") == str(home)
    ]  # fmt: skip
    assert not prefect_servers
