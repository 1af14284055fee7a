"""A real single-node SLURM cluster in a temporary directory, for tests.

munged, slurmctld and slurmd run as our own child processes in the foreground (`-F`, `-D`), so
teardown stops exactly them by PID. Key, socket, configuration, state, spool and logs all live
under one temporary directory; nothing in /etc or /run is read or changed. The node advertises
one fake GPU (`gres.conf` points it at /dev/null) so GPU-requesting jobs can be scheduled here.

Needs root (slurmd starts jobs as their owner) and the Debian packages from `.ci/slurm.sh`.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from pipeline.cluster import DEFAULT_SLURM_CONFIG

NODE = "localhost"
PARTITION = "debug"
REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "slurm.sh"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run on this machine; the message says why (tests skip with it)."""


def missing_binaries() -> list[str]:
    """The SLURM and munge programs that are not on PATH."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge with `.ci/slurm.sh` where that is possible, or say why not.

    Only as root with apt-get (CI containers); elsewhere the caller skips with the reason.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("a single-node SLURM needs root (slurmd starts jobs as their user)")
    if not missing_binaries():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(missing_binaries())} missing and no apt-get here")
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0 or missing_binaries():
        reason = result.stderr.strip().splitlines()[-1:] or ["binaries still missing"]
        raise SlurmUnavailable(f"installing SLURM with {INSTALL_SCRIPT} failed: {reason[0]}")


@contextmanager
def single_node_slurm(startup_timeout: float = 30.0) -> Iterator[dict[str, str]]:
    """Run munged, slurmctld and slurmd until the block ends; yield the environment to use.

    The yielded mapping holds `SLURM_CONF`, which every SLURM command (sbatch, squeue, and
    dask-jobqueue's calls to them) needs in its environment to find this cluster.
    """
    ensure_slurm_installed()
    root = Path(tempfile.mkdtemp(prefix="emsr-slurm-"))
    root.chmod(0o755)  # munged refuses sockets in directories others cannot traverse
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        munge_socket = _start_munged(root, stack)
        env = {"SLURM_CONF": str(_write_configuration(root, munge_socket))}
        daemon_env = {**os.environ, **env}
        daemons = [
            _spawn(["slurmctld", "-D"], root / "log" / "slurmctld.out", daemon_env, stack),
            _spawn(["slurmd", "-D", "-N", NODE], root / "log" / "slurmd.out", daemon_env, stack),
        ]
        stack.callback(_cancel_all_jobs, daemon_env)  # runs before the daemons stop
        _wait_for(
            lambda: _node_state(daemon_env) == "idle",
            startup_timeout,
            daemons,
            f"the SLURM node did not become idle; see the logs in {root / 'log'}",
        )
        yield env


def _start_munged(root: Path, stack: ExitStack) -> Path:
    """Start a private munged with a fresh key; return its socket."""
    munge_dir = root / "munge"
    munge_dir.mkdir()
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(128))  # what `mungekey --create` writes: 1024 random bits
    key.chmod(0o400)
    socket_path = munge_dir / "munge.socket"
    command = [
        "munged",
        "--foreground",
        f"--socket={socket_path}",
        f"--key-file={key}",
        f"--pid-file={munge_dir / 'munged.pid'}",
        f"--log-file={munge_dir / 'munged.log'}",
        f"--seed-file={munge_dir / 'munged.seed'}",
    ]
    munged = _spawn(command, munge_dir / "munged.out", dict(os.environ), stack)
    _wait_for(socket_path.exists, 10.0, [munged], f"munged did not start; see {munge_dir}")
    return socket_path


def _write_configuration(root: Path, munge_socket: Path) -> Path:
    """Write slurm.conf and gres.conf for one node with this machine's CPUs and one fake GPU."""
    for name in ("state", "spool", "log"):
        (root / name).mkdir()
    controller_port, node_port = _free_ports(2)
    settings = {
        "ClusterName": "emsrtest",
        "SlurmctldHost": f"{NODE}(127.0.0.1)",
        "SlurmctldPort": controller_port,
        "SlurmdPort": node_port,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={munge_socket}",
        "CredType": "cred/munge",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "log" / "slurmctld.log",
        "SlurmdLogFile": root / "log" / "slurmd.log",
        # No cgroups: containers (and gVisor) rarely offer a writable cgroup tree.
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "GresTypes": "gpu",
        "KillWait": 5,  # seconds between SIGTERM and SIGKILL of a cancelled job
        "SchedulerParameters": "batch_sched_delay=0",  # start batch jobs at once
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={_cpu_count()} "
        f"RealMemory={_usable_memory_mib()} Gres=gpu:1 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
    ]
    config = root / "slurm.conf"
    config.write_text("\n".join(lines) + "\n")
    (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File=/dev/null\n")
    return config


def _cpu_count() -> int:
    """CPUs this process may use; more than slurmd detects would drain the node."""
    return len(os.sched_getaffinity(0))


def _usable_memory_mib() -> int:
    """90 % of physical memory: a RealMemory above what slurmd measures drains the node."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.9) // 2**20


def _free_ports(count: int) -> list[int]:
    """Ports free right now, so a second test cluster or a system slurmd cannot clash."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _spawn(
    command: list[str], output: Path, env: Mapping[str, str], stack: ExitStack
) -> subprocess.Popen:
    """Start a foreground daemon whose teardown the stack owns."""
    with output.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    stack.callback(_stop, process)
    return process


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate one daemon we started, by its PID; kill it if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cancel_all_jobs(env: Mapping[str, str], timeout: float = 30.0) -> None:
    """Cancel every job of this private cluster and wait until squeue is empty."""
    queued = _squeue_ids(env)
    if queued:
        subprocess.run(["scancel", *queued], env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while _squeue_ids(env) and time.monotonic() < deadline:
        time.sleep(0.2)


def _squeue_ids(env: Mapping[str, str]) -> list[str]:
    result = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def _node_state(env: Mapping[str, str]) -> str:
    result = subprocess.run(
        ["sinfo", "-h", "-N", "-n", NODE, "-o", "%T"], env=env, capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _wait_for(
    ready: Callable[[], bool],
    timeout: float,
    processes: list[subprocess.Popen],
    failure: str,
) -> None:
    """Poll until ready; fail at once if one of the daemons has died."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [process.args[0] for process in processes if process.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise SlurmUnavailable(f"{failure} (exited: {', '.join(dead) or 'none'})")
        time.sleep(0.1)


def small_slurm_settings(directory: Path, **changes: object) -> Path:
    """The shipped deploy/slurm.yaml, shrunk to fit a test machine."""
    settings = yaml.safe_load(DEFAULT_SLURM_CONFIG.read_text())
    settings["jobqueue"]["slurm"].update(
        {
            "cores": 1,
            "memory": "1GB",
            "walltime": "00:05:00",
            "death-timeout": 15,
            "log-directory": str(directory / "logs"),
            **changes,
        }
    )
    config = directory / "slurm.yaml"
    config.write_text(yaml.safe_dump(settings))
    return config


def queued_job_ids() -> list[str]:
    return subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
