"""bf16 against fp32 inference on this CPU: per-token log-prob differences and speed.

    python -m benchmarks.bf16_cpu runs/default --out benchmarks/results/bf16_cpu.json

A trained checkpoint streams a held-out stretch of its genome (the chromosome's last
`--bp` bases; the default run holds out its last 5 %) through the memory, `--streams`
stretches side by side, once in fp32 and once under bf16 autocast, in alternating rounds
of one process. Each token is scored as rmt-infer scores it with `tracks.masked_stride`:
masked, its log-probability read off the MLM head (`rmt.infer.score.score_step`), the
number that variant scores and likelihood tracks are made of. Reported: the per-token
|difference| (mean, 99th percentile, max), the mean signed difference, Spearman's rho
between the two, and the throughput ratio bf16 / fp32 with whether this CPU has native
bf16 math (`rmt.cli.cpu_bf16_native`): emulated bf16 gives the same numbers, slower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.measure import environment
from data import Genome, bundled_genome
from rmt.checkpoint import load_model
from rmt.cli import cpu_bf16_native
from rmt.infer.score import SegmentBatch, score_step
from rmt.runner import MemoryRunner


def held_out_ids(fasta: str, tokenizer, bp: int, streams: int) -> torch.Tensor:
    """(streams, tokens) ids of the last `bp` bases of the FASTA's first record, cut into
    `streams` consecutive stretches."""
    genome = Genome(fasta)
    chrom, length = next(iter(genome.lengths.items()))
    sequence = genome.fetch(chrom, length - bp, length)
    piece = bp // streams
    encoded = [tokenizer.encode(sequence[i * piece : (i + 1) * piece]).ids for i in range(streams)]
    tokens = min(len(e) for e in encoded)
    return torch.tensor(np.stack([e[:tokens] for e in encoded]))


def masked_scores(
    runner: MemoryRunner, ids: torch.Tensor, stride: int, mask_id: int, amp: torch.dtype | None
) -> torch.Tensor:
    """Each token's masked log-probability (streams, tokens), memory carried."""
    memory = runner.init_memory(ids.shape[0]).detach()
    out = []
    for segment in ids.split(runner.segment_tokens, dim=1):
        valid = torch.ones_like(segment, dtype=torch.bool)
        lengths = torch.full((segment.shape[0],), segment.shape[1])
        batch = SegmentBatch(segment, valid, lengths)
        scores = score_step(runner, batch, memory, stride, mask_id, amp)
        memory = scores.memory
        out.append(scores.masked.float())
    return torch.cat(out, 1)


def compare(args: argparse.Namespace) -> dict:
    runner, tokenizer = load_model(args.checkpoint)
    runner.eval()
    ids = held_out_ids(args.fasta, tokenizer, args.bp, args.streams)
    precisions = {"fp32": None, "bf16": torch.bfloat16}
    seconds: dict[str, list[float]] = {name: [] for name in precisions}
    scores: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, amp in precisions.items():
            start = time.perf_counter()
            scores[name] = masked_scores(runner, ids, args.stride, tokenizer.mask_id, amp)
            seconds[name].append(time.perf_counter() - start)
    fp32, bf16 = scores["fp32"].flatten(), scores["bf16"].flatten()
    diff = (bf16 - fp32).abs()
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "checkpoint": str(args.checkpoint),
        "fasta": args.fasta,
        "tokens": ids.numel(),
        "masked_stride": args.stride,
        "cpu_bf16_native": cpu_bf16_native(),
        "mean_abs_diff": float(diff.mean()),
        "p99_abs_diff": float(diff.quantile(0.99)),
        "max_abs_diff": float(diff.max()),
        "mean_signed_diff": float((bf16 - fp32).mean()),
        "fp32_mean_nll": float(-fp32.mean()),
        "spearman": float(spearmanr(fp32.numpy(), bf16.numpy()).statistic),
        "seconds": seconds,
        "tokens_per_s": {name: ids.numel() / s for name, s in median.items()},
        "bf16_over_fp32_throughput": median["fp32"] / median["bf16"],
        "environment": environment("cpu"),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run directory or checkpoint (MLM head needed)")
    parser.add_argument("--fasta", default=str(bundled_genome("ecoli")),
                        help="the genome the model was trained on (default: the bundled E. coli)")
    parser.add_argument("--bp", type=int, default=40_000, help="held-out bases scored")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--stride", type=int, default=4, help="tracks.masked_stride")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = compare(args)
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as tmp:
            json.dump(report, tmp, indent=1)
        os.replace(tmp.name, args.out)


if __name__ == "__main__":
    main()
