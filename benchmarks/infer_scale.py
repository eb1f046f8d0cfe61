"""rmt-infer over a whole chromosome arm, in one process or several: wall time, bp/s, RSS.

The 21.1 Mbp Drosophila melanogaster chr2R (../shared/datasets/drosophila/), + strand:
a prefix (1 Mbp) and the whole arm, each under every number of ranks in ``--ranks``
(one process: ``python -m rmt.infer``; several: torchrun on the CPU, gloo). Every point
is a fresh rmt-infer command, so its peak RSS is its own; each is read back from its
summary.json (``wall_s``: rmt-infer's own clock; ``process_wall_s``: the command's,
start-up and model loading included). Peak RSS whole / prefix shows whether memory
stays flat with the length; a point's outputs are compared byte for byte with the
first rank count's (the shards, ``--shards``, are the same for every point).

Without ``--checkpoint`` the default model is built with random weights
(``benchmarks.infer_chromosome.build_default_checkpoint``): weights do not change the
speed, and the outputs are not meaningful predictions.

    python -m benchmarks.infer_scale --prefix-bp 200000 --whole-bp 400000   # a check
    python -m benchmarks.infer_scale --ranks 1 2       # 1 Mbp and 21.1 Mbp, 1 and 2 ranks
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.infer_chromosome import build_default_checkpoint
from benchmarks.measure import environment
from data import Genome, Region

CHR2R = Path(__file__).resolve().parents[2] / "shared/datasets/drosophila/dmel_chr2R.fa.gz"
# What a point reports from its summary.json.
REPORTED = (
    "strand_bp", "n_bp_skipped", "tokens", "segments", "burn_in_segments", "streams",
    "shards", "wall_s", "model_s", "bp_per_s", "peak_rss_mb",
)  # fmt: skip
# Outputs compared between rank counts (summary.json and state.pt hold timings).
TIMED = ("summary.json", "state.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", default=str(CHR2R))
    parser.add_argument("--checkpoint", help="checkpoint or run directory (default: build one)")
    parser.add_argument("--prefix-bp", type=int, default=1_000_000)
    parser.add_argument("--whole-bp", type=int, default=None, help="default: the whole record")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1])
    parser.add_argument("--shards", type=int, default=None, help="default: the most --ranks")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--streams", type=int, default=None, help="default: shards x batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/infer_scale.json")
    return parser.parse_args(argv)


def command(ranks: int, overrides: list[str]) -> list[str]:
    """rmt-infer in ``ranks`` processes (torchrun for more than one)."""
    if ranks == 1:
        return [sys.executable, "-m", "rmt.infer", *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={ranks}", "-m", "rmt.infer", *overrides]


def point(args: argparse.Namespace, checkpoint: Path, region: Region, ranks: int, out: Path):
    """One rmt-infer run of ``region`` in ``ranks`` processes into ``out``; its figures."""
    shards = args.shards or max(args.ranks)
    overrides = [
        f"checkpoint={checkpoint}", f"output={out}", f"data.fasta=[{args.fasta}]",
        f"data.cache_dir={Path(args.work) / 'fasta'}", f"regions=[{region}]",
        f"batch_size={args.batch_size}", f"parallel.shards={shards}", "parallel.min_bp=0",
        f"parallel.streams={args.streams or shards * args.batch_size}",
        f"threads={args.threads}", "progress=false", "overwrite=true",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    proc = subprocess.run(command(ranks, overrides), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rmt-infer failed ({region}, {ranks} ranks):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "region": str(region), "ranks": ranks, "threads_per_rank": args.threads,
        **{key: summary[key] for key in REPORTED},
        "process_wall_s": round(time.perf_counter() - started, 3),
    }  # fmt: skip


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two output directories hold the same outputs, byte for byte."""
    names = sorted(p.name for p in a.iterdir() if p.name not in TIMED)
    if names != sorted(p.name for p in b.iterdir() if p.name not in TIMED):
        return False
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in names)


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Every point, prefix then whole for each rank count; the ratios between them."""
    genome = Genome([args.fasta], cache_dir=work / "fasta")  # decompressed once, up front
    record, length = next(iter(genome.lengths.items()))
    regions = {"prefix": Region(record, 0, args.prefix_bp),
               "whole": Region(record, 0, args.whole_bp or length)}  # fmt: skip
    checkpoint = Path(args.checkpoint) if args.checkpoint else build_default_checkpoint(work)
    points = []
    for ranks in args.ranks:
        for name, region in regions.items():
            out = work / f"{name}-{ranks}"
            points.append({"point": name, **point(args, checkpoint, region, ranks, out)})
            points[-1]["same_bytes_as_first"] = same_bytes(work / f"{name}-{args.ranks[0]}", out)
            print(json.dumps(points[-1]), flush=True)
    by = {(p["point"], p["ranks"]): p for p in points}
    return {
        "record": record,
        "record_bp": length,
        "points": points,
        "rss_whole_over_prefix": {
            r: round(by["whole", r]["peak_rss_mb"] / by["prefix", r]["peak_rss_mb"], 3)
            for r in args.ranks
        },
        "speedup_over_first": {
            r: round(by["whole", args.ranks[0]]["wall_s"] / by["whole", r]["wall_s"], 3)
            for r in args.ranks
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(args.work or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    doc = {
        "benchmark": "infer_scale",
        "command": " ".join(["python -m benchmarks.infer_scale", *(argv or sys.argv[1:])]),
        "environment": environment("cpu") | {"load_average": os.getloadavg()},
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        **measure(args, work),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
