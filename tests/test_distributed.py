"""Two CPU processes (gloo) under DDP and DeepSpeed ZeRO-2/3 train exactly like one."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fast_config import FAST_TRAIN

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_run(run_dir: Path, *overrides: str, nproc: int = 1) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    launcher += [f"--master_port={free_port()}"]
    cmd = [
        *(launcher if nproc > 1 else [sys.executable]),
        "-m",
        "rmt.train",
        *FAST_TRAIN,
        *overrides,
    ]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] in ("train", "eval")]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    train_run(run_dir)
    return run_dir


@pytest.mark.parametrize("trainer", ["ddp", "deepspeed_zero2", "deepspeed_zero3"])
def test_two_ranks_match_one_process_with_the_same_global_batch(single, tmp_path, trainer):
    if trainer.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    train_run(tmp_path, f"trainer={trainer}", nproc=2)
    # Every rank trains on its slice of the same global batch: only the order of the
    # gradient reduction differs from one process.
    assert losses(tmp_path) == pytest.approx(losses(single), rel=1e-5)
    final = json.loads((tmp_path / "eval.json").read_text())["final"]
    want = json.loads((single / "eval.json").read_text())["final"]
    assert final["segment_losses"] == pytest.approx(want["segment_losses"], rel=1e-5)
    assert final["accuracy"] == want["accuracy"] and final["masked_tokens"] == want["masked_tokens"]


REPLAY = ["memory.backprop=replay", "memory.bptt_depth=1", "trainer.micro_batch_tokens=256"]


def test_replay_with_truncation_under_zero2_matches_one_process(tmp_path):
    pytest.importorskip("deepspeed")
    # Memory replay: the forward keeps no graph; the backward sweep recomputes each segment.
    train_run(tmp_path / "one", *REPLAY)
    train_run(tmp_path / "two", *REPLAY, "trainer=deepspeed_zero2", nproc=2)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


def test_zero3_refuses_backprop_modes_that_recompute(tmp_path):
    pytest.importorskip("deepspeed")
    with pytest.raises(AssertionError, match=r"trainer\.zero_stage=3 partitions parameters"):
        train_run(tmp_path, *REPLAY, "trainer=deepspeed_zero3", nproc=2)


def test_deepspeed_resume_continues_the_same_trajectory(single, tmp_path):
    pytest.importorskip("deepspeed")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_run(straight, "trainer=deepspeed_zero2", nproc=2)
    shutil.copytree(straight, killed)  # as if killed right after the step-3 checkpoint
    shutil.rmtree(killed / "checkpoints" / "step-00000006")
    (killed / "checkpoints" / "latest").write_text("step-00000003\n")
    train_run(killed, "trainer=deepspeed_zero2", nproc=2)
    want, got = losses(straight), losses(killed)
    # Steps 4-6 trained again; the first run's records of them were dropped at resume.
    assert len(got) == len(want) and got == pytest.approx(want, rel=1e-5)
