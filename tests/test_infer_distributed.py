"""rmt-infer in several processes: under torchrun, 2 CPU processes (gloo) write the bytes 1
process writes, and a run killed under 2 ranks (or 1) resumes under 2 ranks or 1 to the
same bytes; more ranks than shards are refused; the jobs are divided by bp; a sweep runs
through rmt-train's Hydra launchers.

The reference is one process with the same options: the shards (``parallel.shards=2``)
decide the outputs, the number of ranks only where each shard runs. The model is the
tiny checkpoint of tests/test_infer.py; the genome is phage lambda, both strands, split
into parts so that every shard has parts of both and slots that take a second job.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from test_distributed import free_port
from test_infer import infer, tiny_checkpoint

from data import BPETokenizer, Genome
from rmt import load_model
from rmt.infer import infer_options
from rmt.infer.outputs import shard_state
from rmt.infer.plan import balance, job_bp, plan_jobs

REPO = Path(__file__).resolve().parents[1]
SHARDS = 2
ARGS = [
    "data.fasta=[bundled:lambda]", "threads=1", "progress=false", "strand=both",
    "batch_size=2", f"parallel.shards={SHARDS}", "parallel.streams=3", "parallel.min_bp=1000",
    "parallel.burn_in=2", "tracks.masked_stride=2", "embeddings.tokens=true",
    "embeddings.dtype=float32", "save_every=2",
]  # fmt: skip
# summary.json's and state.pt's timings differ between any two runs; the rest may not.
TIMED = ("wall_s", "attempts", "runs", "model_s", "bp_per_s", "tokens_per_s", "peak_rss_mb")


def distributed(test):
    """Marks a test that starts several processes, as tests/test_distributed.py does."""
    return pytest.mark.slow(pytest.mark.distributed(test))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, lambda_bpe: BPETokenizer) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), lambda_bpe)


def overrides(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [f"checkpoint={checkpoint}", f"output={out}", *ARGS, *extra]


def command(*overrides: str, nproc: int) -> list[str]:
    """rmt-infer in ``nproc`` processes: torchrun for more than one."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    launcher += [f"--master_port={free_port()}"]
    return [*(launcher if nproc > 1 else [sys.executable]), "-m", "rmt.infer", *overrides]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RMT_DEBUG"}
    return env | {"OMP_NUM_THREADS": "1"}


def launch(*overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*overrides, nproc=nproc), cwd=REPO, env=environment(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def same_outputs(want: Path, got: Path) -> None:
    """Every file of ``want`` is in ``got`` with the same bytes (summary: but its timings)."""
    names = sorted(p.name for p in want.iterdir())
    assert names == sorted(p.name for p in got.iterdir())
    for name in names:
        if name == "summary.json":
            a, b = (json.loads((d / name).read_text()) for d in (want, got))
            assert {k: a[k] for k in a if k not in TIMED} == {k: b[k] for k in b if k not in TIMED}
        elif name != "state.pt":  # the finished mark: the merged counters, timings included
            assert filecmp.cmp(want / name, got / name, shallow=False), name


@pytest.fixture(scope="module")
def one_process(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    infer(*overrides(checkpoint, out))
    return out


# -- one process and two ranks --------------------------------------------------------


@distributed
def test_two_ranks_write_the_bytes_one_process_writes(checkpoint, one_process, tmp_path):
    out = tmp_path / "out"
    proc = launch(*overrides(checkpoint, out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("rmt-infer: wrote") == 1  # rank 0 reports, once
    same_outputs(one_process, out)  # config.json included: the ranks are not recorded
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == SHARDS and summary["streams"] == 2 * 3
    assert summary["attempts"] == [{"wall_s": summary["wall_s"], "strand_bp": 2 * 48_502,
                                    "ranks": 2}]  # fmt: skip


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of process ``pid`` from /proc; None once it is gone."""
    try:
        state, parent = (
            (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        )
    except (OSError, ValueError):
        return None
    return state, int(parent)


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state[0] not in "ZX"


def worker_pid(agent: int, rank: int) -> int:
    """The pid of torchrun's (``agent``'s) worker process of ``rank``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (process_state(int(entry.name)) or ("", 0))[1] == agent:
            with contextlib.suppress(OSError):
                if f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
    raise AssertionError(f"torchrun (pid {agent}) runs no rank {rank}")


def shard_progress(out: Path) -> list[str]:
    """Each shard as its resume point shows it: not started, mid-stream or done."""
    queues = json.loads((out / "plan.json").read_text())["shards"]
    progress = []
    for shard, queue in enumerate(queues):
        if not shard_state(out, shard).exists():
            progress.append("not started")
            continue
        state = torch.load(shard_state(out, shard), weights_only=True)
        done = not state["lanes"] and state["next_job"] == len(queue)
        progress.append("done" if done else "mid-stream")
    return progress


def kill_mid_stream(checkpoint: Path, out: Path, nproc: int) -> None:
    """Start a run in ``nproc`` processes and SIGKILL one (rank 1 of two: torchrun then
    ends rank 0) once each has a resume point: two ranks mid-way through both shards,
    one process mid-way through shard 0 (it runs the shards in turn). Retried until the
    kill lands so (it can land after the last step)."""
    want = ["mid-stream"] * nproc + ["not started"] * (SHARDS - nproc)
    for _ in range(4):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(
            command(*overrides(checkpoint, out), nproc=nproc), cwd=REPO, env=environment(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not all(shard_state(out, k).exists() for k in range(nproc)):
                assert proc.poll() is None and time.monotonic() < deadline, "no resume points"
                time.sleep(0.002)
            ranks = [proc.pid] if nproc == 1 else [worker_pid(proc.pid, r) for r in (0, 1)]
            os.kill(ranks[-1], signal.SIGKILL)
            assert proc.wait(timeout=120) != 0, proc.stderr.read()
            assert not any(map(alive, ranks)), "the launcher ended every rank"
        finally:
            proc.kill()
            proc.wait()
        if not (out / "summary.json").exists() and shard_progress(out) == want:
            return
    pytest.fail("every kill landed after a shard's last step")


@distributed
def test_a_run_killed_under_two_ranks_resumes_under_two_or_one(checkpoint, one_process, tmp_path):
    killed = tmp_path / "killed"
    kill_mid_stream(checkpoint, killed, nproc=2)
    shutil.copytree(killed, tmp_path / "copy")
    proc = launch(*overrides(checkpoint, killed))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    alone = infer(*overrides(checkpoint, tmp_path / "copy"))
    for out in (killed, tmp_path / "copy"):
        same_outputs(one_process, out)
        summary = json.loads((out / "summary.json").read_text())
        attempts = summary["attempts"]
        assert summary["runs"] == len(attempts) == 2 and attempts[0]["ranks"] == 2
        assert sum(a["strand_bp"] for a in attempts) == summary["strand_bp"] == 2 * 48_502
    assert alone["attempts"][1]["ranks"] == 1


@distributed
def test_a_run_killed_in_one_process_resumes_under_two_ranks(checkpoint, one_process, tmp_path):
    out = tmp_path / "out"
    kill_mid_stream(checkpoint, out, nproc=1)
    proc = launch(*overrides(checkpoint, out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    same_outputs(one_process, out)
    attempts = json.loads((out / "summary.json").read_text())["attempts"]
    assert [a["ranks"] for a in attempts] == [1, 2]


@distributed
def test_more_ranks_than_shards_is_refused_naming_the_fix(checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = launch(*overrides(checkpoint, out, "parallel.shards=1"))
    # One message per rank; the two ranks share stderr, so their lines may run together.
    message = "rmt-infer: error: 2 ranks were launched for parallel.shards=1"
    assert proc.returncode != 0 and proc.stderr.count(message) == 2, proc.stderr
    assert "torchrun --nproc_per_node=1" in proc.stderr and "multiple of 2" in proc.stderr
    assert not out.exists(), "a run that cannot start claims nothing"


# -- shards ---------------------------------------------------------------------------


def test_balance_puts_the_heaviest_first_into_the_lightest_bin():
    assert balance([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert balance([1, 9, 4, 4], 2) == [[1], [0, 2, 3]]  # 9 against 1 + 4 + 4
    assert balance([3], 3) == [[0], [], []]


def test_shards_divide_the_jobs_by_bp_and_parts_share_their_stretch(
    checkpoint, tmp_path, write_fasta, lambda_genome
):
    seq = lambda_genome.fetch("NC_001416.1", 0, 9000)
    spans = [(0, 3000), (3000, 3100), (4000, 6001), (7000, 7500)]
    fasta = write_fasta(
        "four.fa", "".join(f">r{i}\n{seq[a:b]}\n" for i, (a, b) in enumerate(spans))
    )
    runner, tokenizer = load_model(checkpoint)
    genome = Genome([str(fasta)], cache_dir=tmp_path / "cache")
    with initialize_config_module(config_module="conf", version_base="1.3"):
        options = infer_options(compose("infer", overrides(
            checkpoint, tmp_path / "out", f"data.fasta=[{fasta}]", "strand=+",
            "parallel.streams=2", "parallel.min_bp=2500",
        )))  # fmt: skip
    plan = plan_jobs(options, genome, tokenizer, runner.segment_tokens)
    # r0 (3,000 bp) is split in 2 parts, 1,500 bp each; the other records are not.
    assert [j.chrom for j in plan.jobs] == ["r0", "r0", "r1", "r2", "r3"]
    assert job_bp(plan.jobs) == [1500, 1500, 100, 2001, 500]
    # 2,001 -> shard 0; 1,500 -> 1; 1,500 -> 1 (the lighter); 500 -> 0; 100 -> 0.
    assert plan.shards == [[2, 3, 4], [0, 1]] and plan.shard_bp() == [2601, 3000]


def test_a_shard_without_jobs_is_done_at_once(checkpoint, tmp_path):
    """Two jobs (the strands), three shards: the third has nothing to stream."""
    summary = infer(*overrides(checkpoint, tmp_path / "out", "regions=[NC_001416.1:1-2000]",
                               "parallel.shards=3", "parallel.streams=1"))  # fmt: skip
    assert summary["shards"] == 3 and summary["streams"] == 2
    assert summary["strand_bp"] == 2 * 2000 and not (tmp_path / "out" / "spool").exists()


@pytest.mark.slow
def test_a_sweep_runs_every_point_through_a_launcher_of_rmt_train(checkpoint, tmp_path):
    """conf/hydra/launcher/ serves rmt-infer too: local_parallel (joblib) here, slurm
    (submitit) on a cluster, one output directory per point."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    regions = ["NC_001416.1:1-2000", "NC_001416.1:2001-4000"]
    sweep = [
        "-m", "hydra/launcher=local_parallel", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"checkpoint={checkpoint}", "data.fasta=[bundled:lambda]", "threads=1",
        "progress=false", f"regions={','.join(regions)}",
        f"output={tmp_path / 'out'}/${{hydra:job.num}}",
    ]  # fmt: skip
    proc = launch(*sweep, nproc=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job, region in enumerate(regions):
        summary = json.loads((tmp_path / "out" / str(job) / "summary.json").read_text())
        assert summary["regions"] == [region] and summary["strand_bp"] == 2000
