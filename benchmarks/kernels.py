"""Kernel benchmark: the Triton kernels against torch eager and torch.compile (GPU).

Every kernel is timed forward + backward with `triton.testing.do_bench` (median and
20th/80th percentiles, ms) at the widths of the `base` (768) and a 1024-wide model, on
`--rows` token rows (default 8 x 528: 8 samples of a 512-token segment + 16 memory
tokens), in `--dtype` (bf16 by default):

- `add_rms_norm`, `add_layer_norm`: residual add + norm (the pre-norm step);
- `swiglu`, `geglu`: on the MLP's split up-projection (d_ff = 8/3 d, rounded to 64);
- `rotary`: q and k of (8, heads, 528, 64), as views of the fused qkv projection;
- `linear_cross_entropy`: the MLM loss over a 32768-token vocabulary, on all rows (the
  head runs on the ~15 % labelled ones; all rows show the memory effect best).

Providers: `torch` (the `kernels.reference` op, eager), `compile` (the same function
through `torch.compile`), `triton` (the `kernels=triton` op table). Memory-bound kernels
get GB/s from a minimal traffic model (each tensor the op must read or write, once, fwd
and bwd; the same bytes for every provider) and its fraction of the device's own copy
bandwidth, measured in the same run (`benchmarks.measure.copy_bandwidth`); the loss gets
its peak memory above the inputs (`torch.cuda.max_memory_allocated`).

Then one training step of the `base` model (conf/model/base.yaml, vocab 32768, memory
runner with 16 memory tokens, 512-token segments, bf16 autocast, AdamW) with
`kernels=torch` and `kernels=triton`: tokens/s and MFU (model matmul FLOPs over the
device's own measured bf16 matmul peak, `benchmarks.measure`).

    python -m benchmarks.kernels                 # GPU: benchmarks/results/kernels_<device>.csv
    python -m benchmarks.kernels --dry-run       # CPU smoke test at toy sizes, no CSV unless --out
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from benchmarks.measure import (
    MB,
    copy_bandwidth,
    head_flops,
    matmul_peak,
    read_peak,
    segment_flops,
    start_peak,
    step_times,
)
from kernels import get_ops, reference, resolve_backend
from rmt import EncoderConfig, build_runner
from rmt.option_groups import HF_FIELDS

RESULTS = Path(__file__).parent / "results"
VOCAB = 32768
HEAD_DIM = 64
LABEL_FRACTION = 0.15
QUANTILES = [0.5, 0.2, 0.8]
FIELDS = [
    "device", "case", "provider", "width", "rows", "dtype",
    "ms_median", "ms_p20", "ms_p80", "gb_per_s", "bandwidth_fraction", "peak_mb",
    "tokens_per_s", "mfu",
]  # fmt: skip


@dataclass
class Case:
    """One kernel at one shape: inputs, a fwd+bwd closure per op, bytes moved."""

    name: str
    width: int
    rows: int
    make: Callable[[Callable], Callable[[], None]]  # op -> a fwd+bwd step
    op_name: str  # attribute of the op table
    leaves: list[torch.Tensor]  # gradients reset between runs
    bytes: int | None  # minimal traffic of fwd + bwd; None: not memory-bound


def _leaf(shape, device, dtype, scale=1.0) -> torch.Tensor:
    x = torch.randn(shape, device=device, dtype=torch.float32) * scale
    return x.to(dtype).requires_grad_()


def _backward(outputs) -> None:
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


def d_ff(width: int) -> int:
    return 64 * round(8 * width / 3 / 64)


def cases(width: int, rows: int, device: str, dtype: torch.dtype, vocab: int) -> list[Case]:
    e = torch.finfo(dtype).bits // 8
    x, delta = _leaf((rows, width), device, dtype), _leaf((rows, width), device, dtype)
    w, b = _leaf(width, device, dtype), _leaf(width, device, dtype)
    f = d_ff(width)
    h = _leaf((rows, 2 * f), device, dtype)
    heads = max(1, width // HEAD_DIM)
    qkv = _leaf((max(1, rows // 528), min(rows, 528), 3 * width), device, dtype)
    cos, sin = reference.rotary_tables(
        qkv.shape[1], width // heads, 1e4, torch.device(device), dtype
    )
    weight, bias = _leaf((vocab, width), device, dtype, 0.02), _leaf(vocab, device, dtype, 0.02)
    labels = torch.randint(0, vocab, (rows,), device=device)

    def rotary(op):
        q, k, _ = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=heads)
        return op(q, k, cos, sin)

    return [
        Case("add_rms_norm", width, rows, lambda op: lambda: _backward(op(x, delta, w, 1e-6)),
             "add_rms_norm", [x, delta, w], 8 * rows * width * e),
        Case("add_layer_norm", width, rows,
             lambda op: lambda: _backward(op(x, delta, w, b, 1e-6)),
             "add_layer_norm", [x, delta, w, b], 8 * rows * width * e),
        Case("swiglu", width, rows, lambda op: lambda: _backward(op(*h.chunk(2, -1))),
             "swiglu", [h], 8 * rows * f * e),
        Case("geglu", width, rows, lambda op: lambda: _backward(op(*h.chunk(2, -1))),
             "geglu", [h], 8 * rows * f * e),
        Case("rotary", width, qkv.shape[0] * qkv.shape[1],
             lambda op: lambda: _backward(rotary(op)), "apply_rotary", [qkv],
             8 * qkv.shape[0] * qkv.shape[1] * width * e),
        Case("linear_cross_entropy", width, rows,
             lambda op: lambda: op(x, weight, bias, labels).backward(),
             "linear_cross_entropy", [x, weight, bias], None),
    ]  # fmt: skip


def providers(dry_run: bool) -> dict[str, Callable[[str], Callable]]:
    """name -> (op name -> op). No torch.compile in a dry run (minutes of CPU compiling)."""
    torch_ops = get_ops("torch")
    found = {"torch": lambda name: getattr(torch_ops, name)}
    if not dry_run:
        compiled: dict[str, Callable] = {}
        found["compile"] = lambda name: compiled.setdefault(
            name, torch.compile(getattr(torch_ops, name))
        )
    try:
        triton_ops = get_ops("triton")
    except ValueError as err:  # dry run without TRITON_INTERPRET=1
        print(f"skipping triton: {err}", file=sys.stderr)
    else:
        found["triton"] = lambda name: getattr(triton_ops, name)
    return found


def time_ms(step: Callable[[], None], leaves: list[torch.Tensor], dry_run: bool) -> list[float]:
    """[median, p20, p80] in ms."""
    if not dry_run:
        import triton.testing

        return triton.testing.do_bench(step, grad_to_none=leaves, quantiles=QUANTILES)
    start = time.perf_counter()  # a smoke test: one run
    step()
    ms = 1e3 * (time.perf_counter() - start)
    return [ms, ms, ms]


def peak_mb(step: Callable[[], None], device: str) -> float | None:
    """Memory one step allocates above what was live before it (CUDA only)."""
    if device != "cuda":
        return None
    before = start_peak(device)
    step()
    return (read_peak(device) - before) / MB


def bench_kernels(args, device: str, dtype: torch.dtype) -> list[dict]:
    rows_out = []
    found = providers(args.dry_run)
    bandwidth = copy_bandwidth(device, 1 if args.dry_run else None)  # bytes/s
    for width in args.widths:
        for case in cases(width, args.rows, device, dtype, args.vocab):
            for provider, ops in found.items():
                step = case.make(ops(case.op_name))
                ms, p20, p80 = time_ms(step, case.leaves, args.dry_run)
                for leaf in case.leaves:
                    leaf.grad = None
                row = {
                    "case": case.name, "provider": provider, "width": width, "rows": case.rows,
                    "ms_median": ms, "ms_p20": p20, "ms_p80": p80,
                    "gb_per_s": case.bytes / ms / 1e6 if case.bytes else None,
                    "bandwidth_fraction": case.bytes / ms * 1e3 / bandwidth if case.bytes else None,
                    "peak_mb": peak_mb(step, device) if case.bytes is None else None,
                }  # fmt: skip
                rows_out.append(row)
                print(_line(row), flush=True)
    return rows_out


def model_config(name: str, overrides: list[str], vocab: int) -> EncoderConfig:
    """conf/model/<name>.yaml as rmt-train composes it."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", *overrides])
    model = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in HF_FIELDS}
    return EncoderConfig.from_dict({**model, "vocab_size": vocab})


def train_step_rows(args, device: str) -> list[dict]:
    """tokens/s and MFU of one training step of the `base` model, kernels off vs on."""
    memory, segment, batch, segments = (2, 16, 1, 1) if args.dry_run else (16, 512, 8, 2)
    amp = torch.bfloat16 if device == "cuda" else None
    peak = matmul_peak(device, amp or torch.float32, size=256 if args.dry_run else None)
    out = []
    for provider in ("torch", "triton"):
        try:
            resolve_backend(provider)
        except ValueError as err:
            print(f"skipping train step with kernels={provider}: {err}", file=sys.stderr)
            continue
        torch.manual_seed(0)
        if args.dry_run:
            toy = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2"]
            config = model_config("tiny", toy, 64)
        else:
            config = model_config("base", [], args.vocab)
        runner_config = {"memory_tokens": memory, "segment_tokens": segment}
        runner = build_runner(config, runner_config, kernels=provider).to(device).train()
        optimizer = torch.optim.AdamW(runner.parameters(), lr=1e-4)
        ids = torch.randint(5, config.vocab_size, (batch, segments * segment), device=device)
        labels = torch.where(torch.rand(ids.shape, device=device) < LABEL_FRACTION, ids, -100)

        def step(runner=runner, optimizer=optimizer, ids=ids, labels=labels):
            with torch.autocast(device, amp, enabled=amp is not None):
                loss = runner(ids, None, labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # Warm-up (allocator, autotuning, compiles) but for the dry run's single step.
        reps, warmup = (1, 0) if args.dry_run else (args.train_steps, 3)
        times = step_times(step, device, reps, warmup)
        seconds = statistics.median(times)
        flops = 3 * (
            batch * segments * segment_flops(config, segment, memory, head=False)
            + head_flops(config, int(labels.ne(-100).sum()))
        )
        row = {
            "case": "train_step_base" if not args.dry_run else "train_step_toy",
            "provider": provider, "width": config.d_model, "rows": batch * segments * segment,
            "ms_median": 1e3 * seconds, "ms_p20": 1e3 * min(times), "ms_p80": 1e3 * max(times),
            "peak_mb": peak_mb(step, device),
            "tokens_per_s": batch * segments * segment / seconds,
            "mfu": flops / seconds / peak,
        }  # fmt: skip
        out.append(row)
        print(_line(row), flush=True)
        del runner, optimizer
    return out


def _line(row: dict) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in row.items()
        if v is not None
    )


def device_slug() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_").lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[768, 1024])
    parser.add_argument("--rows", type=int, default=8 * 528)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--train-steps", type=int, default=10, help="timed steps (0: skip)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, smoke test")
    parser.add_argument("--out", type=Path, help="CSV path (default: results/kernels_<device>)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, name = "cpu", torch.float32, "cpu (dry run)"
        args.widths, args.rows, args.vocab = [40], 24, 200
    elif not torch.cuda.is_available():
        print(
            "benchmarks.kernels needs a CUDA GPU (do_bench and the Triton kernels run there); "
            "use --dry-run for a CPU smoke test at toy sizes",
            file=sys.stderr,
        )
        return 2
    else:
        device, name = "cuda", torch.cuda.get_device_name()
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = bench_kernels(args, device, dtype)
    if args.train_steps > 0:
        rows += train_step_rows(args, device)
    out = args.out or (None if args.dry_run else RESULTS / f"kernels_{device_slug()}.csv")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({"device": name, "dtype": str(dtype).removeprefix("torch."), **row})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
