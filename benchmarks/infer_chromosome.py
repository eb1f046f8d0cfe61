"""Whole-chromosome streaming inference (rmt-infer) on E. coli: speed, memory, FLOP/s.

Every point runs in a fresh process (so its peak RSS is its own) with the same torch
thread count:

- ``rmt``: rmt-infer over the whole chromosome (4.94 Mbp, + strand), split into P
  parallel streams with a burn-in, and the same over its 0.5 Mbp prefix: wall time, bp/s
  and peak RSS (the whole chromosome's peak should stay within 1.15x of the prefix's);
- ``single``: the prefix as one stream: the speed-up of the split, and how much the split
  changes the outputs (per-token log-probabilities, segment embeddings);
- ``windows``: the same encoder and head over non-overlapping windows of S tokens without
  memory (what users do today), giving the same per-token log-probabilities and pooled
  embeddings, over the whole chromosome. Throughput ratio RMT / windows compares the model
  passes (the steps' time); end-to-end rates are reported beside it (rmt-infer's include
  writing and assembling its outputs, the baseline writes nothing).

FLOP/s: the encoder's matmul FLOPs per segment (qkv, attention scores and values, output
projection, MLP, and the MLM head on content tokens) times the segments run, over the
model-pass time; compared with plain ``torch.matmul`` on the same GEMM shapes, timed in
the same process right after the run.

Without ``--checkpoint`` the default model (conf/model/tiny.yaml, conf/memory/default.yaml)
is built with random weights and a BPE trained on E. coli minus its held-out tail: weights
do not change the speed, and the outputs are not meaningful predictions.

    python -m benchmarks.infer_chromosome               # ~15-30 min on 2 CPU cores
    python -m benchmarks.infer_chromosome --prefix-bp 100000 --whole-bp 300000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import torch
from hydra import compose, initialize_config_module

from benchmarks.measure import MB, cpu_model, segment_flops, status_bytes
from data import ECOLI_RECORD, Genome, Region, bundled_genome
from data.streaming import TokenStream
from rmt import EncoderConfig, build_runner, load_model, save_checkpoint
from rmt.data_config import heldout_regions, make_genome, make_tokenizer
from rmt.infer import InferDataOptions, InferOptions, ParallelOptions, run_inference
from rmt.options import train_options

RSS_RATIO_LIMIT = 1.15
THROUGHPUT_RATIO_TARGET = 0.9
FLOPS_FRACTION_TARGET = 0.85


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint or run directory (default: build one)")
    parser.add_argument("--prefix-bp", type=int, default=500_000)
    parser.add_argument("--whole-bp", type=int, default=None, help="default: the chromosome")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="P parallel streams per record")
    parser.add_argument("--burn-in", type=int, default=4, help="segments of burn-in per part")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the paired timing")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/infer_chromosome")
    return parser.parse_args(argv)


# -- the model ------------------------------------------------------------------------


def ecoli(cache_dir: str | Path) -> Genome:
    """The bundled E. coli chromosome (decompressed once into `cache_dir`)."""
    return Genome(bundled_genome("ecoli"), cache_dir=cache_dir)


def build_default_checkpoint(directory: Path) -> Path:
    """rmt-train's default model with random weights, and the BPE rmt-train would train
    (on the same sequence: E. coli without its held-out tail)."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        options = train_options(compose("train", [f"data.cache_dir={directory / 'fasta'}"]))
    genome = make_genome(options.data, heldout_regions(options.data))
    tokenizer = make_tokenizer(options.tokenizer, genome, directory)
    model = EncoderConfig(**options.model.encoder_fields(), vocab_size=tokenizer.vocab_size)
    torch.manual_seed(options.seed)
    runner = build_runner(model, asdict(options.memory), kernels=options.kernels)
    return save_checkpoint(directory / "model", runner, tokenizer)


def gemm_shapes(config: EncoderConfig, rows: int, head_rows: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul of one step: the blocks' linear layers, then the head's."""
    d, f = config.d_model, config.d_ff
    up = 2 * f if config.activation != "gelu" else f
    shapes = [(rows, d, 3 * d), (rows, d, d), (rows, d, up), (rows, f, d)]
    return [*shapes, (head_rows, d, d), (head_rows, d, config.vocab_size)]


def time_matmuls(shapes: list[tuple[int, int, int]], reps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of ``reps`` plain torch.matmul calls on each shape."""
    flops = seconds = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        seconds += time.perf_counter() - start
        flops += 2.0 * m * k * n * reps
    return flops, seconds


def matmul_flops_per_s(config: EncoderConfig, rows: int, head_rows: int) -> float:
    """Plain torch.matmul FLOP/s over the encoder's and head's GEMM shapes."""
    flops, seconds = time_matmuls(gemm_shapes(config, rows, head_rows), reps=20)
    return flops / seconds


# -- points, each in its own process ---------------------------------------------------


def rmt_point(checkpoint: str, region: str, out: str, streams: int, args: dict) -> dict:
    """rmt-infer over ``region`` into ``out``; its summary plus FLOP/s figures."""
    torch.set_num_threads(args["threads"])
    options = InferOptions(
        checkpoint=checkpoint, output=out, regions=[region],
        data=InferDataOptions(fasta="bundled:ecoli", cache_dir=f"{args['work']}/fasta"),
        batch_size=args["batch_size"],
        parallel=ParallelOptions(streams=streams, min_bp=0, burn_in=args["burn_in"]),
        threads=args["threads"], progress=False, overwrite=True,
    )  # fmt: skip
    summary = run_inference(options)
    runner, _ = load_model(checkpoint)
    config, m = runner.encoder.config, runner.memory_tokens
    flops = summary["model_segments"] * segment_flops(config, runner.segment_tokens, m, True)
    achieved = flops / summary["model_s"]
    batch = min(args["batch_size"], summary["streams"])
    s = runner.segment_tokens
    reference = matmul_flops_per_s(config, batch * (s + m), batch * s)
    return {
        "bp": summary["strand_bp"],
        **{k: summary[k] for k in ("tokens", "segments", "burn_in_segments", "streams")},
        **{k: summary[k] for k in ("wall_s", "model_s", "bp_per_s", "peak_rss_mb")},
        "model_bp_per_s": round(summary["strand_bp"] / summary["model_s"], 1),
        "flops_per_s": achieved,
        "matmul_flops_per_s": reference,
        "flops_fraction": round(achieved / reference, 3),
    }


def windows_point(checkpoint: str, region: str, args: dict) -> dict:
    """The encoder and head over non-overlapping S-token windows, no memory, nothing written."""
    torch.set_num_threads(args["threads"])
    started = time.perf_counter()
    runner, tokenizer = load_model(checkpoint)
    genome = ecoli(f"{args['work']}/fasta")
    stream = TokenStream(genome, genome.resolve_region(region), "+", tokenizer)
    s, batch = runner.segment_tokens, args["batch_size"]
    bp = tokens = windows = 0
    model_s = 0.0
    while len(chunk := stream.take(batch * s)):
        ids = np.full((-(-len(chunk) // s), s), tokenizer.pad_id, dtype=np.int64)
        ids.flat[: len(chunk)] = chunk.ids
        ids_t = torch.from_numpy(ids)
        valid = ids_t != tokenizer.pad_id
        start = time.perf_counter()
        with torch.inference_mode():
            hidden = runner.encoder(ids_t, None if bool(valid.all()) else valid)
            logprob = runner.head.token_log_probs(hidden, ids_t)
            pooled = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        model_s += time.perf_counter() - start
        logprob.numpy(), pooled.numpy()  # what a user would take away
        bp += int(chunk.offsets[-1, 1] - chunk.offsets[0, 0])
        tokens += len(chunk)
        windows += len(ids)
    wall_s = time.perf_counter() - started
    peak = status_bytes("VmHWM") / MB
    config = runner.encoder.config
    achieved = windows * segment_flops(config, s, 0, True) / model_s
    reference = matmul_flops_per_s(config, batch * s, batch * s)
    return {
        "bp": bp, "tokens": tokens, "windows": windows, "wall_s": round(wall_s, 3),
        "model_s": round(model_s, 3), "bp_per_s": round(bp / wall_s, 1),
        "model_bp_per_s": round(bp / model_s, 1),
        "peak_rss_mb": round(peak, 1),
        "flops_per_s": achieved, "matmul_flops_per_s": reference,
        "flops_fraction": round(achieved / reference, 3),
    }  # fmt: skip


def paired_point(checkpoint: str, region: str, args: dict) -> dict:
    """Steady state, robust to a busy machine: RMT steps, window steps and matmuls interleaved.

    Each round times one RMT step (segments of real tokens with carried memory, head and
    pooling as in rmt-infer), one windows step on the same tokens, and the step's GEMM
    shapes as plain matmuls; the medians of the per-round ratios are reported, so that
    load from other processes, which drifts over seconds, cancels out.
    """
    torch.set_num_threads(args["threads"])
    runner, tokenizer = load_model(checkpoint)
    genome = ecoli(f"{args['work']}/fasta")
    stream = TokenStream(genome, genome.resolve_region(region), "+", tokenizer)
    s, b, m = runner.segment_tokens, args["batch_size"], runner.memory_tokens
    config, rounds = runner.encoder.config, args["rounds"]
    batches = [torch.from_numpy(stream.take(b * s).ids.reshape(b, s)) for _ in range(rounds)]
    shapes = gemm_shapes(config, b * (s + m), b * s)
    rmt_flops = b * segment_flops(config, s, m, True)
    ratios, fractions, rmt_times, window_times = [], [], [], []
    with torch.inference_mode():
        memory = runner.init_memory(b)
        for i, ids in enumerate([batches[0], *batches]):  # the first round warms up
            start = time.perf_counter()
            out, memory = runner.step(ids, memory)
            runner.head.token_log_probs(out.hidden, ids), out.hidden.mean(1)
            middle = time.perf_counter()
            hidden = runner.encoder(ids)
            runner.head.token_log_probs(hidden, ids), hidden.mean(1)
            end = time.perf_counter()
            flops, seconds = time_matmuls(shapes, reps=1)
            if i:
                rmt_times.append(middle - start)
                window_times.append(end - middle)
                ratios.append((end - middle) / (middle - start))
                fractions.append(rmt_flops / (middle - start) / (flops / seconds))
    return {
        "rounds": rounds,
        "rmt_step_ms": round(1e3 * statistics.median(rmt_times), 2),
        "windows_step_ms": round(1e3 * statistics.median(window_times), 2),
        "throughput_ratio": round(statistics.median(ratios), 3),
        "flops_fraction": round(statistics.median(fractions), 3),
        "flops_per_s": rmt_flops / statistics.median(rmt_times),
    }


def isolated(function, *args) -> dict:
    """Run ``function(*args)`` in a fresh interpreter and return its result."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# -- comparing the split with the single stream ---------------------------------------


def _per_token_logprob(out: Path) -> np.ndarray:
    table = np.loadtxt(out / "logprob.plus.bedGraph", usecols=(1, 2, 3), ndmin=2)
    return table[:, 2] * (table[:, 1] - table[:, 0])


def _segment_rows(out: Path, name: str) -> np.ndarray:
    with h5py.File(out / "embeddings.h5") as store:
        rows = store["segments"][name][:].astype(np.float32)
    return rows.reshape(len(rows), -1)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def split_difference(single: Path, split: Path) -> dict:
    """How far the P-split outputs are from the single stream's (same tokens, same segments)."""
    a, b = _per_token_logprob(single), _per_token_logprob(split)
    diff = np.abs(a - b)
    memory = _cosine(_segment_rows(single, "memory"), _segment_rows(split, "memory"))
    pooled = _cosine(_segment_rows(single, "embedding"), _segment_rows(split, "embedding"))
    return {
        "tokens": len(a),
        "logprob_max_abs_diff": float(diff.max()),
        "logprob_mean_abs_diff": float(diff.mean()),
        "logprob_mean_abs": float(np.abs(a).mean()),
        "tokens_changed_over_1e-3": float((diff > 1e-3).mean()),
        "logprob_pearson_r": float(np.corrcoef(a, b)[0, 1]),
        "memory_cosine_min": float(memory.min()),
        "embedding_cosine_min": float(pooled.min()),
    }


# -- the report -------------------------------------------------------------------------


def environment(threads: int) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def markdown(doc: dict) -> str:
    p, e, c, s = doc["points"], doc["environment"], doc["config"], doc["summary"]
    d, paired = s["split_difference"], p["paired"]

    def row(name: str, point: dict) -> str:
        return (
            f"| {name} | {point['bp']:,} | {point['wall_s']:,.1f} | {point['bp_per_s']:,.0f} | "
            f"{point['model_bp_per_s']:,.0f} | {point['peak_rss_mb']:,.0f} | "
            f"{point['flops_fraction']:.0%} |"
        )

    load = ", ".join(f"{x:.1f}" for x in e["load_average"])
    return "\n".join(
        [
            f"rmt-infer on E. coli {ECOLI_RECORD}: {e['cpu']} ({e['cpu_count']} cores, load "
            f"average {load} at the start), {e['torch_threads']} torch threads, torch "
            f"{e['torch']}. Model: {doc['model']}. Batch {c['batch_size']}, P = {c['streams']} "
            f"streams per record, burn-in {c['burn_in']} segments. `{doc['command']}`",
            "",
            "| run | bp | wall s | bp/s | model-pass bp/s | peak RSS MB | FLOP/s / matmul |",
            "|---|---:|---:|---:|---:|---:|---:|",
            row(f"RMT, whole chromosome, P={c['streams']}", p["rmt_whole"]),
            row(f"RMT, {c['prefix_bp']:,} bp prefix, P={c['streams']}", p["rmt_prefix"]),
            row("RMT, prefix, one stream", p["single_prefix"]),
            row("windows without memory, whole chromosome", p["windows_whole"]),
            "",
            f"- Peak RSS whole / prefix: {s['rss_ratio']:.3f} (limit {RSS_RATIO_LIMIT}).",
            f"- Throughput RMT / windows: {s['throughput_ratio']:.3f} over the whole runs' model "
            f"passes, {s['end_to_end_ratio']:.3f} end to end; {paired['throughput_ratio']:.3f} "
            f"in {paired['rounds']} interleaved rounds (median; target "
            f"{THROUGHPUT_RATIO_TARGET}).",
            f"- Encoder + head FLOP/s in the RMT pass: {paired['flops_per_s'] / 1e9:.1f} GFLOP/s, "
            f"{paired['flops_fraction']:.0%} of plain torch.matmul on the same shapes timed in "
            f"the same rounds (target {FLOPS_FRACTION_TARGET:.0%}); over the whole run "
            f"{p['rmt_whole']['flops_fraction']:.0%}.",
            f"- Growth: model-pass bp/s whole / prefix = {s['growth_ratio']:.3f}.",
            f"- P-split speed-up over one stream (prefix, model pass): {s['split_speedup']:.2f}x. "
            f"Output change: per-token log-prob mean |diff| {d['logprob_mean_abs_diff']:.2e} "
            f"(max {d['logprob_max_abs_diff']:.2e}; mean |log-prob| {d['logprob_mean_abs']:.2f}),"
            f" {d['tokens_changed_over_1e-3']:.2%} of tokens change by more than 1e-3, Pearson r "
            f"{d['logprob_pearson_r']:.6f}; memory cosine >= {d['memory_cosine_min']:.4f}, "
            f"segment embedding cosine >= {d['embedding_cosine_min']:.4f}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(args.work or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else build_default_checkpoint(work)
    runner, _ = load_model(checkpoint)
    length = ecoli(work / "fasta").lengths
    whole = Region(ECOLI_RECORD, 0, args.whole_bp or length[ECOLI_RECORD])
    prefix = Region(ECOLI_RECORD, 0, args.prefix_bp)
    shared = {k: getattr(args, k) for k in ("threads", "batch_size", "burn_in", "rounds")}
    shared["work"] = str(work)
    points = {}
    plan = [
        ("rmt_prefix", rmt_point, str(prefix), "prefix", args.streams),
        ("single_prefix", rmt_point, str(prefix), "single", 1),
        ("rmt_whole", rmt_point, str(whole), "whole", args.streams),
    ]
    for name, function, region, out, streams in plan:
        points[name] = isolated(function, str(checkpoint), region, str(work / out), streams, shared)
        print(f"{name}: {json.dumps(points[name])}", flush=True)
    points["windows_whole"] = isolated(windows_point, str(checkpoint), str(whole), shared)
    print(f"windows_whole: {json.dumps(points['windows_whole'])}", flush=True)
    points["paired"] = isolated(paired_point, str(checkpoint), str(whole), shared)
    print(f"paired: {json.dumps(points['paired'])}", flush=True)
    summary = {
        "rss_ratio": points["rmt_whole"]["peak_rss_mb"] / points["rmt_prefix"]["peak_rss_mb"],
        "throughput_ratio": points["rmt_whole"]["model_bp_per_s"]
        / points["windows_whole"]["model_bp_per_s"],
        "end_to_end_ratio": points["rmt_whole"]["bp_per_s"] / points["windows_whole"]["bp_per_s"],
        "growth_ratio": points["rmt_whole"]["model_bp_per_s"]
        / points["rmt_prefix"]["model_bp_per_s"],
        "split_speedup": points["rmt_prefix"]["model_bp_per_s"]
        / points["single_prefix"]["model_bp_per_s"],
        "split_difference": split_difference(work / "single", work / "prefix"),
    }
    config = runner.encoder.config
    doc = {
        "benchmark": "infer_chromosome",
        "environment": environment(args.threads),
        "model": (
            f"d_model {config.d_model}, {config.n_layers} layers, {config.n_heads} heads, "
            f"{config.activation}, {config.norm}, vocab {config.vocab_size}; "
            f"{runner.memory_tokens} memory tokens, {runner.segment_tokens}-token segments"
            + (f"; checkpoint {args.checkpoint}" if args.checkpoint else "; random weights")
        ),
        "command": " ".join(["python -m benchmarks.infer_chromosome", *(argv or sys.argv[1:])]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "summary": summary,
        "points": points,
    }
    prefix_out = Path(args.out)
    prefix_out.parent.mkdir(parents=True, exist_ok=True)
    prefix_out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    prefix_out.with_suffix(".md").write_text(table)
    print(table)
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
