"""Hydra multirun: one run directory per job, and a summary that hides no failure."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from rmt.sweep_summary import main as summary_main
from rmt.sweep_summary import summarize

pytestmark = pytest.mark.slow  # multiruns in subprocesses

TINY = [
    "data=lambda",
    "tokenizer.vocab_size=256",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "memory.segment_tokens=16",
    "curriculum.stages=[{segments: 1, steps: 2}]",
    "trainer.tokens_per_step=64",
    "trainer.eval_max_tokens=256",
    "trainer.progress=false",
]


def test_multirun_writes_a_job_per_point_and_a_summary(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rmt.train", "-m", *TINY, "memory.memory_tokens=2,4"]
    proc = subprocess.run(
        [*command, f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "finished" and status["steps"] == 2
    rows = list(csv.DictReader((sweep / "summary.csv").open()))  # written by the callback
    assert [r["overrides"].split()[-1] for r in rows] == [
        "memory.memory_tokens=2",
        "memory.memory_tokens=4",
    ]

    # A job that never finished and one that failed are listed, not dropped.
    shutil.copytree(sweep / "0", sweep / "2")
    (sweep / "2" / "status.json").unlink()
    shutil.copytree(sweep / "0", sweep / "3")
    (sweep / "3" / "status.json").write_text(json.dumps({"status": "failed", "error": "OOM"}))
    records = summarize(sweep)
    assert [r["status"] for r in records] == ["finished", "finished", "unfinished", "failed"]
    assert records[3]["error"] == "OOM" and "eval_loss" not in records[2]
    table = (sweep / "summary.md").read_text()
    assert "| 2 |" in table and "unfinished" in table and "failed" in table
    summary_main([str(sweep)])
    assert "4 jobs (2 finished)" in capsys.readouterr().out


def test_summary_of_a_missing_directory_names_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        summary_main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "nowhere" in capsys.readouterr().err
