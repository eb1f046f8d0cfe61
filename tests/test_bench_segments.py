"""rmt-bench at a toy size: every method runs, reports are written, sweeps merge.

No timing asserts: a toy model's times are noise. What is asserted is what could be
wrong regardless of the machine: the FLOP model, the fits, the skip rule, the files.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.fits import crossover, fits, linear_fit
from benchmarks.options import BenchOptions
from benchmarks.peers import LUCI_MODULE, luci_flops
from benchmarks.points import DEFAULT_METHODS, LUCI_METHODS, METHODS, Point
from benchmarks.report import check_extras, summarize
from benchmarks.segments import describe, plan, project, run_bench, skip_reason
from benchmarks.workloads import build
from rmt.encoder import Encoder
from rmt.option_errors import to_options

TOY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "vocab_size=64",
    "segment_tokens=16",
    "memory_tokens=2",
    "bptt_depth=0",
    "batch_size=2",
    "repeats=1",
    "warmup=0",
    "min_time_s=0",
    "device=cpu",
    "threads=1",
    "progress=false",
]


def bench_config(overrides: list[str], toy: bool = True) -> BenchOptions:
    """conf/bench.yaml with `overrides`, as rmt-bench's main() converts it."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("bench", [*(TOY if toy else []), *overrides])
    return to_options(cfg, BenchOptions, "bench_schema")


def toy_point(method: str, segments: int = 3) -> Point:
    model = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2}
    return Point(
        method=method,
        segments=segments,
        batch_size=2,
        segment_tokens=16,
        memory_tokens=2,
        bptt_depth=1,
        model=tuple(sorted(model.items())),
        kernels="torch",
        label_fraction=0.15,
        device="cpu",
        dtype="float32",
        threads=None,
        warmup=0,
        repeats=1,
    )


SWEEPING = ("rmt_replay", "rmt_truncated")  # autograd.Function sweeps hide from the counter
needs_luci = pytest.mark.skipif(
    importlib.util.find_spec(LUCI_MODULE) is None,
    reason="recurrent-memory-transformer-pytorch not installed: pip install 'rmt-dna[bench]'",
)


def needing_luci(methods) -> list:
    """`methods` as parameters, lucidrains' skipped (visibly) without its package."""
    return [pytest.param(m, marks=needs_luci) if m in LUCI_METHODS else m for m in methods]


def counted_flops(method: str) -> tuple[int, int]:
    """(torch's matmul FLOP count of one step after one untimed step, the model FLOPs).

    SDPA's math backend is forced while counting: the counter sees its matmuls, not the
    fused CPU kernel's. lucidrains' attention enables every SDPA backend itself, so its
    own einsum path (the same matmuls) is switched on instead.
    """
    workload = build(toy_point(method))
    workload.step()
    for module in workload.module.modules():
        if hasattr(module, "use_flash"):  # lucidrains' Attend
            module.use_flash = False
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        workload.step()
    return counter.get_total_flops(), workload.model_flops


@pytest.mark.parametrize(
    "method", needing_luci(m for m in METHODS if m not in (*SWEEPING, "luci_replay"))
)
def test_model_flops_match_torch_flop_counter(method):
    """The analytic FLOPs each method reports are the matmul FLOPs torch counts.

    Checkpointing recomputes forwards, which MFU must not count.
    """
    counted, model_flops = counted_flops(method)
    if method == "rmt_checkpoint":
        assert model_flops < counted < 1.4 * model_flops
    else:
        assert counted == model_flops


@needs_luci
def test_luci_replay_counts_full_bptt_and_runs_a_second_backward_per_segment():
    """Its replay recomputes each segment's forward and backwards twice (loss, then memory
    gradient, the latter without the LM head): torch counts all that, MFU counts none."""
    counted, model_flops = counted_flops("luci_replay")
    point = toy_point("luci_replay")
    head = luci_flops(point, point.config) - luci_flops(point, point.config, lm_head=False)
    assert model_flops == 3 * luci_flops(point, point.config)
    assert counted == 2 * model_flops - 2 * head


@needs_luci
def test_luci_replay_gradients_are_full_bptt_gradients():
    """Memory replay is exact: the same gradients as its full-BPTT step, memory included."""
    trained = {}
    for method in ("luci_train", "luci_replay"):
        workload = build(replace(toy_point(method), optimizer="none"))  # same seed, same init
        workload.step()
        trained[method] = dict(workload.module.named_parameters())
    full, replay = trained["luci_train"], trained["luci_replay"]
    assert full["transformer.read_memory_emb"].grad.abs().max() > 0  # memory trained
    for name, parameter in full.items():
        torch.testing.assert_close(replay[name].grad, parameter.grad, rtol=1e-4, atol=1e-6)


def test_missing_peer_package_names_the_bench_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, LUCI_MODULE, None)  # as if not installed
    check_extras(["rmt_infer", "rmt_replay"])
    with pytest.raises(ValueError) as error:
        check_extras(["rmt_infer", "luci_infer", "luci_replay"])
    assert str(error.value) == (
        "recurrent-memory-transformer-pytorch (for luci_infer, luci_replay) not installed: "
        "pip install 'rmt-dna[bench]', or leave luci_infer, luci_replay out of methods=[...]"
    )


@pytest.mark.parametrize("method", SWEEPING)
def test_sweeping_modes_count_the_model_flops_of_full_bptt(method):
    assert build(toy_point(method)).model_flops == build(toy_point("rmt_full")).model_flops


def test_records_count_the_parameters_a_position_uses():
    """An MoE encoder runs top_k of its experts: active below total, counted from modules."""
    moe = {"n_experts": 4, "moe_top_k": 2, "n_kv_heads": 1}
    point = replace(toy_point("rmt_infer"), model=toy_point("rmt_infer").model + tuple(moe.items()))
    record = describe(point, {"status": "skipped"}, 1.0)
    encoder = Encoder(point.config)
    assert record["parameters"] == sum(p.numel() for p in encoder.parameters())
    expert = sum(p.numel() for p in encoder.blocks[0].mlp.experts[0].parameters())
    # 2 layers, each running 2 of its 4 experts per position
    assert record["parameters"] - record["active_parameters"] == 2 * 2 * expert


@pytest.mark.slow
def test_toy_run_writes_a_record_per_point_and_reports(tmp_path):
    options = bench_config(["segments.infer=[1,2]", "segments.train=[1,2]"])
    records = run_bench(options, tmp_path)
    assert sorted((r["method"], r["segments"]) for r in records) == sorted(
        (m, n) for m in DEFAULT_METHODS for n in (1, 2)
    )
    for record in records:
        assert record["status"] == "ok", record
        assert record["min_s"] <= record["median_s"] <= record["max_s"]
        assert record["tokens_per_s"] == pytest.approx(
            record["content_tokens"] / record["median_s"]
        )
        assert record["peak_mb"] > record["step_peak_delta_mb"] >= 0
        assert 0 < record["mfu"] < 1
    lines = (tmp_path / "points.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"] for line in lines] == [r["method"] for r in records]
    with (tmp_path / "points.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(records)
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["matmul_flops_per_s"] > 0 and env["device"] == "cpu" and env["torch"]
    document = json.loads((tmp_path / "fits.json").read_text())
    (group,) = document["groups"].values()
    assert set(group["methods"]) == set(DEFAULT_METHODS)
    assert set(group["slope_ratios"]["rmt_infer"]) <= {"naive_infer", "whole_infer", "bert_infer"}
    table = (tmp_path / "fits.md").read_text()
    assert all(f"| {m} |" in table for m in DEFAULT_METHODS if m != "rmt_truncated")
    assert "| rmt_truncated (k=0) |" in table  # its depth in its name
    assert (tmp_path / "infer.png").stat().st_size > 0 and (tmp_path / "train.png").exists()


@pytest.mark.slow
def test_hf_encoder_points_run_and_report_beside_the_native_ones(tmp_path):
    """Opt-in methods: the runner around a transformers BertModel, compared per segment."""
    methods = ["rmt_infer", "hf_rmt_infer", "rmt_full", "hf_rmt_train"]
    overrides = [f"methods=[{','.join(methods)}]", "segments.infer=[1,2]", "segments.train=[1,2]"]
    records = run_bench(bench_config(overrides), tmp_path)
    points = [(m, n) for m in methods for n in (1, 2)]
    assert [(r["method"], r["segments"]) for r in records] == points
    for record in records:
        assert record["status"] == "ok", record
        assert 0 < record["mfu"] < 1 and record["step_peak_delta_mb"] >= 0
    (group,) = json.loads((tmp_path / "fits.json").read_text())["groups"].values()
    assert set(group["methods"]) == set(methods)
    table = (tmp_path / "fits.md").read_text()
    assert "| hf_rmt_infer |" in table and "| hf_rmt_train |" in table


@pytest.mark.slow
@needs_luci
def test_lucidrains_points_run_and_report_beside_the_rmt(tmp_path):
    """Opt-in peers: each luci method at 1 and 2 segments, its step peak measured in its
    own process as rmt_replay's is, fitted and tabled beside the RMT."""
    methods = ["rmt_infer", "luci_infer", "rmt_full", "luci_train", "rmt_replay", "luci_replay"]
    overrides = [f"methods=[{','.join(methods)}]", "segments.infer=[1,2]", "segments.train=[1,2]"]
    records = run_bench(bench_config(overrides), tmp_path)
    assert [(r["method"], r["segments"]) for r in records] == [
        (m, n) for m in methods for n in (1, 2)
    ]
    for record in records:
        assert record["status"] == "ok", record
        assert 0 < record["mfu"] < 1
        assert record["peak_mb"] > record["step_peak_delta_mb"] >= 0
    (group,) = json.loads((tmp_path / "fits.json").read_text())["groups"].values()
    for method in LUCI_METHODS:  # the ratios to them: below (toy slopes are noise)
        assert group["methods"][method]["time"] and group["methods"][method]["memory"]
    table = (tmp_path / "fits.md").read_text()
    assert all(f"| {m} |" in table for m in LUCI_METHODS)


@pytest.mark.slow
def test_multirun_merges_its_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "benchmarks.segments", "-m", *TOY, "batch_size=1,2",
        "methods=[rmt_infer,whole_infer]", "segments.infer=[1,2]", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    merged = [json.loads(line) for line in (sweep / "points.jsonl").read_text().splitlines()]
    assert sorted({(r["job"], r["batch_size"]) for r in merged}) == [("0", 1), ("1", 2)]
    assert len(merged) == 2 * 2 * 2
    document = json.loads((sweep / "fits.json").read_text())
    assert len(document["groups"]) == 2 and len(document["environment"]) == 2
    assert (sweep / "infer_0.png").exists() and (sweep / "infer_1.png").exists()
    (sweep / "0" / "fits.md").unlink()  # one job's own reports can be written again
    summarize(sweep / "0")
    assert "| rmt_infer |" in (sweep / "0" / "fits.md").read_text()


@pytest.mark.slow
def test_unknown_method_is_a_clear_error(tmp_path):
    command = [sys.executable, "-m", "benchmarks.segments", *TOY, "methods=[rmt_fast]"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2
    assert "methods: ['rmt_fast'] unknown" in run.stderr and "rmt_infer" in run.stderr


def test_bench_yaml_values_are_the_schema_defaults():
    """bench.yaml and BenchOptions say the same defaults (the YAML is what users read)."""
    options = bench_config([], toy=False)
    assert options == BenchOptions(model=options.model)
    assert options.model["d_model"] == 256 and isinstance(options.segments.train, list)


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=0", "batch_size=0 must be >= 1"),
        ("segments.train=[0,2]", "segments.train=[0, 2] must list segment counts, each >= 1"),
        ("device=gpu", "device='gpu' is not one of: auto, cpu, cuda"),
        ("optimizer=sgd", "optimizer='sgd' is not one of: adamw, none"),
        ("label_fraction=0", "label_fraction=0.0 must be in (0, 1]"),
        ("threads=0", "threads=0 must be >= 1 (or null)"),
        ("+repeat=3", "unknown config key repeat (allowed: batch_size"),
        ("+model.heads=2", "model: EncoderConfig.__init__() got an unexpected keyword"),
    ],
)
def test_bad_options_name_the_key(override, message):
    with pytest.raises(ValueError) as error:
        plan(bench_config([override]))
    assert message in str(error.value)


def test_plan_orders_points_by_method_then_segments():
    options = bench_config(["methods=[rmt_replay,rmt_infer]", "segments.train=[4,1,2]"])
    points = plan(options)
    assert [(p.method, p.segments) for p in points][:4] == [
        ("rmt_replay", 1), ("rmt_replay", 2), ("rmt_replay", 4), ("rmt_infer", 1),
    ]  # fmt: skip
    assert all(p.device == "cpu" and p.dtype == "float32" for p in points)


def test_linear_fit_recovers_a_line_and_scores_the_misfit():
    line = linear_fit([(n, 0.5 * n + 2.0) for n in (1, 2, 4, 8)])
    assert line["slope"] == pytest.approx(0.5) and line["intercept"] == pytest.approx(2.0)
    assert line["r2"] == pytest.approx(1.0)
    quadratic = linear_fit([(n, float(n * n)) for n in (1, 2, 4, 8, 16)])
    assert quadratic["r2"] < 0.95
    assert linear_fit([(4, 1.0), (4, 2.0)]) is None


def test_projection_and_skip_rule():
    assert project([(2, 10.0), (4, 40.0)], 8) == pytest.approx(160.0)  # quadratic
    assert project([(2, 10.0), (4, 11.0)], 8) == pytest.approx(22.0)  # at least linear
    options = bench_config(["max_gb=1", "max_point_s=100"])
    history = [
        {"method": "whole_train", "segments": n, "status": "ok", "peak_mb": mb, "median_s": 1.0}
        for n, mb in ((2, 100.0), (4, 400.0))
    ]
    assert "projected 1.6 GB > max_gb=1" in skip_reason(
        history, toy_point("whole_train", 8), options
    )
    assert skip_reason(history, toy_point("whole_train", 4), options) is None
    failed = [{"method": "whole_train", "segments": 2, "status": "failed: exit code -9"}]
    reason = skip_reason(failed, toy_point("whole_train", 4), options)
    assert reason == "skipped: a smaller point failed"


def test_the_native_rmt_is_compared_with_the_hf_encoder_at_the_same_shape():
    def record(method, n, seconds):
        return {"method": method, "segments": n, "status": "ok", "median_s": seconds}

    methods = {"rmt_infer": 1.0, "hf_rmt_infer": 4.0, "rmt_full": 3.0, "hf_rmt_train": 2.0}
    records = [record(m, n, s * n) for m, s in methods.items() for n in (1, 2, 4)]
    for r in records:
        r["step_peak_delta_mb"] = 1.0
    ratios = fits(records)["slope_ratios"]
    assert ratios["rmt_infer"] == {"hf_rmt_infer": pytest.approx(0.25)}
    assert ratios["rmt_full"] == {"hf_rmt_train": pytest.approx(1.5)}


def test_the_rmt_is_compared_with_lucidrains_rmt_mode_by_mode():
    def record(method, n, seconds):
        return {"method": method, "segments": n, "status": "ok", "median_s": seconds}

    methods = {"rmt_infer": 1.0, "luci_infer": 2.0, "rmt_full": 3.0, "luci_train": 6.0}
    methods |= {"rmt_replay": 4.0, "luci_replay": 8.0}
    records = [record(m, n, s * n) for m, s in methods.items() for n in (1, 2, 4)]
    for r in records:
        r["step_peak_delta_mb"] = 1.0
    ratios = fits(records)["slope_ratios"]
    assert ratios["rmt_infer"] == {"luci_infer": pytest.approx(0.5)}
    assert ratios["rmt_full"] == {
        "luci_train": pytest.approx(0.5),
        "luci_replay": pytest.approx(0.375),
    }
    assert ratios["rmt_replay"]["luci_replay"] == pytest.approx(0.5)


def test_crossover_reports_where_recurrence_wins():
    def record(method, n, seconds):
        return {"method": method, "segments": n, "status": "ok", "median_s": seconds}

    records = [record("rmt_infer", n, 1.0 * n) for n in (1, 2, 4, 8)]
    # Faster at 1 segment (noise), a tie at 2, then faster for good from 4.
    records += [record("whole_infer", n, s) for n, s in ((1, 1.5), (2, 2.0), (4, 8.0))]
    cross = crossover(records, "rmt_infer", "whole_infer")
    assert cross["rmt_faster_from"] == 4
    assert cross["whole_last_measured"] == 4 and cross["rmt_beyond_whole"] == 8
