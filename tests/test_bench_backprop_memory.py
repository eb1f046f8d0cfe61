"""The backprop-memory preset of rmt-bench (`bench_experiment=backprop_memory`).

Its configuration is pinned to the one the committed figures were measured with; a
toy-sized run goes through the CLI and must write every quantity the figures report.
No memory-ratio asserts on the toy run: a toy model's peaks are page-size noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_module

from benchmarks.fits import REPLAY_RATIO_LIMIT, replay_ratio
from benchmarks.options import BenchOptions
from benchmarks.points import Point, toy
from benchmarks.report import group_label, replay_line
from benchmarks.segments import plan
from benchmarks.workloads import build
from rmt import EncoderConfig
from rmt.option_errors import to_options

PRESET = "bench_experiment=backprop_memory"
MODES = ["rmt_full", "rmt_truncated", "rmt_checkpoint", "rmt_replay"]
TOY = [
    "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "vocab_size=64",
    "segment_tokens=16", "memory_tokens=2", "bptt_depth=1", "device=cpu", "threads=1",
    "progress=false",
]  # fmt: skip


def preset(overrides: list[str] = ()) -> BenchOptions:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("bench", [PRESET, *overrides])
    return to_options(cfg, BenchOptions, "bench_schema")


def test_preset_is_the_configuration_of_the_committed_figures():
    points = plan(preset(["device=cpu"]))
    assert [(p.method, p.segments) for p in points] == [
        (m, n) for m in MODES for n in (2, 8, 32, 128, 512)
    ]
    expected = EncoderConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4)
    for point in points:
        assert point.config == expected
        assert (point.batch_size, point.segment_tokens, point.memory_tokens) == (1, 128, 8)
        assert (point.bptt_depth, point.label_fraction, point.dtype) == (4, 0.15, "float32")
        assert (point.optimizer, point.toy_warmup) == ("none", True)
        assert (point.warmup, point.repeats, point.min_time_s) == (0, 1, 0.0)


def toy_point(method: str, optimizer: str) -> Point:
    model = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2}
    return Point(
        method=method, segments=3, batch_size=1, segment_tokens=16, memory_tokens=2,
        bptt_depth=1, model=tuple(sorted(model.items())), kernels="torch",
        label_fraction=0.5, device="cpu", dtype="float32", threads=None, warmup=0,
        repeats=1, optimizer=optimizer,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["rmt_replay", "bert_train"])
def test_optimizer_none_is_forward_and_backward_only(method):
    """No optimizer: the step leaves every weight as it was, with its gradient; AdamW moves them."""
    for optimizer in ("none", "adamw"):
        workload = build(toy_point(method, optimizer))
        before = [p.detach().clone() for p in workload.module.parameters()]
        workload.step()
        after = list(workload.module.parameters())
        assert all(p.grad is not None for p in after)
        unchanged = all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert unchanged == (optimizer == "none")


def test_toy_warmup_point_is_the_same_method_at_a_toy_size():
    point = replace(toy_point("rmt_truncated", "none"), toy_warmup=True, bptt_depth=4)
    point = replace(point, model=tuple(sorted({**dict(point.model), "activation": "gelu"}.items())))
    small = toy(point)
    assert (small.method, small.device, small.kernels, small.optimizer) == (
        point.method, point.device, point.kernels, point.optimizer,
    )  # fmt: skip
    assert small.segments == 6 and small.batch_size == 1 and not small.toy_warmup
    assert small.config.d_model == 32 and small.config.activation == "gelu"
    assert toy(replace(point, method="rmt_replay")).segments == 2
    build(small).step()


def test_replay_ratio_is_largest_over_smallest_peak_against_the_limit():
    def record(n, mb, method="rmt_replay"):
        return {"method": method, "segments": n, "status": "ok", "step_peak_delta_mb": mb}

    records = [record(2, 60.0), record(8, 68.0), record(512, 78.0), record(512, 7000.0, "rmt_full")]
    ratio = replay_ratio(records)
    assert ratio["segments"] == [512, 2] and ratio["ratio"] == pytest.approx(1.3)
    assert ratio["ok"] and ratio["limit"] == REPLAY_RATIO_LIMIT
    assert "is 1.30x its peak at 2 (limit 1.5): ok" in replay_line(ratio)
    grown = replay_ratio([record(2, 60.0), record(32, 100.0)])
    assert not grown["ok"] and replay_line(grown).endswith("EXCEEDED.")
    assert replay_ratio([record(2, 60.0)]) is None
    assert replay_ratio([record(2, 0.0), record(8, 1.0)]) is None


@pytest.mark.slow
def test_toy_preset_run_writes_every_reported_quantity(tmp_path):
    methods = "methods=[rmt_full,rmt_truncated,rmt_replay]"
    command = [sys.executable, "-m", "benchmarks.segments", PRESET, *TOY, methods]
    command += ["segments.train=[1,2]", f"hydra.run.dir={tmp_path}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in (tmp_path / "points.jsonl").read_text().splitlines()]
    assert [(r["method"], r["segments"]) for r in records] == [
        (m, n) for m in ("rmt_full", "rmt_truncated", "rmt_replay") for n in (1, 2)
    ]
    for record in records:
        assert record["status"] == "ok" and record["repeats"] == 1
        assert (record["optimizer"], record["toy_warmup"]) == ("none", True)
        # Linux's RSS counters are batched per CPU: a step that needs no new pages (a toy
        # one can fit in what its warm-up step freed) reads a few pages either side of 0.
        assert record["baseline_mb"] > 0 and record["step_peak_delta_mb"] > -0.5
        delta = record["peak_mb"] - record["baseline_mb"]
        assert record["step_peak_delta_mb"] == pytest.approx(delta)
    (group,) = json.loads((tmp_path / "fits.json").read_text())["groups"].values()
    replay = {
        r["segments"]: r["step_peak_delta_mb"] for r in records if r["method"] == "rmt_replay"
    }
    if replay[1] > 0:
        assert group["replay_ratio"]["ratio"] == pytest.approx(replay[2] / replay[1])
    else:  # a toy step can fit in the heap its warm-up step freed
        assert group["replay_ratio"] is None
    assert set(group["methods"]) == {"rmt_full", "rmt_truncated", "rmt_replay"}
    assert all(group["methods"][m]["memory"]["points"] == 2 for m in group["methods"])
    table = (tmp_path / "fits.md").read_text()
    assert "| segments | rmt_full | rmt_truncated (k=1) | rmt_replay |" in table
    label = group_label(records[0])
    assert label.endswith("no optimizer toy warm-up") and f"## {label}" in table
    env = json.loads((tmp_path / "environment.json").read_text())
    assert "after a toy step" in env["memory_metric"]
    assert (tmp_path / "train.png").stat().st_size > 0
