"""summary.json: the shards' counters merged into one run's, and what it reports.

Every shard keeps its own counters and, per attempt (a launch, named the same on every
rank), the time from the launch's start to its last resume point and the bp it emitted
in it. A run's attempt took as long as its slowest shard in it (a process runs its
shards one after another, each timed from the launch's start), and the attempt that
assembles the outputs as long as rank 0 took to the end.
"""

from __future__ import annotations

import torch

from rmt.infer.options import InferOptions
from rmt.infer.plan import Plan
from rmt.infer.stream import COUNTERS, peak_rss_mb


def merge_stats(shards: list[dict], attempt: str, wall_s: float, ranks: int) -> dict:
    """One run's counters from its shards' (``stats`` of their resume states), with this
    ``attempt`` (ended now, ``wall_s`` after it began, with ``ranks`` processes) last."""
    merged = {key: sum(s[key] for s in shards) for key in COUNTERS}
    merged["model_s"] = sum(s["model_s"] for s in shards)  # summed over the processes
    merged["peak_rss_mb"] = max([peak_rss_mb(), *(s["peak_rss_mb"] for s in shards)])
    attempts: dict[str, dict] = {}
    for name, record in ((n, r) for s in shards for n, r in s["attempts"].items()):
        mine = attempts.setdefault(name, {"wall_s": 0.0, "strand_bp": 0, "ranks": record["ranks"]})
        mine["wall_s"] = max(mine["wall_s"], record["wall_s"])
        mine["strand_bp"] += record["strand_bp"]
    current = attempts.setdefault(attempt, {"wall_s": 0.0, "strand_bp": 0, "ranks": ranks})
    current["wall_s"] = wall_s
    merged["attempts"] = [attempts[name] for name in sorted(attempts, key=int)]
    merged["wall_s"] = sum(a["wall_s"] for a in merged["attempts"])
    return merged


def make_summary(
    options: InferOptions, stats: dict, plan: Plan, sources: dict, device: torch.device,
    outputs: list[str],
) -> dict:  # fmt: skip
    """summary.json: what was run, how much, how fast, in how much memory.

    bp counts: ``region_bp`` is the regions' length (each base once), of which
    ``bp_per_strand`` were scored on each strand and ``n_bp_skipped`` are N runs (not
    scored); ``strand_bp`` sums the scored bp over the strands, what ``bp_per_s`` divides.
    ``wall_s`` sums every attempt's time (``attempts``: a killed one up to its last
    resume point, with its number of ``ranks``), so a resumed run's rate is not
    overstated. ``model_s`` sums the model passes' time over the ranks; ``peak_rss_mb``
    is the largest process's, ``peak_gpu_mb`` rank 0's. ``sources``: the checkpoint and
    FASTA as read.
    """
    wall_s = stats["wall_s"]
    counts = ("tokens", "segments", "burn_in_segments", "model_segments", "steps")
    summary = {
        **sources,
        "regions": [str(r) for r in plan.regions],
        "strand": options.strand,
        "streams": len(plan.jobs),
        "shards": len(plan.shards),
        "region_bp": plan.region_bp,
        "bp_per_strand": plan.scored_bp,
        "n_bp_skipped": plan.region_bp - plan.scored_bp,
        "strand_bp": stats["bp"],
        **{key: stats[key] for key in counts},
        "wall_s": round(wall_s, 3),
        "attempts": [
            {"wall_s": round(a["wall_s"], 3), "strand_bp": a["strand_bp"], "ranks": a["ranks"]}
            for a in stats["attempts"]
        ],
        "runs": len(stats["attempts"]),
        "model_s": round(stats["model_s"], 3),
        "bp_per_s": round(stats["bp"] / wall_s, 1),
        "tokens_per_s": round(stats["tokens"] / wall_s, 1),
        "peak_rss_mb": round(stats["peak_rss_mb"], 1),
        "device": str(device),
        "outputs": outputs,
    }
    if device.type == "cuda":
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return summary
