"""rmt-bench: step time and peak memory against the number of segments.

    rmt-bench                                  # conf/bench.yaml: the committed CPU sweep
    rmt-bench methods=[rmt_infer,bert_infer] segments.infer=[1,4,16]
    rmt-bench -m batch_size=1,4                # one job each, merged when the sweep ends

Every (method, segments) point runs in a fresh process forked from a server that has
imported only torch and rmt, so its peak memory is its own: CPU peak RSS (VmHWM, reset
when the point's model and batch are built) or `torch.cuda.max_memory_allocated`; with
`toy_warmup`, one toy-sized step of the method runs first, so what a process starts once
is not counted as the step's. The point's `warmup` steps are untimed, then at least
`repeats` steps and `min_time_s` of them give the median, min and max.
The device's own matmul FLOP/s is measured once per job, in a fresh process too, as the
denominator of model FLOPs utilization (MFU).

Each job writes `points.jsonl` (a line per point, as measured), then `points.csv`,
`fits.json`, `fits.md` and plots (`benchmarks.report`); a multirun merges its jobs into
the sweep directory (`rmt-bench-summary DIR` does the same by hand).

Presets in conf/bench_experiment/ set whole experiments:
`rmt-bench bench_experiment=backprop_memory` is the backprop-memory benchmark (one
forward + backward per point, no optimizer, after a toy warm-up step).
The options are typed (`benchmarks.options.BenchOptions`); `main()` converts them once.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from benchmarks import report
from benchmarks.measure import (
    MB,
    environment,
    fork_context,
    matmul_peak,
    parameter_counts,
    read_peak,
    run_isolated,
    start_peak,
)
from benchmarks.options import BenchOptions
from benchmarks.points import Point, kind, toy
from benchmarks.workloads import build
from rmt import EncoderConfig
from rmt.cli import MetricsLog, user_errors, write_json
from rmt.install import CONFIG_PATH
from rmt.option_errors import to_options

PRELOAD = ["torch", "rmt", "benchmarks.workloads", "torch.fx.experimental.symbolic_shapes"]
POINTS_FILE = "points.jsonl"


def measure_point(point: Point) -> dict:
    """Build `point`'s workload in this process, run it, and return time and memory."""
    if point.threads:
        torch.set_num_threads(point.threads)
    cuda = point.device == "cuda"
    if point.toy_warmup:  # before the baseline: what a process starts once is not the step's
        build(toy(point)).step()
    workload = build(point)
    baseline = start_peak(point.device)
    start = time.perf_counter()
    for _ in range(point.warmup):
        workload.step()  # with compile: the graphs are compiled here
    warmup_s = time.perf_counter() - start
    times: list[float] = []
    # At least `repeats` steps and `min_time_s` of them: a millisecond step timed three
    # times is noise, a minute-long one timed three times is enough.
    while len(times) < point.repeats or sum(times) < point.min_time_s:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        workload.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = read_peak(point.device)
    median = statistics.median(times)
    return {
        "status": "ok",
        "median_s": median,
        "min_s": min(times),
        "repeats": len(times),
        "max_s": max(times),
        "warmup_s": warmup_s,
        "tokens_per_s": point.content_tokens / median,
        "s_per_segment": median / point.segments,
        "baseline_mb": baseline / MB,
        "peak_mb": peak / MB,
        "step_peak_delta_mb": (peak - baseline) / MB,
        "model_flops": workload.model_flops,
        "flops_per_s": workload.model_flops / median,
    }


def measure_peak(device: str, dtype: str, threads: int | None) -> dict:
    """The matmul FLOP/s of this device, in a process of its own."""
    if threads:
        torch.set_num_threads(threads)
    flops = matmul_peak(device, getattr(torch, dtype))
    return {"status": "ok", "matmul_flops_per_s": flops, **environment(device)}


def resolve(options: BenchOptions) -> tuple[str, str]:
    """(device, dtype) from `device` and `dtype` (auto: CUDA in bf16 when present)."""
    cuda = torch.cuda.is_available()
    device = options.device if options.device != "auto" else "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        raise ValueError("device=cuda but torch sees no CUDA device; use device=cpu")
    auto_dtype = "bfloat16" if device == "cuda" else "float32"
    dtype = options.dtype if options.dtype != "auto" else auto_dtype
    return device, dtype


def model_fields(options: BenchOptions) -> dict:
    """The encoder's fields: the `model` node with rmt-bench's `vocab_size`, checked."""
    model = options.model
    fields = asdict(model) if is_dataclass(model) else dict(model)
    fields["vocab_size"] = options.vocab_size
    try:
        EncoderConfig(**fields)
    except TypeError as err:  # an unknown key: name it as the config does
        raise ValueError(f"model: {err}; see conf/model/tiny.yaml for the keys") from None
    return fields


def plan(options: BenchOptions) -> list[Point]:
    """Every point of the job: method by method, segments increasing."""
    device, dtype = resolve(options)
    model = tuple(sorted(model_fields(options).items()))
    segments = {"infer": options.segments.infer, "train": options.segments.train}
    return [
        Point(
            method=method,
            segments=n,
            batch_size=options.batch_size,
            segment_tokens=options.segment_tokens,
            memory_tokens=options.memory_tokens,
            bptt_depth=options.bptt_depth,
            model=model,
            kernels=options.kernels,
            label_fraction=options.label_fraction,
            device=device,
            dtype=dtype,
            threads=options.threads,
            warmup=options.warmup,
            repeats=options.repeats,
            min_time_s=options.min_time_s,
            seed=options.seed,
            optimizer=options.optimizer,
            toy_warmup=options.toy_warmup,
            compile=options.compile,
        )
        for method in dict.fromkeys(options.methods)
        for n in sorted(set(segments[kind(method)]))
    ]


def project(measured: list[tuple[int, float]], segments: int) -> float | None:
    """A value at `segments` on the power law through the last two measured points."""
    if len(measured) < 2:
        return measured[-1][1] if measured else None
    (n1, y1), (n2, y2) = measured[-2:]
    if y1 <= 0 or y2 <= 0:
        return y2
    exponent = math.log(y2 / y1) / math.log(n2 / n1)
    return y2 * (segments / n2) ** max(exponent, 1.0)


def skip_reason(history: list[dict], point: Point, options: BenchOptions) -> str | None:
    """Why `point` is not run, given the same method's earlier records (None: run it)."""
    if any(r["status"].startswith("failed") for r in history):
        return "skipped: a smaller point failed"
    ok = [r for r in history if r["status"] == "ok"]
    memory = project([(r["segments"], r["peak_mb"]) for r in ok], point.segments)
    if memory is not None and memory > options.max_gb * 1024:
        return f"skipped: projected {memory / 1024:.1f} GB > max_gb={options.max_gb:g}"
    seconds = project([(r["segments"], r["median_s"]) for r in ok], point.segments)
    steps = point.warmup + point.repeats
    if seconds is not None and seconds * steps > options.max_point_s:
        return f"skipped: projected {seconds * steps:.0f} s > max_point_s={options.max_point_s:g}"
    return None


def run_bench(options: BenchOptions, out_dir: Path) -> list[dict]:
    """Measure every point of `options` into `out_dir`; returns the records, writes reports."""
    points = plan(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / POINTS_FILE).unlink(missing_ok=True)
    context = fork_context(PRELOAD)
    device, dtype = points[0].device, points[0].dtype
    env = run_isolated(context, measure_peak, device, dtype, options.threads)
    if env["status"] != "ok":
        raise RuntimeError(f"measuring the matmul peak failed ({env['status']})")
    del env["status"]
    env["dtype"] = dtype
    env["memory_metric"] = memory_metric(points[0])
    write_json(out_dir / "environment.json", env)

    log, records = MetricsLog(out_dir / POINTS_FILE), []
    bar = tqdm(points, desc="rmt-bench", unit="point", disable=not options.progress)
    for point in bar:
        bar.set_postfix_str(f"{point.method} x{point.segments}")
        history = [r for r in records if r["method"] == point.method]
        reason = skip_reason(history, point, options)
        result = {"status": reason} if reason else run_isolated(context, measure_point, point)
        record = describe(point, result, env["matmul_flops_per_s"])
        log.write(record)
        records.append(record)
        if record["status"] != "ok":
            bar.write(f"{point.method} at {point.segments} segments: {record['status']}")
    log.close()
    report.write_reports(records, env, out_dir)
    return records


def memory_metric(point: Point) -> str:
    """What `step_peak_delta_mb` measures, in words, for environment.json."""
    warm = "after a toy step of the method, " if point.toy_warmup else ""
    if point.device == "cuda":
        return f"max_memory_allocated - memory_allocated ({warm}model and batch built)"
    return f"VmHWM - VmRSS, VmHWM reset to VmRSS {warm}once model and batch are built"


def describe(point: Point, result: dict, peak_flops: float) -> dict:
    """One JSON line: what was measured, with what, and (when it ran) the figures."""
    config = point.config
    total, active = parameter_counts(config)  # the configured encoder's (MoE: active < total)
    record = {
        "method": point.method,
        "kind": kind(point.method),
        "segments": point.segments,
        "content_tokens": point.content_tokens,
        "batch_size": point.batch_size,
        "segment_tokens": point.segment_tokens,
        "memory_tokens": point.memory_tokens,
        "bptt_depth": point.bptt_depth if point.method == "rmt_truncated" else None,
        "optimizer": point.optimizer if kind(point.method) == "train" else None,
        "toy_warmup": point.toy_warmup,
        "compile": point.compile,
        "model": f"d{config.d_model}x{config.n_layers} h{config.n_heads} v{config.vocab_size}",
        "parameters": total,
        "active_parameters": active,
        "device": point.device,
        "dtype": point.dtype,
        **result,
    }
    if result["status"] == "ok":
        record["mfu"] = result["flops_per_s"] / peak_flops
    return record


@hydra.main(config_path=CONFIG_PATH, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors("rmt-bench"):
        options = to_options(cfg, BenchOptions, "bench_schema")  # validated here, once
        report.check_extras(options.methods)
        records = run_bench(options, out_dir)
        ok = sum(r["status"] == "ok" for r in records)
        print(f"{ok}/{len(records)} points measured -> {out_dir / 'fits.md'}")


if __name__ == "__main__":
    from rmt.entry import run_app  # config mistakes: one line, exit 2, as rmt-bench

    run_app(main, "rmt-bench")
