"""A real single-node SLURM cluster in a temporary directory, for the workflow's SLURM tests.

Nothing is mocked: the Debian ``slurm-wlm`` and ``munge`` daemons run as root, with a private
munge key and socket, private ports and every state, spool, PID and log file under one
directory, so the cluster neither needs nor touches a system-wide SLURM. Clients (``sbatch``,
``squeue``, ``scontrol``, Snakemake and its SLURM executor plugin) find it through the
``SLURM_CONF`` environment variable in :attr:`SlurmCluster.env`.

The node is this machine with its real CPUs and memory, four fake GPUs (gres backed by touched
placeholder files, so ``--gpus=N`` is scheduled and counted like on Longleaf) and the Longleaf
partition name ``l40-gpu``.

Manual use (prints the ``SLURM_CONF`` to export)::

    python tests/slurm/cluster.py up
    python tests/slurm/cluster.py down

Daemons are recorded by PID in ``cluster.json`` next to the configuration; a cluster whose
owning process has died (a killed pytest run) is stopped by the next ``up`` instead of
lingering, and no process is ever matched by name.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
LONGLEAF_PROFILE = REPO / "config" / "profiles" / "longleaf" / "config.v8+.yaml"
TEST_PROFILE_OVERRIDES = Path(__file__).resolve().parent / "profile" / "config.v8+.yaml"
PARTITION = "l40-gpu"
# Longleaf's CPU partition, where every job without a GPU goes (resources.cpu_partition); on
# this one node both partitions share the CPUs and memory
CPU_PARTITION = "general"
GPUS_PER_NODE = 4
# The executor plugin polls with squeue; finished jobs must stay visible for at least three
# status intervals (SPEC §7), and SLURM's own default of 300 s is far above that.
MIN_JOB_AGE_S = 300
# Unix socket paths are limited to 107 bytes; keep the root short rather than under pytest's
# deep basetemp.
BASE_DIR = Path(os.environ.get("CELLSEG_SLURM_BASE", Path(tempfile.gettempdir()) / "cellseg-slurm"))
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: node first, key service last
INSTALL_HINT = (
    "the SLURM tests need the Debian packages slurm-wlm and munge; `.ci/run` installs them "
    "(or run `bash .ci/install-slurm.sh` as root)"
)


class SlurmError(RuntimeError):
    """The local cluster could not be started, used or stopped."""


@dataclass
class SlurmCluster:
    """A running local cluster: where its configuration lives and how to talk to it."""

    root: Path
    conf: Path
    nodename: str
    ports: tuple[int, int]
    pids: dict[str, int] = field(default_factory=dict)
    partition: str = PARTITION
    gpus: int = GPUS_PER_NODE
    # whether the fake GPUs are device nodes (then jobs get CUDA_VISIBLE_DEVICES; see
    # _make_placeholder_device)
    device_nodes: bool = False

    @property
    def env(self) -> dict[str, str]:
        """The caller's environment plus ``SLURM_CONF`` and the ``srun`` shim (see _write_srun_shim).

        Pass it to every SLURM command and to Snakemake; sbatch exports it into the jobs
        (``--export=ALL``), which is how the venv's python and the shim reach them.
        """
        path = f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster, text in and out."""
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            raise SlurmError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def job_state(self, job_id: str) -> str:
        out = self.run("squeue", "--states=all", "--noheader", "--format=%T", "--jobs", job_id)
        return out.stdout.strip()

    def wait_for_job(self, job_id: str, timeout: float = 60) -> str:
        """Block until the job has left the queue's active states; return its final state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state and state not in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}:
                return state
            time.sleep(0.5)
        raise SlurmError(f"job {job_id} still {state or 'unknown'} after {timeout:.0f} s")

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a flat key → value mapping."""
        return parse_scontrol(self.run("scontrol", "show", "job", "--details", job_id).stdout)

    def make_test_profile(self, dest: Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the Longleaf profile with the test overrides layered on top into ``dest``.

        ``extra`` is applied last (e.g. ``{"configfile": None}`` drops a key). Returns the
        profile directory, ready for ``snakemake --profile``.
        """
        return write_merged_profile(dest, LONGLEAF_PROFILE, TEST_PROFILE_OVERRIDES, extra)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# profile layering
# ---------------------------------------------------------------------------------------------


def merge_profiles(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Layer Snakemake profile mappings: later ones win, key by key.

    Snakemake accepts several ``--profile`` flags, but a later profile replaces a whole
    top-level key, so overriding ``runtime`` alone would drop ``slurm_partition`` and ``qos``
    from ``default-resources``. Here mappings (``default-resources``, ``set-resources``, …)
    merge recursively, and ``None`` deletes a key.
    """
    merged = copy.deepcopy(base)
    for override in overrides:
        _merge_into(merged, override)
    return merged


def _merge_into(target: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def write_merged_profile(
    dest: Path, base: Path, overrides: Path, extra: dict[str, Any] | None = None
) -> Path:
    layers = [yaml.safe_load(overrides.read_text()) or {}]
    if extra:
        layers.append(extra)
    merged = merge_profiles(yaml.safe_load(base.read_text()) or {}, *layers)
    dest.mkdir(parents=True, exist_ok=True)
    header = f"# generated by tests/slurm/cluster.py: {base.relative_to(REPO)} + {overrides.relative_to(REPO)}\n"
    (dest / base.name).write_text(header + yaml.safe_dump(merged, sort_keys=False))
    return dest


# ---------------------------------------------------------------------------------------------
# bring-up
# ---------------------------------------------------------------------------------------------


def sbatch_calls(log: str) -> dict[str, list[str]]:
    """The plugin's verbose `sbatch call: …` lines, keyed by rule (from its --comment)."""
    calls = {}
    for line in log.splitlines():
        _, sep, call = line.partition("sbatch call: ")
        if not sep:
            continue
        # drop the wrapped snakemake command: it is long and irrelevant here
        argv = shlex.split(call.split(" --wrap=")[0])
        rule = argv[argv.index("--comment") + 1].removeprefix("rule_")
        calls[rule] = argv
    return calls


def option(argv: list[str], name: str) -> str | None:
    """Value of `name VALUE` or `name=VALUE` in an argv."""
    for index, token in enumerate(argv):
        if token == name:
            return argv[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def parse_scontrol(text: str) -> dict[str, str]:
    """Split ``Key=Value`` pairs; values may contain ``=`` (``TRES=cpu=1,mem=100M``)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def _require_binaries() -> dict[str, str]:
    found = {
        name: shutil.which(name)
        for name in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "srun")
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise SlurmError(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    if os.geteuid() != 0:
        # slurmd launches job steps as their owner and SlurmUser=root keeps the setup to one user
        raise SlurmError("the local SLURM cluster must be started as root (as .ci/run does)")
    return {name: path for name, path in found.items() if path is not None}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_hardware(slurmd: str) -> dict[str, int]:
    """What slurmd will detect; declaring anything else drains the node as 'Low socket*core'."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True).stdout
    fields = parse_scontrol(out.splitlines()[0])
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {key: int(fields[key]) for key in keys}


def _config_text(root: Path, nodename: str, ports: tuple[int, int], hw: dict[str, int]) -> str:
    # leave the OS and the test process room; a node whose RealMemory exceeds what slurmd
    # measures is drained
    real_memory = max(1024, int(hw["RealMemory"] * 0.9))
    return f"""\
# generated by tests/slurm/cluster.py: a private single-node cluster
ClusterName=cellsegtest
SlurmctldHost={nodename}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# cgroup controllers are not delegated to this container: track processes through /proc and
# bind CPUs with sched_setaffinity (the jobstep's `srun --cpu-bind=q` needs a task plugin)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
# no mail on this node; an unset MailProg is an error in slurmctld's log
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# no slurmdbd: sacct/sacctmgr have nothing to report, so clients must poll squeue
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={nodename} NodeAddr=127.0.0.1 CPUs={hw["CPUs"]} Boards={hw["Boards"]} SocketsPerBoard={hw["SocketsPerBoard"]} CoresPerSocket={hw["CoresPerSocket"]} ThreadsPerCore={hw["ThreadsPerCore"]} RealMemory={real_memory} Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN
PartitionName={PARTITION} Nodes={nodename} Default=YES MaxTime=INFINITE State=UP
PartitionName={CPU_PARTITION} Nodes={nodename} MaxTime=INFINITE State=UP
"""


def _write_srun_shim(bin_dir: Path, conf: Path, srun: str) -> None:
    """An ``srun`` first on the jobs' PATH that restores ``SLURM_CONF`` and runs the real one.

    Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6) starts the rule with
    ``srun -n1 …`` in an environment from which it removes every ``SLURM_*`` variable but the
    job's identity, ``SLURM_CONF`` included. A real cluster's clients then read
    /etc/slurm/slurm.conf; this private cluster has no file there (and must not write one, a
    system SLURM may own it), so without the shim the step fails with "Could not establish a
    configuration source". srun exports ``SLURM_CONF`` on to the rule's shell.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{srun}" "$@"\n')
    shim.chmod(0o755)


def _make_placeholder_device(path: Path) -> bool:
    """A character device node (the null device's numbers) where mknod is allowed, else a plain file.

    SLURM schedules and counts gpu gres either way, but it exports CUDA_VISIBLE_DEVICES into a
    job only for gres backed by a real device node ("not a valid character or block device").
    """
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        return True
    except OSError:
        path.touch()
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _stop_pid(pid: int, marker: str, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL, one recorded daemon; only if its command line still names our root
    (a PID can be recycled after a crash)."""
    if not _pid_alive(pid) or marker not in _cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reap it if it was our child
        os.waitpid(pid, os.WNOHANG)


def _record(root: Path) -> dict[str, Any] | None:
    path = root / "cluster.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_cluster(root: Path, remove: bool = True) -> None:
    """Stop the daemons recorded under ``root`` by PID, then delete ``root``."""
    record = _record(root)
    if record is not None:
        conf = root / "slurm.conf"
        if record["pids"].get("slurmctld") and _pid_alive(record["pids"]["slurmctld"]):
            # running jobs' slurmstepd processes would outlive slurmd otherwise
            subprocess.run(
                ["scancel", "--full", "--partition", f"{PARTITION},{CPU_PARTITION}"],
                env={**os.environ, "SLURM_CONF": str(conf)},
                capture_output=True,
                timeout=30,
                check=False,
            )
            time.sleep(1)
        for name in DAEMONS:
            pid = record["pids"].get(name)
            if pid:
                _stop_pid(pid, str(root))
    if remove:
        shutil.rmtree(root, ignore_errors=True)


def reap_orphans(base: Path = BASE_DIR) -> None:
    """Stop clusters left behind by test sessions that died before their teardown."""
    if not base.is_dir():
        return
    for root in base.iterdir():
        record = _record(root)
        owner = record.get("owner_pid") if record else None
        if record is not None and owner is not None and not _pid_alive(owner):
            stop_cluster(root)


def start_cluster(root: Path, owner_pid: int | None, timeout: float = 60) -> SlurmCluster:
    """Write the configuration under ``root`` (emptied first) and start munged, slurmctld, slurmd.

    ``owner_pid`` is the process whose death makes the cluster an orphan (None: manual, lives
    until ``down``). Returns once ``sinfo`` reports the node idle.
    """
    bins = _require_binaries()
    if root.exists():
        stop_cluster(root)
    for sub in ("munge", "state", "spool", "run", "log", "gres"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses keys and sockets in group- or world-writable directories
    for path in (root, root / "munge"):
        path.chmod(0o700)

    nodename = socket.gethostname().split(".")[0]
    ports = (_free_port(), _free_port())
    hw = _node_hardware(bins["slurmd"])
    conf = root / "slurm.conf"
    conf.write_text(_config_text(root, nodename, ports, hw))
    devices = []
    for index in range(GPUS_PER_NODE):
        device = root / "gres" / f"gpu{index}"
        cluster_has_device_nodes = _make_placeholder_device(device)
        devices.append(str(device))
    (root / "gres.conf").write_text(
        "# fake GPUs: placeholder files, so SLURM counts and assigns gpu gres without hardware\n"
        "AutoDetect=off\n" + "".join(f"NodeName={nodename} Name=gpu File={d}\n" for d in devices)
    )

    _write_srun_shim(root / "bin", conf, bins["srun"])

    key = root / "munge" / "munge.key"
    subprocess.run(
        [bins["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True
    )
    key.chmod(0o400)

    cluster = SlurmCluster(
        root=root, conf=conf, nodename=nodename, ports=ports, device_nodes=cluster_has_device_nodes
    )
    record: dict[str, Any] = {
        "owner_pid": owner_pid,
        "pids": cluster.pids,
        "conf": str(conf),
        "nodename": nodename,
        "ports": list(ports),
        "device_nodes": cluster.device_nodes,
    }

    def launch(name: str, argv: list[str]) -> None:
        log = (root / "log" / f"{name}.stdout").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cluster.env,
            # own session: a Ctrl-C in the test terminal goes to pytest, whose teardown stops us
            start_new_session=True,
        )
        log.close()
        cluster.pids[name] = proc.pid
        # write after every start so a failure half-way still leaves PIDs to stop
        (root / "cluster.json").write_text(json.dumps(record, indent=2))

    try:
        launch(
            "munged",
            [
                bins["munged"],
                "--foreground",
                # --force: /tmp is world-writable (sticky); munged otherwise refuses the path
                "--force",
                f"--socket={root}/munge/munge.socket",
                f"--key-file={key}",
                f"--pid-file={root}/run/munged.pid",
                f"--log-file={root}/log/munged.log",
                f"--seed-file={root}/munge/munged.seed",
            ],
        )
        _wait_for(lambda: (root / "munge" / "munge.socket").exists(), 15, "munged socket", cluster)
        launch("slurmctld", [bins["slurmctld"], "-D", "-c", "-f", str(conf)])
        _wait_for(
            lambda: cluster.run("scontrol", "ping", check=False, timeout=10).returncode == 0,
            timeout,
            "slurmctld to answer",
            cluster,
        )
        launch("slurmd", [bins["slurmd"], "-D", "-N", nodename, "-f", str(conf)])
        _wait_for(
            lambda: _node_state(cluster) == "idle", timeout, f"node {nodename} to be idle", cluster
        )
    except BaseException:
        stop_cluster(root, remove=False)
        raise
    return cluster


def _node_state(cluster: SlurmCluster) -> str:
    out = cluster.run("sinfo", "--noheader", "--Node", "--format=%t", check=False, timeout=10)
    # one line per partition the node is in (l40-gpu and general): the same state on each
    states = {line.strip().rstrip("*~#!%$@^-") for line in out.stdout.splitlines() if line.strip()}
    return states.pop() if len(states) == 1 else ",".join(sorted(states))


def _wait_for(predicate: Any, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not _pid_alive(pid):
                raise SlurmError(
                    f"{name} (pid {pid}) exited while waiting for {what}\n{cluster.log_tail()}"
                )
        if predicate():
            return
        time.sleep(0.5)
    raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.log_tail()}")


def load_cluster(root: Path) -> SlurmCluster | None:
    """The cluster recorded under ``root`` if all its daemons still run."""
    record = _record(root)
    if record is None or not all(_pid_alive(record["pids"].get(n, 0) or 0) for n in DAEMONS):
        return None
    return SlurmCluster(
        root=root,
        conf=Path(record["conf"]),
        nodename=record["nodename"],
        ports=(record["ports"][0], record["ports"][1]),
        pids=record["pids"],
        device_nodes=record["device_nodes"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=BASE_DIR / "manual", help="cluster directory [%(default)s]"
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    if args.action == "down":
        stop_cluster(root)
        print(f"stopped and removed {root}")
        return 0
    running = load_cluster(root)
    if args.action == "status":
        print(f"running: export SLURM_CONF={running.conf}" if running else f"no cluster at {root}")
        return 0 if running else 1
    if running is not None:
        print(f"already running (pids {running.pids})")
    else:
        reap_orphans(root.parent)
        try:
            running = start_cluster(root, owner_pid=None)
        except SlurmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"started (pids {running.pids})")
    print(f"export SLURM_CONF={running.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
