"""Per-command cost of the Prefect API: Prefect's temporary server in every command (what the
commands did before) against one local server started once and reused (what they do now).

    python bench/prefect_startup.py [--repeats 3]

Each mode runs the same short flow command `--repeats` times in a fresh PREFECT_HOME, with no
PREFECT_API_URL: `emsr audit` of a 2×32×32 volume against itself (the flow's own work is well
under a second). `temporary` sets EMSR_PREFECT_SERVER=temporary (Prefect starts and stops its
own server inside each command; its start-up limit is raised to 600 s so that a loaded
machine measures its cost instead of failing at 20 s); `reused` lets the first command start
the local server and the others find it. The modes alternate, command by command, so both see
the same load. Reported: wall seconds per command, and the ratio of the means (temporary over
reused, the first reused command, which pays the start, left out and shown apart).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import numpy as np

from flows.server import RECORD
from pipeline.volumes import write_array

EMSR = str(Path(sys.executable).with_name("emsr"))


def timed(arguments: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([EMSR, *arguments], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"emsr {' '.join(arguments)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def environment(home: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**inherited, "PREFECT_HOME": str(home), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        url = str(root / "v.zarr")
        write_array(url, np.arange(2048, dtype=np.uint8).reshape(2, 32, 32), (50.0, 8.0, 8.0))
        audit = ["audit", "--sr", url, "--reference", url, "--out", str(root / "audit")]
        temporary_env = environment(
            root / "temporary",
            EMSR_PREFECT_SERVER="temporary",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600",
        )
        reused_env = environment(root / "reused")
        times: dict[str, list[float]] = {"temporary": [], "reused": []}
        try:
            for _ in range(args.repeats + 1):
                times["temporary"].append(timed(audit, temporary_env))
                times["reused"].append(timed(audit, reused_env))
        finally:
            record = json.loads((root / "reused" / RECORD).read_text())
            with suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGTERM)
    first_reused = times["reused"].pop(0)
    times["temporary"].pop(0)  # its first command also creates the database: same footing
    temporary, reused = (statistics.mean(times[m]) for m in ("temporary", "reused"))
    print(json.dumps({
        "seconds_per_command": {m: [round(t, 2) for t in ts] for m, ts in times.items()},
        "first_reused_command_s": round(first_reused, 2),
        "mean_temporary_s": round(temporary, 2),
        "mean_reused_s": round(reused, 2),
        "ratio_temporary_over_reused": round(temporary / reused, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
