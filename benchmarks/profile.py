"""Where a step's time goes: torch.profiler over rmt-bench workloads, op by op.

    python -m benchmarks.profile    # rmt_infer vs bert_infer, rmt_full vs bert_train
    python -m benchmarks.profile --methods rmt_infer --segments 16 --top 20
    python -m benchmarks.profile --dtype bfloat16 --out benchmarks/results/profile_bf16.json

Each method is built exactly as rmt-bench builds it (`benchmarks.workloads.build`, the
CPU sweep's shape by default), stepped `--warmup` times, then profiled over `--steps`
steps. The table lists the ops with the most self time (time inside the op itself, not
its children), in ms per step and as a share of the step, so two methods read side by
side: what the native encoder spends that HF BERT does not, and the reverse.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from benchmarks.measure import environment
from benchmarks.points import Point
from benchmarks.workloads import build

DEFAULT_METHODS = ("rmt_infer", "bert_infer", "rmt_full", "bert_train")
TINY = {"vocab_size": 32000, "d_model": 256, "n_layers": 4, "n_heads": 4}


def point(args: argparse.Namespace, method: str) -> Point:
    """The rmt-bench point of `method` at the sweep's shape (conf/bench.yaml, model=tiny)."""
    from rmt import EncoderConfig

    model = EncoderConfig(**TINY).to_dict()
    return Point(
        method=method,
        segments=args.segments,
        batch_size=args.batch_size,
        segment_tokens=args.segment_tokens,
        memory_tokens=args.memory_tokens,
        bptt_depth=4,
        model=tuple(sorted(model.items())),
        kernels="auto",
        label_fraction=0.15,
        device="cpu",
        dtype=args.dtype,
        threads=None,
        warmup=0,
        repeats=1,
        optimizer="none",
        compile=args.compile,
    )


def profile_method(args: argparse.Namespace, method: str) -> dict:
    """Self CPU time per op (ms per step), the top `args.top` ops and the step's total."""
    workload = build(point(args, method))
    for _ in range(args.warmup):
        workload.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            workload.step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {
            "op": e.key,
            "ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
            "share": e.self_cpu_time_total / total_us,
            "calls_per_step": e.count / args.steps,
        }
        for e in events[: args.top]
    ]
    return {"method": method, "ms_per_step": total_us / 1e3 / args.steps, "top": ops}


def markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines += [
            f"### {result['method']}: {result['ms_per_step']:.1f} ms per step (self time)",
            "",
            "| op | ms / step | share | calls / step |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{op['op']}` | {op['ms_per_step']:.2f} | {op['share']:.1%} "
            f"| {op['calls_per_step']:.0f} |"
            for op in result["top"]
        ]
        lines.append("")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment-tokens", type=int, default=128)
    parser.add_argument("--memory-tokens", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    results = [profile_method(args, method) for method in args.methods]
    print(markdown(results))
    if args.out:
        report = {"environment": environment("cpu"), "args": vars(args) | {"out": None}}
        report["results"] = results
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as tmp:
            json.dump(report, tmp, indent=1)
        os.replace(tmp.name, args.out)


if __name__ == "__main__":
    main()
