"""The sbatch templates in configs/slurm/ under a real SLURM (slurm_cluster.py): a plain run,
a preempted run that checkpoints, requeues and resumes, and one DDP job over two nodes.

Every job is `lightning fit` on the tiny model, on the CPU over gloo, submitted with the
same template a GPU cluster uses; only sbatch flags (no GPUs, 1 CPU per task) and the
tiny-config arguments differ.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from slurm_cluster import (
    SlurmCluster,
    free_port,
    one_node_cluster,
    probe_entries,
    two_node_cluster,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow

ONE_NODE = str(ROOT / "configs/slurm/one_node.sbatch")
MULTINODE = str(ROOT / "configs/slurm/multinode.sbatch")
FLUX_SHARDED = str(ROOT / "configs/slurm/flux_sharded.sbatch")
CPU = ["--cpus-per-task=1", "--gpus-per-node=0"]  # the templates ask for GPUs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with one_node_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with two_node_cluster(tmp_path_factory.mktemp("slurm2")) as running:
        yield running


def tiny_fit(run: Path, max_steps: int) -> list[str]:
    """`lightning fit` arguments after the template: DRaFT-K on the tiny model, no
    validation, plus the Probe callback that records each rank's steps."""
    return [
        "--config",
        "configs/draft_k.yaml",  # relative to the submit dir, as a user would write it
        "--config",
        "configs/cpu_tiny.yaml",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--model.sampling.num_steps",
        "4",
        "--trainer.callbacks+=slurm_cluster.Probe",
        "--trainer.callbacks.folder",
        str(run / "probe"),
    ]


def job_env(run: Path, master_port: int) -> dict[str, str]:
    """What the job inherits through sbatch (which exports the submitter's environment)."""
    path = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    return {
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "DRAFT_RUN_DIR": str(run),
        "DRAFT_VENV": str(Path(sys.executable).parents[1]),
        "MASTER_PORT": str(master_port),
    }


def job_log(run: Path, job_id: int) -> str:
    return (run / f"job-{job_id}.out").read_text(errors="replace")


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def steps(entries: list[dict], restart: int) -> list[int]:
    return [e["step"] for e in entries if e["event"] == "step" and e["restart"] == restart]


def test_one_node_template_runs_lightning_fit_to_the_end(cluster, tiny_sd, tmp_path):
    """(a) sbatch of one_node.sbatch with 2 tasks: COMPLETED, 2 DDP ranks started by srun
    under Lightning's SLURMEnvironment, train/reward in TensorBoard, every step done."""
    job = cluster.sbatch(
        [
            "--ntasks-per-node=2",
            *CPU,
            "--job-name=draft-a",
            f"--output={tmp_path}/job-%j.out",
            ONE_NODE,
            *tiny_fit(tmp_path, max_steps=4),
        ],
        env=job_env(tmp_path, free_port()),
        cwd=ROOT,
    )
    state = cluster.wait_job(
        job, lambda j: j["JobState"] == "COMPLETED", timeout=150, what="COMPLETED"
    )
    log = job_log(tmp_path, job)
    assert state["ExitCode"] == "0:0", log[-3000:]
    assert f"=== job {job} restart 0: srun exited 0" in log
    assert "SlurmRequeue: on SIGUSR1" in log  # installed: Lightning detected SLURM

    ranks = probe_entries(tmp_path / "probe")
    assert sorted(ranks) == [0, 1]
    for rank, entries in ranks.items():
        start = entries[0]
        assert start["event"] == "start" and start["world_size"] == 2
        assert start["environment"] == "SLURMEnvironment"
        assert start["slurm_procid"] == str(rank)  # rank = srun task, not a Lightning fork
        assert steps(entries, 0) == [1, 2, 3, 4]

    (log_dir,) = (tmp_path / "runs" / "draft_k").iterdir()
    rewards = scalars(log_dir, "train/reward")
    assert rewards and all(0.0 <= value <= 1.0 for _, value in rewards)


def test_preemption_signal_checkpoints_requeues_and_resumes(cluster, tiny_sd, tmp_path):
    """(b) SIGUSR1 mid-run (`scancel --signal=USR1`, what --signal=SIGUSR1@120 sends): the
    job saves hpc_ckpt_1.ckpt at a step boundary, requeues itself, and the second run resumes
    from that step and finishes the planned steps; it does not start again from zero."""
    max_steps = 10
    job = cluster.sbatch(
        [
            "--ntasks-per-node=2",
            *CPU,
            "--job-name=draft-b",
            f"--output={tmp_path}/job-%j.out",
            ONE_NODE,
            *tiny_fit(tmp_path, max_steps=max_steps),
        ],
        env=job_env(tmp_path, free_port()),
        cwd=ROOT,
    )
    rank0 = tmp_path / "probe" / "rank0.jsonl"

    def trained_two_steps(state: dict[str, str]) -> bool:
        return rank0.exists() and max(steps(probe_entries(rank0.parent)[0], 0), default=0) >= 2

    cluster.wait_job(job, trained_two_steps, timeout=150, what="at step 2")
    # Without --batch: the signal reaches the srun tasks (the Python ranks); with --batch
    # it would reach only the batch shell (see docs/slurm.md).
    cluster.run(["scancel", "--signal=USR1", str(job)])
    requeued = cluster.wait_job(
        job,
        lambda j: j["Restarts"] == "1" and j["JobState"] != "COMPLETING",
        timeout=90,
        what="requeued",
    )
    if requeued["JobState"] == "PENDING":
        cluster.release(job)  # else SLURM holds a requeued job for ~2 minutes
    state = cluster.wait_job(
        job, lambda j: j["JobState"] == "COMPLETED", timeout=150, what="COMPLETED"
    )
    log = job_log(tmp_path, job)
    assert state["Restarts"] == "1" and state["ExitCode"] == "0:0", log[-3000:]
    assert f"=== job {job} restart 0:" in log and f"=== job {job} restart 1:" in log

    saved = global_step(tmp_path / "hpc_ckpt_1.ckpt")
    assert 2 <= saved < max_steps, log[-3000:]
    assert f"requeued {job}" in log
    assert f"Restoring states from the checkpoint path at {tmp_path}/hpc_ckpt_1.ckpt" in log
    for entries in probe_entries(tmp_path / "probe").values():
        first, second = steps(entries, 0), steps(entries, 1)
        assert first == list(range(1, saved + 1))  # stopped right after the checkpoint
        assert second == list(range(saved + 1, max_steps + 1))  # went on from it
        restart = [e for e in entries if e["event"] == "start" and e["restart"] == 1]
        assert restart[0]["step"] == saved

    versions = sorted((tmp_path / "runs" / "draft_k").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    resumed = scalars(versions[1], "train/reward")
    assert resumed and min(step for step, _ in resumed) >= saved > 0
    assert global_step(versions[1] / "checkpoints" / "last.ckpt") == max_steps


def test_two_nodes_in_network_namespaces_run_one_ddp_job(two_nodes, tiny_sd, tmp_path):
    """(c) `sbatch -N 2 --ntasks-per-node 1` of multinode.sbatch: one DDP job whose two ranks
    run on node1 and node2, in different network namespaces, meeting at node1 (MASTER_ADDR)
    over the veth link; the run dir stands in for shared storage."""
    job = two_nodes.sbatch(
        [
            "-N",
            "2",
            "--ntasks-per-node=1",
            *CPU,
            "--job-name=draft-c",
            f"--output={tmp_path}/job-%j.out",
            MULTINODE,
            *tiny_fit(tmp_path, max_steps=3),
        ],
        env=job_env(tmp_path, 29500),
        cwd=ROOT,
    )
    state = two_nodes.wait_job(
        job, lambda j: j["JobState"] == "COMPLETED", timeout=150, what="COMPLETED"
    )
    log = job_log(tmp_path, job)
    assert state["ExitCode"] == "0:0" and state["NumNodes"] == "2", log[-3000:]
    assert "master node1" in log

    ranks = probe_entries(tmp_path / "probe")
    starts = {rank: entries[0] for rank, entries in ranks.items()}
    assert sorted(starts) == [0, 1]
    assert [starts[r]["host"] for r in (0, 1)] == ["node1", "node2"]
    assert starts[0]["netns"] != starts[1]["netns"]
    assert os.readlink("/proc/self/ns/net") not in {s["netns"] for s in starts.values()}
    for rank, start in starts.items():
        assert start["world_size"] == 2 and start["master"] == "node1:29500"
        assert steps(ranks[rank], 0) == [1, 2, 3]
    (log_dir,) = (tmp_path / "runs" / "draft_k").iterdir()
    assert scalars(log_dir, "train/reward")


def test_the_sharded_flux_template_runs_one_hsdp_job_over_two_nodes(two_nodes, tmp_path):
    """(d) `sbatch -N 2 --ntasks-per-node 1` of flux_sharded.sbatch on the tiny FLUX: the FLUX
    config's sharded strategy, shard_size set by the template to the tasks per node, so each
    node holds one replica (HSDP over 2 nodes x 1 rank), in one job that completes, writes a
    sharded checkpoint folder and exports the adapter."""
    from draft_lightning.testing.tiny_flux import tiny_flux_path

    tiny_flux_path()  # built before the job, not by its ranks
    job = two_nodes.sbatch(
        ["-N", "2", "--ntasks-per-node=1", *CPU, "--job-name=draft-d",
         f"--output={tmp_path}/job-%j.out", FLUX_SHARDED,
         "--config", "configs/flux_draft_lv.yaml", "--config", "configs/cpu_tiny_flux.yaml",
         "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
         "--trainer.num_sanity_val_steps", "0", "--model.sampling.num_steps", "4",
         "--trainer.callbacks+=slurm_cluster.Probe", "--trainer.callbacks.folder",
         str(tmp_path / "probe")],
        env=job_env(tmp_path, free_port()),
        cwd=ROOT,
    )  # fmt: skip
    state = two_nodes.wait_job(
        job, lambda j: j["JobState"] == "COMPLETED", timeout=180, what="COMPLETED"
    )
    log = job_log(tmp_path, job)
    assert state["ExitCode"] == "0:0" and state["NumNodes"] == "2", log[-3000:]
    assert "2 replicas of the model, each sharded over 1 rank(s) (HSDP)" in log
    starts = {rank: entries[0] for rank, entries in probe_entries(tmp_path / "probe").items()}
    assert [starts[r]["host"] for r in (0, 1)] == ["node1", "node2"]
    (run,) = (tmp_path / "runs" / "flux_draft_lv").iterdir()
    assert (run / "checkpoints" / "last.ckpt" / "meta.pt").is_file()
    assert (run / "lora" / "last" / "pytorch_lora_weights.safetensors").is_file()
