"""Peak memory of one training step for each backprop mode, against the number of segments.

For every (mode, segments) point the benchmark builds the runner and one random MLM batch
(15 % of the tokens labelled), runs one training step (forward + backward, no optimizer)
and measures the memory the step itself adds on top of the model and the batch:

- CPU: the process's resident set. VmRSS is read just before the step, the high-water
  mark VmHWM is reset to it (`/proc/self/clear_refs`) and read again after the step;
  `step_peak_delta_mb` = peak - baseline.
- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus
  `memory_allocated()` just before the step.

Each point runs in a fresh process, forked from a server that has only imported torch and
rmt, so a point's peak is neither raised by an earlier, larger point nor hidden by memory
an earlier point freed but the allocator kept. Before the baseline is read, one step of a
toy-sized runner in the same mode starts what a process starts once (thread pools and
their allocator arenas, lazily imported modules: ~20 MB on CPU), so that is not counted
as the step's; the toy step itself leaves almost nothing behind for the real step to
reuse. Step times are reported for information only.

A point whose peak, extrapolated linearly from the mode's two largest measured points,
would exceed `--max-gb` is skipped instead of being run into the out-of-memory killer.
MB here means MiB (2**20 bytes).

    python -m benchmarks.backprop_memory        # tiny model, 2 ... 512 segments, all modes
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import measure
from benchmarks.measure import MB, fork_context, read_peak, run_isolated, start_peak
from rmt import EncoderConfig, MemoryRunner, build_runner
from rmt.runner import BACKPROP_MODES

REPLAY_RATIO_LIMIT = 1.5
LABEL_FRACTION = 0.15
# Imported once by the fork server, so that each point's process starts at once
# (the last one is what torch.autograd.grad imports, slowly, on first use).
PRELOAD = ["torch", "rmt", "torch.fx.experimental.symbolic_shapes"]
CSV_FIELDS = [
    "mode",
    "segments",
    "bptt_depth",
    "tokens",
    "status",
    "baseline_mb",
    "peak_mb",
    "step_peak_delta_mb",
    "step_time_s",
]


@dataclass(frozen=True)
class Point:
    """One measurement: a backprop mode at a number of segments, and the model's shape."""

    mode: str
    segments: int
    bptt_depth: int
    batch_size: int
    segment_tokens: int
    memory_tokens: int
    d_model: int
    layers: int
    heads: int
    vocab: int
    device: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, nargs="+", default=[2, 8, 32, 128, 512])
    parser.add_argument("--modes", nargs="+", choices=BACKPROP_MODES, default=BACKPROP_MODES)
    parser.add_argument("--bptt-depth", type=int, default=4, help="k for the truncated mode")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--segment-tokens", type=int, default=128)
    parser.add_argument("--memory-tokens", type=int, default=8)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--max-gb", type=float, default=16.0, help="skip points projected above")
    parser.add_argument(
        "--out",
        default="benchmarks/results/backprop_memory",
        help="path prefix of the .json, .csv, .md and .png outputs",
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if min(args.segments) < 1:
        parser.error("--segments must be >= 1")
    args.segments = sorted(set(args.segments))
    args.modes = list(dict.fromkeys(args.modes))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# -- one point, in its own process ---------------------------------------------------


def build_step(point: Point) -> tuple[MemoryRunner, torch.Tensor, torch.Tensor]:
    """The runner and one random MLM batch of `point.segments` segments."""
    torch.manual_seed(0)
    config = EncoderConfig(
        vocab_size=point.vocab,
        d_model=point.d_model,
        n_layers=point.layers,
        n_heads=point.heads,
    )
    runner = build_runner(
        config,
        {
            "memory_tokens": point.memory_tokens,
            "segment_tokens": point.segment_tokens,
            "bptt_depth": point.bptt_depth,
            "backprop": point.mode,
        },
    ).to(point.device)
    shape = (point.batch_size, point.segments * point.segment_tokens)
    input_ids = torch.randint(0, point.vocab, shape, device=point.device)
    labelled = torch.rand(shape, device=point.device) < LABEL_FRACTION
    return runner, input_ids, torch.where(labelled, input_ids, -100)


def warm_up(point: Point) -> None:
    """One step of a toy runner in the same mode: starts the runtime, keeps ~nothing."""
    toy = replace(
        point,
        segments=max(2, point.bptt_depth + 2),  # truncation takes its exact sweep
        batch_size=1,
        segment_tokens=16,
        memory_tokens=2,
        d_model=32,
        layers=1,
        heads=2,
        vocab=64,
    )
    runner, input_ids, labels = build_step(toy)
    runner(input_ids, labels=labels).loss.backward()


def measure_point(point: Point) -> dict:
    """Run one training step of `point` in this process; its memory and time."""
    warm_up(point)
    runner, input_ids, labels = build_step(point)
    baseline = start_peak(point.device)
    start = time.perf_counter()
    runner(input_ids, labels=labels).loss.backward()
    peak = read_peak(point.device)  # synchronizes CUDA first
    elapsed = time.perf_counter() - start
    return {
        "status": "ok",
        "baseline_mb": round(baseline / MB, 1),
        "peak_mb": round(peak / MB, 1),
        "step_peak_delta_mb": round((peak - baseline) / MB, 1),
        "step_time_s": round(elapsed, 3),
    }


# -- the sweep -----------------------------------------------------------------------


def extrapolate(measured: list[tuple[int, float]], segments: int) -> float | None:
    """Peak MB at `segments`, on the line through the two largest measured points."""
    if len(measured) < 2:
        return None
    (n1, peak1), (n2, peak2) = measured[-2:]
    return peak2 + (peak2 - peak1) / (n2 - n1) * (segments - n2)


def sweep(args: argparse.Namespace) -> list[dict]:
    """All points, mode by mode in increasing segments; one progress line per point."""
    context = fork_context(PRELOAD)
    total, records = len(args.modes) * len(args.segments), []
    for mode in args.modes:
        measured: list[tuple[int, float]] = []
        failed = False
        for segments in args.segments:
            point = Point(
                mode=mode,
                segments=segments,
                bptt_depth=args.bptt_depth if mode == "truncated" else -1,
                batch_size=args.batch_size,
                segment_tokens=args.segment_tokens,
                memory_tokens=args.memory_tokens,
                d_model=args.d_model,
                layers=args.layers,
                heads=args.heads,
                vocab=args.vocab,
                device=args.device,
            )
            estimate = extrapolate(measured, segments)
            if failed:
                result = {"status": "skipped: a smaller point failed"}
            elif estimate is not None and estimate > args.max_gb * 1024:
                gb = estimate / 1024
                result = {"status": f"skipped: estimated {gb:.1f} GB > {args.max_gb:g} GB limit"}
            else:
                result = run_isolated(context, measure_point, point)
            record = {
                "mode": mode,
                "segments": segments,
                "bptt_depth": point.bptt_depth,
                "tokens": segments * args.segment_tokens,
                **result,
            }
            records.append(record)
            if record["status"] == "ok":
                measured.append((segments, record["peak_mb"]))
            failed = failed or record["status"].startswith("failed")
            print(f"[{len(records)}/{total}] {describe(record)}", flush=True)
    return records


def describe(record: dict) -> str:
    where = f"{record['mode']:>10} {record['segments']:>4} segments"
    if record["status"] != "ok":
        return f"{where}: {record['status']}"
    return (
        f"{where}: step peak +{record['step_peak_delta_mb']:,.0f} MB "
        f"(peak {record['peak_mb']:,.0f} MB), {record['step_time_s']:.1f} s"
    )


# -- summary and outputs ------------------------------------------------------------


def measured_points(records: list[dict], mode: str) -> list[tuple[int, float]]:
    """(segments, step peak delta MB) of the mode's successful points, by segments."""
    return sorted(
        (r["segments"], r["step_peak_delta_mb"])
        for r in records
        if r["mode"] == mode and r["status"] == "ok"
    )


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of MB against segments."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def summarize(records: list[dict], modes: list[str]) -> dict:
    """MB per segment of every mode, and replay's largest-to-smallest peak ratio."""
    points = {mode: measured_points(records, mode) for mode in modes}
    summary: dict = {
        "mb_per_segment": {m: round(slope(p), 2) for m, p in points.items() if len(p) >= 2},
        "replay_ratio": None,
    }
    replay = points.get("replay", [])
    if len(replay) >= 2 and replay[0][1] > 0:
        (small, low), (large, high) = replay[0], replay[-1]
        summary["replay_ratio"] = {
            "segments": [large, small],
            "ratio": round(high / low, 3),
            "limit": REPLAY_RATIO_LIMIT,
            "ok": high / low <= REPLAY_RATIO_LIMIT,
        }
    return summary


def ratio_line(summary: dict) -> str:
    ratio = summary["replay_ratio"]
    if ratio is None:
        return "replay ratio: not measured (needs replay at 2+ segment counts, a nonzero peak)"
    large, small = ratio["segments"]
    verdict = "ok" if ratio["ok"] else "EXCEEDED"
    return (
        f"replay {large}/{small} ratio = {ratio['ratio']:.2f} (limit {ratio['limit']}): {verdict}"
    )


def mode_label(mode: str, bptt_depth: int) -> str:
    return f"truncated (k={bptt_depth})" if mode == "truncated" else mode


def markdown(records: list[dict], args: argparse.Namespace, summary: dict) -> str:
    """Step peak memory and step time tables: rows = segments, columns = modes."""
    by_point = {(r["mode"], r["segments"]): r for r in records}
    modes, segments = args.modes, args.segments
    header = "| segments | " + " | ".join(mode_label(m, args.bptt_depth) for m in modes) + " |"
    rule = "|---:|" + "---:|" * len(modes)

    def table(value) -> list[str]:
        rows = [header, rule]
        for n in segments:
            cells = [by_point[m, n] for m in modes]
            rows.append(
                f"| {n} | "
                + " | ".join(
                    value(c) if c["status"] == "ok" else c["status"].split(":")[0] for c in cells
                )
                + " |"
            )
        return rows

    slopes = summary["mb_per_segment"]
    fit = " | ".join(f"{slopes[m]:.2f}" if m in slopes else "–" for m in modes)
    baseline = "allocated memory" if args.device == "cuda" else "RSS"
    notes = [
        f"- {r['mode']} at {r['segments']} segments: {r['status']}"
        for r in records
        if r["status"] != "ok"
    ]
    return "\n".join(
        [
            f"Step peak memory (MB above the {baseline} before the step) of one forward + "
            f"backward on {args.device}: d_model={args.d_model}, {args.layers} layers, "
            f"{args.heads} heads, vocab {args.vocab}; {args.segment_tokens} tokens + "
            f"{args.memory_tokens} memory per segment, batch {args.batch_size}.",
            "",
            *table(lambda r: f"{r['step_peak_delta_mb']:,.0f}"),
            f"| MB / segment (fit) | {fit} |",
            "",
            *notes,
            *([""] if notes else []),
            ratio_line(summary),
            "",
            "Step time (s), for information:",
            "",
            *table(lambda r: f"{r['step_time_s']:.1f}"),
            "",
        ]
    )


def environment(args: argparse.Namespace) -> dict:
    return {
        **measure.environment(args.device),
        "memory_metric": (
            "torch.cuda.max_memory_allocated - memory_allocated before the step"
            if args.device == "cuda"
            else "VmHWM (reset before the step) - VmRSS before the step"
        ),
    }


def plot(records: list[dict], args: argparse.Namespace, summary: dict, path: Path) -> bool:
    """Log-log step peak memory against segments; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install -e '.[bench]'")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for mode in args.modes:
        points = [(n, mb) for n, mb in measured_points(records, mode) if mb > 0]  # log scale
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=mode_label(mode, args.bptt_depth))
    points = [p for m in args.modes for p in measured_points(records, m)]
    anchor = max(points, key=lambda p: p[1], default=None)
    if anchor is not None and anchor[1] > 0:  # proportional to segments, through the top
        xs = args.segments
        ax.plot(xs, [anchor[1] * x / anchor[0] for x in xs], "k--", lw=1, label="∝ segments")
    if summary["replay_ratio"] is not None:
        small, low = measured_points(records, "replay")[0]
        limit = REPLAY_RATIO_LIMIT * low
        label = f"{REPLAY_RATIO_LIMIT}× replay at {small} segments"
        ax.axhline(limit, color="gray", ls=":", lw=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(args.segments, [str(n) for n in args.segments])
    ax.tick_params(axis="x", which="minor", bottom=False)
    ax.set_xlabel(f"segments ({args.segment_tokens} tokens + {args.memory_tokens} memory each)")
    ax.set_ylabel("step peak memory (MB above baseline)")
    ax.set_title(
        f"One training step, d_model={args.d_model} x {args.layers} layers, "
        f"batch {args.batch_size}, {args.device}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def write_outputs(records: list[dict], args: argparse.Namespace, seconds: float) -> dict:
    """The .json, .csv, .md (and .png) files at the `--out` prefix; returns the summary."""
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)

    def output(suffix: str) -> Path:
        return prefix.parent / f"{prefix.name}.{suffix}"

    summary = summarize(records, args.modes)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_plot")}
    document = {
        "benchmark": "backprop_memory",
        "environment": environment(args),
        "config": config,
        "sweep_seconds": round(seconds, 1),
        "summary": summary,
        "records": records,
    }
    output("json").write_text(json.dumps(document, indent=2) + "\n")
    with output("csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    table = markdown(records, args, summary)
    output("md").write_text(table)
    print(table)
    if not args.no_plot:
        plot(records, args, summary, output("png"))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    records = sweep(args)
    write_outputs(records, args, time.perf_counter() - start)
    print(f"sweep took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
