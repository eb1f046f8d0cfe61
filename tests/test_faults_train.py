"""Fault suite, training side: what rmt-train does when a run goes wrong.

Each test runs rmt-train (its Hydra `main`, in-process, or a real subprocess where a kill
or a second process is the point) on the tiny lambda config, injects one fault, and
asserts the exit code, that the one-line message names the culprit (key, path, step or
holder), that there is no traceback, and what is on disk afterwards. JSON is read with a
strict parser: a bare NaN fails the test.
"""

from __future__ import annotations

import errno
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
from fast_config import FAST_TRAIN
from safetensors import SafetensorError

from rmt import load_model
from rmt.cli import MetricsLog, write_json
from rmt.lock import LOCK_FILE, DirectoryLocked, RunLock
from rmt.train import main

REPO = Path(__file__).resolve().parents[1]
# FAST_TRAIN with shorter evaluations and no TensorBoard: the faults are elsewhere.
FAULTS = [*FAST_TRAIN, "trainer.eval_max_tokens=512", "trainer.tensorboard=false"]


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def records(run_dir: Path) -> list[dict]:
    return [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in records(run_dir) if r["split"] == "train"]


def rmt_train(run_dir: Path, *overrides: str, monkeypatch, capsys) -> tuple[int, str]:
    """rmt-train's main in this process: (exit code, stdout + stderr)."""
    argv = ["rmt-train", *FAULTS, f"hydra.run.dir={run_dir}", *overrides]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out + out.err


def one_line_error(output: str, code: int) -> str:
    """The `rmt-train: error: ...` line, after checking exit 2 and no traceback."""
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("rmt-train: error: ")]
    assert len(lines) == 1, output
    return lines[0]


def checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished FAST_TRAIN run (steps 1-6, checkpoints at 3 and 6), copied per test."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["rmt-train", *FAULTS, f"hydra.run.dir={run_dir}"])
        main()
    return run_dir


# -- 1, 2: divergence, valid JSON ---------------------------------------------------------


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(
        run_dir, "trainer.lr=1e6", "trainer.save_every=1", monkeypatch=monkeypatch, capsys=capsys
    )
    error = one_line_error(output, code)
    diverged = [r for r in records(run_dir) if r.get("diverged")]
    assert len(diverged) == 1, "the step that diverged is recorded"
    assert diverged[0]["loss"] is None or diverged[0]["grad_norm"] is None, "null, not NaN"
    step = diverged[0]["step"]
    assert f"training diverged at step {step}" in error and "trainer.lr=1e+06" in error
    assert "lower trainer.lr" in error and "trainer.on_nonfinite=skip" in error
    status = strict_json((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingDiverged" in status["error"]
    # Only the steps before the divergence were saved, and every checkpoint is finite.
    kept = [n for n in checkpoints(run_dir) if n.startswith("step-")]
    assert kept and max(kept) == f"step-{step - 1:08d}", kept
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == max(kept) and str(run_dir / "checkpoints" / latest) in error
    runner, _ = load_model(run_dir)
    assert all(torch.isfinite(p).all() for p in runner.state_dict().values())
    assert not (run_dir / "eval.json").exists(), "no final report from a diverged run"


def test_skip_policy_leaves_a_non_finite_step_out_and_finishes(tmp_path, monkeypatch, capsys):
    from rmt.tasks.mlm import MLMTask

    original, calls = MLMTask.loss, []

    def loss_nan_on_step_2(self, runner, batch):
        calls.append(1)
        part = original(self, runner, batch)
        if len(calls) == 3:  # step 2's first micro-batch (two per step)
            part.loss_sum = part.loss_sum * float("nan")
        return part

    monkeypatch.setattr(MLMTask, "loss", loss_nan_on_step_2)
    run_dir = tmp_path / "run"
    code, output = rmt_train(
        run_dir, "trainer.on_nonfinite=skip", "trainer.max_skipped_steps=1",
        "trainer.max_steps=3", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, output
    steps = [r for r in records(run_dir) if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r.get("skipped", False) for r in steps] == [False, True, False]
    assert steps[1]["loss"] is None, "NaN is written as null"
    assert strict_json((run_dir / "status.json").read_text())["status"] == "finished"
    strict_json((run_dir / "eval.json").read_text())
    runner, _ = load_model(run_dir)
    assert all(torch.isfinite(p).all() for p in runner.state_dict().values())


def test_skip_policy_stops_past_its_limit(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(
        run_dir, "trainer.lr=1e6", "trainer.on_nonfinite=skip", "trainer.max_skipped_steps=1",
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    error = one_line_error(output, code)
    assert "training diverged at step" in error and "1 steps skipped already" in error
    assert sum(bool(r.get("skipped")) for r in records(run_dir)) == 1


@pytest.mark.parametrize("key", ["trainer.on_nonfinite=maybe", "trainer.max_skipped_steps=-1"])
def test_divergence_options_are_checked(tmp_path, monkeypatch, capsys, key):
    code, output = rmt_train(tmp_path / "run", key, monkeypatch=monkeypatch, capsys=capsys)
    assert key.split("=")[0] in one_line_error(output, code)


def test_json_outputs_write_non_finite_numbers_as_null(tmp_path):
    payload = {"loss": float("nan"), "segments": [1.0, float("inf")], "n": 3}
    write_json(tmp_path / "status.json", payload)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": float("-inf")})
    log.close()
    want = {"loss": None, "segments": [1.0, None], "n": 3}
    assert strict_json((tmp_path / "status.json").read_text()) == want
    assert records(tmp_path) == [{"step": 1, "loss": None}]


# -- 3: one process per run directory -----------------------------------------------------


def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(
    tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    with RunLock(run_dir, "rmt-train"):
        code, output = rmt_train(run_dir, monkeypatch=monkeypatch, capsys=capsys)
        assert (run_dir / LOCK_FILE).is_file()
    error = one_line_error(output, code)
    assert f"{run_dir} is in use by rmt-train (pid {os.getpid()} on " in error
    assert "wait for it to end" in error
    assert not (run_dir / "status.json").exists() and not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / LOCK_FILE).exists(), "released, and the lock file removed"


HOLD_LOCK = """
import sys, time
from rmt.lock import RunLock
RunLock(sys.argv[1], "holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked, match=rf"in use by holder \(pid {proc.pid} "):
            RunLock(run_dir, "rmt-infer").acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (run_dir / LOCK_FILE).is_file(), "the killed holder left its file"
    with RunLock(run_dir, "rmt-infer"):
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["program"] == "rmt-infer" and holder["pid"] == os.getpid()


def test_a_lock_on_a_file_path_names_the_path(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        RunLock(path, "rmt-infer").acquire()


# -- 4, 5, 6: steps, labels, vocabulary ---------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_steps_below_one_is_refused(tmp_path, monkeypatch, capsys, value):
    code, output = rmt_train(
        tmp_path / "run", f"trainer.max_steps={value}", monkeypatch=monkeypatch, capsys=capsys
    )
    error = one_line_error(output, code)
    assert f"trainer.max_steps={value} must be >= 1" in error and "null" in error


def test_max_steps_past_the_curriculum_runs_exactly_that_many(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(
        run_dir, "curriculum.stages=[{segments: 1, steps: 1}, {segments: 2, steps: 1}]",
        "trainer.max_steps=4", "trainer.eval_every=100", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, output
    steps = [r for r in records(run_dir) if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["segments"] for r in steps] == [1, 2, 2, 2], "the last stage goes on"
    assert checkpoints(run_dir) == ["latest", "step-00000003", "step-00000004"]
    assert strict_json((run_dir / "status.json").read_text())["steps"] == 4


def test_mask_prob_zero_is_refused(tmp_path, monkeypatch, capsys):
    code, output = rmt_train(
        tmp_path / "run", "data.mask_prob=0", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "data.mask_prob=0.0 must be in (0, 1)" in one_line_error(output, code)


def test_a_step_with_no_scored_tokens_is_refused_at_start(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(run_dir, "data.mask_prob=1e-9", monkeypatch=monkeypatch, capsys=capsys)
    error = one_line_error(output, code)
    assert "step 1 has no scored tokens" in error and "data.mask_prob" in error
    assert checkpoints(run_dir) == [] and train_steps(run_dir) == []


def test_vocabulary_larger_than_the_data_gives_names_the_key(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(
        run_dir, "tokenizer.vocab_size=10000000", monkeypatch=monkeypatch, capsys=capsys
    )
    error = one_line_error(output, code)
    assert "tokenizer.vocab_size=10,000,000 is more than" in error and "at most 692" in error
    assert not (run_dir / "tokenizer.json").exists()


# -- 7: the first run says where it writes and what it is doing ---------------------------


def test_first_run_prints_its_directory_first_and_its_progress(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, output = rmt_train(run_dir, "trainer.max_steps=1", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, output
    marks = ["run directory: " + str(run_dir), "reading ", "training a 256-token BPE",
             "data and tokenizer ready", "evaluating the initial model"]  # fmt: skip
    where = [output.find(mark) for mark in marks]
    assert all(i >= 0 for i in where) and where == sorted(where), output
    assert output.splitlines()[0].endswith(f"run directory: {run_dir}"), output


# -- 8: metrics after a kill ---------------------------------------------------------------


def kill_between_checkpoints(run_dir: Path) -> None:
    """Start rmt-train, SIGKILL it after a step past its step-3 checkpoint is logged."""
    overrides = [*FAULTS, "trainer.max_steps=30", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "rmt.train", *overrides], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline, metrics = time.monotonic() + 120, run_dir / "metrics.jsonl"
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "run ended first"
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if any('"step": 4, "split": "train"' in line for line in lines):
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_resume_after_sigkill_drops_the_records_past_the_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kill_between_checkpoints(run_dir)
    assert 4 in train_steps(run_dir) and (run_dir / LOCK_FILE).exists(), "killed mid-run"
    code, output = rmt_train(run_dir, "trainer.max_steps=5", monkeypatch=monkeypatch,
                             capsys=capsys)  # fmt: skip
    assert code == 0, output  # the killed run's lock does not block
    assert train_steps(run_dir) == [1, 2, 3, 4, 5], "one trajectory, no repeated steps"
    evals = [r["step"] for r in records(run_dir) if r["split"] == "eval"]
    assert evals == sorted(set(evals)) and evals[0] == 0
    assert [r["split"] for r in records(run_dir)].count("final") == 1
    assert not (run_dir / LOCK_FILE).exists()


# -- 9: OS errors ----------------------------------------------------------------------------


def test_a_full_disk_while_writing_metrics_names_the_file(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    code, output = rmt_train(run_dir, monkeypatch=monkeypatch, capsys=capsys)
    error = one_line_error(output, code)
    assert f"{run_dir / 'metrics.jsonl'}: No space left on device; free space" in error
    assert checkpoints(run_dir) == []


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one(
    trained, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr("rmt.checkpoint.save_file", full_disk)
    code, output = rmt_train(run_dir, "trainer.max_steps=7", "trainer.save_every=1",
                             monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    error = one_line_error(output, code)
    assert f"could not write checkpoint {run_dir / 'checkpoints' / 'step-00000007'}" in error
    assert "No space left on device" in error and "df -h" in error
    assert checkpoints(run_dir) == ["latest", "step-00000003", "step-00000006"], "no temp dir"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000006"


def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=1m")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=False)  # a log may be open


def test_a_real_full_disk_at_the_first_checkpoint(small_disk, monkeypatch, capsys):
    run_dir = small_disk / "run"
    code, output = rmt_train(run_dir, monkeypatch=monkeypatch, capsys=capsys)
    error = one_line_error(output, code)
    assert f"could not write checkpoint {run_dir / 'checkpoints' / 'step-00000003'}" in error
    assert [p for p in (run_dir / "checkpoints").iterdir()] == [], "no half-written checkpoint"


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    mount_tmpfs(folder, "ro,size=1m")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=False)


def test_a_read_only_run_directory_is_one_line(read_only_dir, monkeypatch, capsys):
    code, output = rmt_train(read_only_dir / "run", monkeypatch=monkeypatch, capsys=capsys)
    error = one_line_error(output, code)
    assert f"{read_only_dir / 'run'}: Read-only file system; choose a writable" in error


def test_permission_denied_names_the_path(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    code, output = rmt_train(run_dir, monkeypatch=monkeypatch, capsys=capsys)
    error = one_line_error(output, code)
    assert f"{run_dir / LOCK_FILE}: Permission denied; fix its permissions" in error


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run"
    path.write_text("not a directory")
    code, output = rmt_train(path, monkeypatch=monkeypatch, capsys=capsys)
    assert f"{path}: is a file, not a directory" in one_line_error(output, code)
    assert path.read_text() == "not a directory"


# -- 10: resume with other settings ----------------------------------------------------------


def test_resume_with_another_model_names_what_differs(trained, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    code, output = rmt_train(run_dir, "model.d_model=32", "memory.memory_tokens=2",
                             monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    error = one_line_error(output, code)
    assert "model.d_model=64 (this run: 32)" in error
    assert "memory.memory_tokens=4 (this run: 2)" in error and "hydra.run.dir" in error
    assert (run_dir / "metrics.jsonl").read_text() == before, "nothing rewritten"
    assert checkpoints(run_dir) == ["latest", "step-00000003", "step-00000006"]


def test_resume_with_another_tokenizer_names_it(trained, tmp_path, monkeypatch, capsys):
    from data import BPETokenizer, Genome, bundled_genome

    genome = Genome(bundled_genome("lambda"))
    other = BPETokenizer.train([genome.fetch("NC_001416.1", 0, 20_000)], 300)
    other.save(tmp_path / "other.json")
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    code, output = rmt_train(run_dir, f"tokenizer.path={tmp_path / 'other.json'}",
                             monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    error = one_line_error(output, code)
    assert "is not the tokenizer the model in" in error and "300 ids, the model has 256" in error
