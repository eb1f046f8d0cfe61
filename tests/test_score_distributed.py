"""rmt-score in several processes: under torchrun, 2 CPU processes (gloo) write the bytes 1
process writes; a run killed under 2 ranks resumes under 2 ranks or 1 to the same bytes;
more ranks than chunks are refused.

A chunk is batched on its own (its contexts, then its rows), so the chunks, which depend
on the VCF and ``batch_size`` alone, decide the outputs; the ranks only where each chunk
is scored. The model is the tiny checkpoint of tests/test_score.py; the VCF has small
variants at a dozen places on phage lambda, scored on both strands in chunks of 2 rows.
"""

from __future__ import annotations

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
from test_distributed import free_port
from test_infer_distributed import REPO, TIMED, alive, distributed, environment, worker_pid
from test_score import FAST, checkpoint, score, seq, small_variants, vcf_of, write_vcf

from rmt.score.spool import resume_points

__all__ = ["checkpoint", "seq"]  # the fixtures, shared with tests/test_score.py
ARGS = [*FAST, "strand=both", "batch_size=2", "save_every=1", "threads=1", "progress=false",
        "data.fasta=[bundled:lambda]"]  # fmt: skip


@pytest.fixture(scope="module")
def variants(seq, tmp_path_factory) -> Path:
    places = range(3000, 3000 + 12 * 2500, 2500)
    rows = vcf_of([v for at in places for v in small_variants(seq, at)])
    return write_vcf(tmp_path_factory.mktemp("vcf") / "v.vcf", rows)


def overrides(checkpoint: Path, variants: Path, out: Path) -> list[str]:
    return [f"checkpoint={checkpoint}", f"variants={variants}", f"output={out}", *ARGS]


def command(*overrides: str, nproc: int = 2) -> list[str]:
    """rmt-score under torchrun in ``nproc`` processes."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*launcher, f"--master_port={free_port()}", "-m", "rmt.score", *overrides]


def launch(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*overrides), cwd=REPO, env=environment(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def same_outputs(want: Path, got: Path) -> None:
    """Every file of ``want`` is in ``got`` with the same bytes (summary: but its timings;
    state.pt: the finished mark, with them)."""
    names = sorted(p.name for p in want.iterdir())
    assert names == sorted(p.name for p in got.iterdir())
    for name in names:
        if name == "summary.json":
            a, b = (json.loads((d / name).read_text()) for d in (want, got))
            timed = (*TIMED, "alts_per_s")
            assert {k: a[k] for k in a if k not in timed} == {k: b[k] for k in b if k not in timed}
        elif name != "state.pt":
            assert filecmp.cmp(want / name, got / name, shallow=False), name


@pytest.fixture(scope="module")
def one_process(checkpoint, variants, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    summary = score(checkpoint, variants, out, *ARGS)
    assert summary["chunks"] > 20 and summary["runs"] == 1
    return out


@distributed
def test_two_ranks_write_the_bytes_one_process_writes(checkpoint, variants, one_process, tmp_path):
    out = tmp_path / "out"
    proc = launch(*overrides(checkpoint, variants, out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("rmt-score: wrote") == 1  # rank 0 reports, once
    same_outputs(one_process, out)
    assert {"scored.vcf", "scores.tsv", "summary.json"} <= {p.name for p in out.iterdir()}


def scored_by_rank(out: Path) -> dict[int, int]:
    """Rank -> the chunks its resume point records (of the one run so far)."""
    return {int(spool.stem.split(".")[1]): len(s["chunks"]) for spool, s in resume_points(out)}


def kill_mid_way(command: list[str], out: Path, chunks: int) -> None:
    """SIGKILL rank 1 (torchrun then ends rank 0) once both ranks have a resume point,
    retried until the kill lands before the last chunk is scored."""
    for _ in range(4):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(
            command, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while len(scored_by_rank(out) if (out / "spool").exists() else {}) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, "no resume points"
                time.sleep(0.002)
            ranks = [worker_pid(proc.pid, r) for r in (0, 1)]
            os.kill(ranks[1], signal.SIGKILL)
            assert proc.wait(timeout=120) != 0, proc.stderr.read()
            assert not any(map(alive, ranks)), "the launcher ended every rank"
        finally:
            proc.kill()
            proc.wait()
        if not (out / "summary.json").exists() and sum(scored_by_rank(out).values()) < chunks:
            return
    pytest.fail("every kill landed after the last chunk")


@distributed
def test_a_run_killed_under_two_ranks_resumes_under_two_or_one(
    checkpoint, variants, one_process, tmp_path
):
    killed, copy = tmp_path / "killed", tmp_path / "copy"
    chunks = json.loads((one_process / "summary.json").read_text())["chunks"]
    kill_mid_way(command(*overrides(checkpoint, variants, killed)), killed, chunks)
    shutil.copytree(killed, copy)
    proc = launch(*overrides(checkpoint, variants, killed))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    alone = score(checkpoint, variants, copy, *ARGS)
    for out in (killed, copy):
        same_outputs(one_process, out)
        assert not (out / "spool").exists()
    assert alone["runs"] == 2


@distributed
def test_more_ranks_than_chunks_is_refused_naming_the_fix(checkpoint, seq, tmp_path):
    """One SNV on one strand: two rows (REF, ALT), one chunk."""
    one = write_vcf(tmp_path / "one.vcf", vcf_of(small_variants(seq)[:1]))
    out = tmp_path / "out"
    proc = launch(*overrides(checkpoint, one, out), "strand=plus")
    # One message per rank; the two ranks share stderr, so their lines may run together.
    message = "rmt-score: error: 2 ranks were launched for 1 chunk(s) of variants"
    assert proc.returncode != 0 and proc.stderr.count(message) == 2, proc.stderr
    assert "launch at most 1 (torchrun --nproc_per_node=1)" in proc.stderr
    assert not out.exists(), "a run that cannot start claims nothing"
