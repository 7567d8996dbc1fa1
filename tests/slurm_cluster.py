"""A real SLURM for tests: Debian's slurm-wlm daemons, started and stopped by the test run.

Mocks of sbatch/srun prove nothing about what a scheduler really does (signals, requeue,
environment of the tasks), so `one_node_cluster` runs slurmctld + slurmd on loopback, and
`two_node_cluster` runs two nodes in network namespaces, each with its own slurmd, linked
by a veth pair (tests/training/test_slurm.py wraps both in module-scoped fixtures). Both run
without munge (auth/none), accounting or cgroups, keep every file under a pytest tmp dir,
pick free ports, and kill every process they started. Every wait is bounded. The packages
are installed with apt when missing (CI must run these tests); the tests skip, loudly, only
where apt-get does not exist.

The `Probe` callback is loaded by class_path into the jobs (tests/ is on their PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Callback, LightningModule, Trainer

COMMANDS = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


# --- installation ---------------------------------------------------------------------------


def ensure_slurm(need_ip: bool = False) -> None:
    """Install slurm-wlm (and iproute2 for namespaces) with apt when missing.

    Skips only where apt-get does not exist; a failed install is a test failure, since a
    silently skipped scheduler test would hide a broken SLURM setup.
    """
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    packages = ["slurm-wlm"] if missing else []
    if need_ip and shutil.which("ip") is None:
        packages.append("iproute2")
    if not packages:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(
            f"!!! SLURM TESTS SKIPPED: {', '.join(missing or ['ip'])} not installed and "
            "apt-get is not available to install slurm-wlm; these tests need Debian's "
            "slurm-wlm (see docs/slurm.md) !!!"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=120",
        *packages,
    ]
    result = _apt(install, env)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        _apt(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"], env)
        result = _apt(install, env)
    if result.returncode != 0 or any(shutil.which(c) is None for c in COMMANDS):
        output = (result.stdout + result.stderr)[-3000:]
        pytest.fail(f"could not install {packages} with apt-get:\n{output}")


def _apt(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)} did not finish in 240 s: {error.stdout!r}")


def free_port() -> int:
    """A TCP port free on loopback now (the daemons bind it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the cluster ----------------------------------------------------------------------------


@dataclass
class Node:
    """One slurmd: its NodeName, the address slurmctld reaches it on, and its namespace."""

    name: str
    addr: str
    netns: str | None = None
    cpus: int = 2


class SlurmCluster:
    """slurmctld on the first node plus one slurmd per node, configured under `root`.

    Client commands (sbatch, scontrol, ...) run where slurmctld runs: in the first node's
    namespace when there are namespaces, else on this machine, always with SLURM_CONF set.
    """

    def __init__(self, root: Path, nodes: list[Node]) -> None:
        self.root = root
        self.nodes = nodes
        self.conf = root / "slurm.conf"
        self.logs = root / "log"
        self.daemons: list[subprocess.Popen] = []
        namespaced = nodes[0].netns is not None
        self.ports = (6817, 6818) if namespaced else (free_port(), free_port())

    # configuration and daemons

    def write_conf(self) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        head = self.nodes[0]
        lines = [
            "ClusterName=draft-test",
            f"SlurmctldHost={head.name}({head.addr})",
            f"SlurmctldPort={self.ports[0]}",
            f"SlurmdPort={self.ports[1]}",
            "AuthType=auth/none",
            "CredType=cred/none",
            f"SlurmUser={_user()}",
            f"SlurmdUser={_user()}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}/%n",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=10",  # SIGTERM -> SIGKILL when a job is requeued or cancelled
            "MinJobAge=900",  # finished jobs stay visible to `scontrol show job`
            *(
                f"NodeName={n.name} NodeAddr={n.addr} CPUs={n.cpus} State=UNKNOWN"
                for n in self.nodes
            ),
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **(extra or {})}

    def in_node(self, node: Node, command: list[str], daemon: bool = False) -> list[str]:
        """`command` inside the node's network namespace. Daemons also get the node's
        hostname (UTS namespace) and an /etc/hosts naming every node (a private mount
        namespace; `ip netns exec` is not used because it remounts /sys, which hides
        /sys/fs/cgroup, and slurmd refuses to start without it)."""
        if node.netns is None:
            return command
        enter = ["nsenter", f"--net=/run/netns/{node.netns}"]
        if not daemon:
            return [*enter, *command]
        hosts = shlex.quote(str(self.root / "hosts"))
        script = f'mount --bind {hosts} /etc/hosts && hostname {node.name} && exec "$@"'
        return [*enter, "unshare", "--uts", "--mount", "sh", "-c", script, "sh", *command]

    def start(self, timeout: float = 60) -> None:
        self.write_conf()
        hosts = "127.0.0.1 localhost\n" + "".join(f"{n.addr} {n.name}\n" for n in self.nodes)
        (self.root / "hosts").write_text(hosts)
        for node in self.nodes:
            (self.root / "spool" / node.name).mkdir(parents=True, exist_ok=True)
        head = self.nodes[0]
        self._daemon(head, ["slurmctld", "-D", "-f", str(self.conf)], "slurmctld.out")
        for node in self.nodes:
            command = ["slurmd", "-D", "-N", node.name, "-f", str(self.conf)]
            self._daemon(node, command, f"slurmd-{node.name}.out")
        self.wait_idle(timeout)

    def _daemon(self, node: Node, command: list[str], log: str) -> None:
        with open(self.logs / log, "w") as out:
            self.daemons.append(
                subprocess.Popen(
                    self.in_node(node, command, daemon=True),
                    env=self.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # own process group, killed as one at the end
                )
            )

    def wait_idle(self, timeout: float) -> None:
        """Until `sinfo` lists every node idle (slurmd registered with slurmctld)."""
        want = {n.name for n in self.nodes}
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"a SLURM daemon exited early: {daemon.args}\n{self.tail()}")
            result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=10)
            last = result.stdout + result.stderr
            idle = {line.split()[0] for line in result.stdout.splitlines() if "idle" in line}
            if want <= idle:
                return
            time.sleep(0.5)
        raise TimeoutError(f"nodes {sorted(want)} not idle in {timeout} s: {last}\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of every daemon log, for failure messages."""
        parts = []
        for log in sorted(self.logs.glob("*")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # client commands

    def run(
        self,
        command: list[str],
        *,
        check: bool = True,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.in_node(self.nodes[0], command),
            env=self.env(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr}")
        return result

    def sbatch(self, args: list[str], *, env: dict[str, str], cwd: Path) -> int:
        """Submit; returns the job id. `env` is what the job sees (sbatch exports it)."""
        return int(self.run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, BeginTime, ...)."""
        out = self.run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait_job(
        self, job_id: int, until: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> dict[str, str]:
        """Poll the job until `until(job)`; a job that finishes otherwise fails at once."""
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            if job["JobState"] in FINISHED:
                break
            time.sleep(0.5)
        raise AssertionError(f"job {job_id}: not {what} within {timeout} s: {job}")

    def release(self, job_id: int) -> None:
        """Start a requeued job now: SLURM holds a requeued batch job ~2 minutes (BeginTime),
        which only slows the test, so the test moves its start time (as an admin can)."""
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    # teardown

    def stop(self) -> None:
        """Cancel jobs, stop the daemons, then kill anything left that runs with our
        SLURM_CONF (slurmstepd and job tasks live outside the daemons' process groups)."""
        if self.conf.exists():
            with suppress(subprocess.TimeoutExpired):  # slurmctld gone: the kills still run
                self.run(["scancel", "--user", _user()], check=False, timeout=15)
        for daemon in self.daemons:
            _kill_group(daemon, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(daemon, signal.SIGKILL)
                daemon.wait(timeout=10)
        for pid in _pids_with_env("SLURM_CONF", str(self.conf)):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _kill_group(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def _pids_with_env(name: str, value: str) -> list[int]:
    """Processes whose environment has name=value: ours, whatever their parent is."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --- network namespaces ---------------------------------------------------------------------


class Namespaces:
    """Two node namespaces joined by one veth pair, 10.77.0.1 <-> 10.77.0.2, and nothing
    else: no route to this machine or beyond, and addresses nobody else uses."""

    SUBNET = "10.77.0"

    def __init__(self, count: int) -> None:
        if count != 2:
            raise ValueError("a veth pair links exactly two namespaces")
        tag = f"dls{os.getpid() % 100000}"
        self.nodes = [
            Node(name=f"node{i + 1}", addr=f"{self.SUBNET}.{i + 1}", netns=f"{tag}n{i + 1}", cpus=1)
            for i in range(count)
        ]

    def create(self) -> None:
        for node in self.nodes:
            _ip("netns", "add", node.netns)
        first, second = self.nodes
        _ip(
            "link", "add", "dl0", "netns", first.netns, "type", "veth",
            "peer", "name", "dl0", "netns", second.netns,
        )  # fmt: skip
        for node in self.nodes:
            _ip("-n", node.netns, "addr", "add", f"{node.addr}/24", "dev", "dl0")
            _ip("-n", node.netns, "link", "set", "dl0", "up")
            _ip("-n", node.netns, "link", "set", "lo", "up")

    def delete(self) -> None:
        for node in self.nodes:
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True, timeout=15)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


# --- clusters for fixtures -----------------------------------------------------------------


@contextmanager
def one_node_cluster(root: Path) -> Iterator[SlurmCluster]:
    """One node named localhost (127.0.0.1) with 2 CPUs, installed first if need be."""
    ensure_slurm()
    cluster = SlurmCluster(root, [Node("localhost", "127.0.0.1")])
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def two_node_cluster(root: Path) -> Iterator[SlurmCluster]:
    """node1 and node2 (1 CPU each), each in its own network namespace with its own slurmd."""
    ensure_slurm(need_ip=True)
    namespaces = Namespaces(2)
    cluster = SlurmCluster(root, namespaces.nodes)
    try:
        namespaces.create()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        namespaces.delete()


# --- inside the jobs ------------------------------------------------------------------------


class Probe(Callback):
    """Writes, per rank, where it runs and every global step it finishes, to
    `<folder>/rank<r>.jsonl`: how a test sees the steps of each (re)start of a job."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def _write(self, trainer: Trainer, **entry: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        entry["restart"] = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(entry) + "\n")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(
            trainer,
            event="start",
            step=trainer.global_step,
            world_size=trainer.world_size,
            host=socket.gethostname(),
            netns=os.readlink("/proc/self/ns/net"),
            environment=type(trainer.strategy.cluster_environment).__name__
            if hasattr(trainer.strategy, "cluster_environment")
            else None,
            slurm_procid=os.environ.get("SLURM_PROCID"),
            master=f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._write(trainer, event="step", step=trainer.global_step)


def probe_entries(folder: Path) -> dict[int, list[dict[str, Any]]]:
    """Probe's records by rank (a line still being written is left out)."""
    entries = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        lines = path.read_text().split("\n")[:-1]  # only lines that have their newline
        entries[int(path.stem.removeprefix("rank"))] = [json.loads(line) for line in lines]
    return entries
