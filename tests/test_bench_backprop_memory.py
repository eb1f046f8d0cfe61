"""Smoke test of `python -m benchmarks.backprop_memory` at a toy size: it runs, writes outputs.

No timing or memory-ratio asserts: the numbers of a toy model are page-size noise.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SEGMENTS, MODES = [1, 2], ["full", "replay"]
TOY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--vocab", "64"]
TOY += ["--segment-tokens", "16", "--memory-tokens", "2", "--device", "cpu"]


def test_toy_sweep_writes_one_record_per_point(tmp_path):
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    argv = ["--segments", *map(str, SEGMENTS), "--modes", *MODES, *TOY]
    argv += ["--out", str(tmp_path / "bm"), *([] if has_matplotlib else ["--no-plot"])]
    command = [sys.executable, "-m", "benchmarks.backprop_memory", *argv]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "[4/4]" in run.stdout

    document = json.loads((tmp_path / "bm.json").read_text())
    records = document["records"]
    assert sorted((r["mode"], r["segments"]) for r in records) == sorted(
        (m, n) for m in MODES for n in SEGMENTS
    )
    for record in records:
        assert record["status"] == "ok"
        assert record["baseline_mb"] > 0 and record["peak_mb"] > 0
        assert record["peak_mb"] >= record["baseline_mb"]
        assert record["step_peak_delta_mb"] >= 0
    assert document["environment"]["torch"]
    assert "replay_ratio" in document["summary"]

    with (tmp_path / "bm.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert all(float(row["peak_mb"]) > 0 for row in rows)

    table = (tmp_path / "bm.md").read_text()
    assert "| segments | full | replay |" in table
    assert all(f"\n| {n} | " in table for n in SEGMENTS)
    assert (tmp_path / "bm.png").exists() == has_matplotlib
