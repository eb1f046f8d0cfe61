"""Fault suite, rmt-infer: concurrent runs, kills during assembly, failed starts, full and
read-only disks, bad paths, damaged checkpoints, N gaps.

Each test injects one fault and asserts the exit code, that the one error line names the
culprit, that there is no traceback, and what is on disk afterwards: nothing lost,
nothing half-written. The model is the tiny checkpoint of tests/test_infer.py; the
genome is phage lambda. A full disk is a real tmpfs (skipped where it cannot be mounted).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyBigWig
import pytest
from test_infer import LAMBDA, bedgraph, infer, tiny_checkpoint

from data import BPETokenizer, bundled_genome
from rmt import load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
ASSEMBLY_TEMP = re.compile(r"^\..*\.(bedGraph|bw|h5)\.\d+\.[0-9a-f]+\.tmp$")  # atomic_path's
FINAL = ["logprob.plus.bedGraph", "logprob.plus.bw", "embeddings.h5"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, lambda_bpe: BPETokenizer) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), lambda_bpe)


def args(checkpoint: Path, out: Path, *extra: str, fasta: str | None = "bundled:lambda"):
    """rmt-infer's overrides: lambda (unless ``fasta`` is None: the default), 1 thread."""
    listed = [f"checkpoint={checkpoint}", f"output={out}", "threads=1", "progress=false"]
    return listed + ([f"data.fasta=[{fasta}]"] if fasta else []) + list(extra)


def command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "rmt.infer", *overrides]


def environment() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RMT_DEBUG"}


def cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*overrides), cwd=REPO, capture_output=True, text=True, env=environment(),
        timeout=300,
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, *named: str) -> str:
    """The run's single error line, after checking exit 2, no traceback, every name in it."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rmt-infer: error: ")]
    assert len(errors) == 1, proc.stderr
    for name in named:
        assert name in errors[0], errors[0]
    return errors[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``path`` (``-o options``); the test is skipped where mounting fails."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# -- concurrency and kills --------------------------------------------------------------


def test_a_second_run_into_the_same_output_is_refused_at_once_naming_the_holder(
    checkpoint, tmp_path
):
    out = tmp_path / "out"
    slow = args(checkpoint, out, "tracks.masked_stride=16", "strand=both")
    first = subprocess.Popen(command(*slow), cwd=REPO, env=environment(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists():  # claimed: it holds the lock
            assert first.poll() is None and time.monotonic() < deadline, "first run ended"
            time.sleep(0.01)
        # Paused while it holds the lock, so it cannot finish (and release it) before the
        # second run has started, however fast the machine.
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        second = cli(*args(checkpoint, out, "strand=-"))
        line = one_line_error(second, str(out), f"in use by rmt-infer (pid {first.pid} on ")
        assert "another directory" in line and time.monotonic() - started < 60
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    assert (out / "summary.json").exists() and not (out / ".rmt.lock").exists()
    assert all((out / name).exists() for name in FINAL), "the first run's outputs are whole"


def kill_during_assembly(overrides: list[str], out: Path) -> list[str]:
    """SIGKILL rmt-infer once an assembly temp file exists; the hidden files left in ``out``."""
    proc = subprocess.Popen(command(*overrides), cwd=REPO, env=environment())
    try:
        deadline = time.monotonic() + 120
        while not any(ASSEMBLY_TEMP.match(name) for name in hidden_names(out)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended first"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return hidden(out)


def hidden_names(out: Path) -> list[str]:
    return [e.name for e in os.scandir(out) if e.name.startswith(".")] if out.is_dir() else []


def test_sigkill_during_assembly_leaves_temp_files_the_rerun_removes(checkpoint, tmp_path):
    extra = ["strand=both", "tracks.masked_stride=2", "embeddings.tokens=true"]
    infer(*args(checkpoint, tmp_path / "straight", *extra))
    out = tmp_path / "killed"
    for _ in range(5):  # the kill can land after the last rename; then try again
        shutil.rmtree(out, ignore_errors=True)
        leftovers = kill_during_assembly(args(checkpoint, out, *extra), out)
        temps = [name for name in leftovers if ASSEMBLY_TEMP.match(name)]
        if temps and not (out / "summary.json").exists():
            break
    assert temps, leftovers
    summary = infer(*args(checkpoint, out, *extra))
    assert hidden(out) == [], "no temp file, no lock file left"
    assert summary["runs"] == 2 and not (out / "spool").exists()
    names = [f"{t}.{s}.{k}" for t in ("logprob", "masked") for s in ("plus", "minus")
             for k in ("bedGraph", "bw")] + ["embeddings.h5"]  # fmt: skip
    for name in names:
        assert filecmp.cmp(tmp_path / "straight" / name, out / name, shallow=False), name


# -- failed starts ----------------------------------------------------------------------


def test_a_run_that_cannot_load_its_model_claims_nothing(checkpoint, tmp_path, lambda_genome):
    broken = tmp_path / "model"
    shutil.copytree(checkpoint, broken)
    intact = (broken / "tokenizer.json").read_bytes()
    bigger = BPETokenizer.train([lambda_genome.fetch(LAMBDA, 20_000, 30_000)], 552)
    bigger.save(broken / "tokenizer.json")
    out = tmp_path / "out"
    one_line_error(cli(*args(broken, out)), "tokenizer.json")
    assert not out.exists(), "a failed start leaves no output directory"
    (broken / "manifest.json").unlink()  # without a manifest, the vocabulary check refuses it
    one_line_error(cli(*args(broken, out)), "not the tokenizer", "552 ids, the model has 512")
    (broken / "tokenizer.json").write_bytes(intact)  # fixed: the rerun needs no overwrite
    summary = infer(*args(broken, out, "regions=[NC_001416.1:1-3000]"))
    assert summary["strand_bp"] == 3000


def test_a_claim_that_never_reached_a_resume_point_does_not_count(
    checkpoint, tmp_path, write_fasta
):
    gapped = write_fasta("gap.fa", ">gap\n" + "N" * 500 + "\n")
    out = tmp_path / "out"
    failed = cli(*args(checkpoint, out, fasta=str(gapped)))
    one_line_error(failed, "regions gap:1-500 hold only N", "choose regions with sequence")
    assert not (out / "state.pt").exists() and not (out / "spool").exists()
    assert hidden(out) == []
    summary = infer(*args(checkpoint, out, "regions=[NC_001416.1:1-3000]"))  # no overwrite=
    assert summary["fasta"] == [str(bundled_genome("lambda"))]


# -- paths and disks --------------------------------------------------------------------


def test_an_output_path_that_is_a_file_is_named(checkpoint, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    one_line_error(cli(*args(checkpoint, out)), f"output={out} is a file, not a directory")
    assert out.read_text() == "keep me\n"
    nested = cli(*args(checkpoint, out / "sub"))
    one_line_error(nested, f"{out / 'sub'}: Not a directory", "a file is in the way")


def test_a_full_disk_while_spooling_is_one_line_and_leaves_no_temp_file(checkpoint, tmp_path):
    with tmpfs(tmp_path / "disk", "size=128k") as disk:
        out = disk / "out"
        proc = cli(*args(checkpoint, out, "save_every=4"))
        one_line_error(proc, f"{out}: No space left on device", "free space")
        assert [n for n in os.listdir(out) if n.endswith(".tmp")] == []
        assert not (out / "summary.json").exists() and not (out / "logprob.plus.bw").exists()


def test_a_full_disk_at_assembly_is_refused_then_resumes_to_identical_outputs(checkpoint, tmp_path):
    infer(*args(checkpoint, tmp_path / "straight"))
    with tmpfs(tmp_path / "disk", "size=800k") as disk:
        out = disk / "out"
        proc = cli(*args(checkpoint, out))
        line = one_line_error(proc, f"{out / 'logprob.plus.bw'}: No space left on device")
        assert "bytes free, the tracks may need" in line
        assert hidden(out) == [] and (out / "spool" / "shard-0000.pt").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # freed
        summary = infer(*args(checkpoint, out))
        assert summary["runs"] == 2
        for name in FINAL:
            assert filecmp.cmp(tmp_path / "straight" / name, out / name, shallow=False), name


def test_an_output_directory_that_cannot_be_written_is_named(checkpoint, tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system
        context, fix = tmpfs(tmp_path / "ro", "ro,size=64k"), "Read-only file system"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        context, fix = contextlib.nullcontext(tmp_path / "ro"), "Permission denied"
    with context as parent:
        proc = cli(*args(checkpoint, parent / "out"))
        one_line_error(proc, f"{parent / 'out'}: {fix}", "choose")
        assert os.listdir(parent) == []


# -- checkpoints ------------------------------------------------------------------------


def test_a_corrupt_latest_falls_back_and_a_named_corrupt_checkpoint_is_refused(
    checkpoint, tmp_path
):
    run = tmp_path / "run" / "checkpoints"
    for step in ("step-00000001", "step-00000002"):
        shutil.copytree(checkpoint, run / step)
    (run / "latest").write_text("step-00000002\n")
    weights = run / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    out = tmp_path / "out"
    proc = cli(*args(tmp_path / "run", out, "regions=[NC_001416.1:1-3000]"))
    assert proc.returncode == 0, proc.stderr
    assert "using the newest intact checkpoint" in proc.stderr and "step-00000001" in proc.stderr
    assert (out / "summary.json").exists()
    named = cli(*args(run / "step-00000002", tmp_path / "out2"))
    one_line_error(named, "step-00000002/model.safetensors is", "bytes but")
    assert not (tmp_path / "out2").exists()


# -- inputs -----------------------------------------------------------------------------


def test_n_runs_get_no_track_values_and_the_stream_restarts_after_them(
    checkpoint, tmp_path, write_fasta, lambda_genome
):
    seq = lambda_genome.fetch(LAMBDA, 0, 6000)
    gapped = write_fasta("gapped.fa", f">r\n{seq[:3000]}{'N' * 500}{seq[3000:]}\n")
    after = write_fasta("after.fa", f">r\n{seq[3000:]}\n")
    summary = infer(*args(checkpoint, tmp_path / "gapped", "strand=both", fasta=str(gapped)))
    assert (summary["region_bp"], summary["bp_per_strand"], summary["n_bp_skipped"]) == (
        6500, 6000, 500,
    )  # fmt: skip
    assert summary["strand_bp"] == 2 * 6000
    for strand in ("plus", "minus"):
        rows = bedgraph(tmp_path / "gapped" / f"logprob.{strand}.bedGraph")
        assert not [r for r in rows if r[1] < 3500 and r[2] > 3000], "nothing over the gap"
        assert sum(e - s for _, s, e, _ in rows) == 6000
        bw = pyBigWig.open(str(tmp_path / "gapped" / f"logprob.{strand}.bw"))
        assert np.isnan(bw.values("r", 3000, 3500)).all()
        assert not np.isnan(bw.values("r", 0, 3000)).any()
        bw.close()
    # After the gap the stream starts afresh: as if the sequence after it were a record.
    infer(*args(checkpoint, tmp_path / "after", fasta=str(after)))
    alone = bedgraph(tmp_path / "after" / "logprob.plus.bedGraph")
    tail = [r for r in bedgraph(tmp_path / "gapped" / "logprob.plus.bedGraph") if r[1] >= 3500]
    assert [(s - 3500, e - 3500) for _, s, e, _ in tail] == [(s, e) for _, s, e, _ in alone]
    np.testing.assert_allclose([r[3] for r in tail], [r[3] for r in alone], rtol=1e-5, atol=1e-6)


def test_the_default_fasta_is_the_one_the_model_was_trained_on(
    checkpoint, tmp_path, write_fasta, lambda_genome
):
    fasta = write_fasta("trained.fa", f">t\n{lambda_genome.fetch(LAMBDA, 0, 2000)}\n")
    runner, tokenizer = load_model(checkpoint)
    trained = save_checkpoint(
        tmp_path / "trained", runner, tokenizer, {"config": {"data": {"fasta": [str(fasta)]}}}
    )
    summary = infer(*args(trained, tmp_path / "out", fasta=None))
    assert summary["fasta"] == [str(fasta)] and summary["regions"] == ["t:1-2000"]
    proc = cli(*args(checkpoint, tmp_path / "out2", fasta=None))
    one_line_error(proc, "data.fasta is not set", str(checkpoint), "give data.fasta=")
    assert not (tmp_path / "out2").exists()
    fasta.unlink()
    moved = cli(*args(trained, tmp_path / "out3", fasta=None))
    one_line_error(moved, f"the FASTA {trained} was trained on, {fasta}", "give data.fasta=")
