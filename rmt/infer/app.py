"""rmt-infer's entry points: options -> plan -> stream (fixed batch slots) -> outputs.

``main`` (the Hydra app) converts the config once (``infer_options``); ``run_inference``
takes the typed options, claims the output directory, streams every job (resuming from
the saved state when there is one), assembles the outputs and writes the summary.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import Genome
from rmt.checkpoint import load_model, resolve_checkpoint
from rmt.cli import autocast_dtype, pick_device, user_errors, write_json
from rmt.data_config import resolve_fasta
from rmt.infer.options import PROGRAM, InferOptions, infer_options
from rmt.infer.outputs import (
    PLAN,
    SPOOL,
    STATE,
    SUMMARY,
    Assembly,
    assemble,
    prepare_output,
    run_identity,
)
from rmt.infer.plan import check_token_embeddings, load_plan, resolve_regions
from rmt.infer.stream import Streamer
from rmt.install import CONFIG_PATH

COORDINATES = "0-based half-open, forward strand; strand -1 = reverse complement"


def run_inference(options: InferOptions) -> dict:
    """Stream the configured regions through the model into ``options.output``; the summary."""
    started = time.perf_counter()
    out = Path(options.output)
    fasta = resolve_fasta(options.data.fasta)
    checkpoint = resolve_checkpoint(options.checkpoint)
    genome = Genome(fasta, cache_dir=options.data.cache_dir)
    # Fail on bad regions before touching OUT.
    check_token_embeddings(options, resolve_regions(genome, options.regions))
    prepare_output(out, run_identity(options, checkpoint, fasta), options.overwrite)
    state = torch.load(out / STATE, weights_only=True) if (out / STATE).exists() else None
    if state is None or not state.get("done"):
        run_jobs(options, genome, checkpoint, fasta, state, started)
    shutil.rmtree(out / SPOOL, ignore_errors=True)
    return json.loads((out / SUMMARY).read_text())


def run_jobs(
    options: InferOptions,
    genome: Genome,
    checkpoint: Path,
    fasta: list[str],
    state: dict | None,
    started: float,
) -> None:
    """Stream every job (from ``state`` when resuming), then write the final outputs."""
    if options.threads:
        torch.set_num_threads(options.threads)
    out, device = Path(options.output), pick_device(options.device)
    runner, tokenizer = load_model(checkpoint, device, options.kernels)
    jobs = load_plan(out / PLAN, options, genome, tokenizer, runner.segment_tokens)
    amp = autocast_dtype(options.precision, device)
    streamer = Streamer(options, runner, tokenizer, genome, jobs, out, device, amp)
    if state is not None:
        streamer.restore(state)
    previous = streamer.stats["wall_s"]
    streamer.stats["runs"] += 1

    def elapsed() -> float:
        return previous + time.perf_counter() - started

    progress = tqdm(
        total=streamer.total_bp(), initial=streamer.stats["bp"], unit="bp", unit_scale=True,
        disable=not options.progress, desc=PROGRAM, smoothing=0.05,
    )  # fmt: skip
    while bp := streamer.step():
        progress.update(bp)
        if streamer.stats["steps"] % options.save_every == 0:
            streamer.save(elapsed())
    progress.close()
    streamer.save(elapsed())
    outputs = assemble(assembly(options, streamer))
    summary = make_summary(options, streamer, checkpoint, fasta, outputs, elapsed())
    write_json(out / SUMMARY, summary)
    streamer.mark_done()


def assembly(options: InferOptions, streamer: Streamer) -> Assembly:
    """What the final files are made of: the plan, the spools, the row formats."""
    jobs, runner = streamer.jobs, streamer.runner
    lengths = streamer.genome.lengths
    return Assembly(
        out=Path(options.output),
        spool=streamer.spool,
        jobs=jobs,
        chroms=list(dict.fromkeys((j.chrom, lengths[j.chrom]) for j in jobs)),
        tracks=["logprob"] + (["masked"] if options.tracks.masked_stride else []),
        token_dtype=streamer.token_dtype,
        segment_dtype=streamer.segment_dtype,
        token_embeddings=options.embeddings.tokens,
        attrs={
            "segment_tokens": runner.segment_tokens,
            "memory_tokens": runner.memory_tokens,
            "d_model": runner.encoder.config.d_model,
            "coordinates": COORDINATES,
        },
    )


def make_summary(
    options: InferOptions,
    streamer: Streamer,
    checkpoint: Path,
    fasta: list[str],
    outputs: list[str],
    wall_s: float,
) -> dict:
    """summary.json: what was run, how much, how fast, in how much memory."""
    stats, device = streamer.stats, streamer.device
    counts = ("bp", "tokens", "segments", "burn_in_segments", "model_segments", "steps")
    summary = {
        "checkpoint": str(checkpoint),
        "fasta": fasta,
        "regions": list(dict.fromkeys(str(j.region) for j in streamer.jobs)),
        "strand": options.strand,
        "streams": len(streamer.jobs),
        **{key: stats[key] for key in counts},
        "wall_s": round(wall_s, 3),
        "model_s": round(stats["model_s"], 3),
        "bp_per_s": round(stats["bp"] / wall_s, 1),
        "tokens_per_s": round(stats["tokens"] / wall_s, 1),
        "peak_rss_mb": round(streamer.peak_rss_mb(), 1),
        "runs": stats["runs"],
        "device": str(device),
        "outputs": outputs,
    }
    if device.type == "cuda":
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return summary


@hydra.main(config_path=CONFIG_PATH, config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors(PROGRAM):
        options = infer_options(cfg)
        summary = run_inference(options)
        print(
            f"{PROGRAM}: wrote {options.output} ({summary['bp']:,} bp, "
            f"{summary['tokens']:,} tokens, {summary['bp_per_s']:,.0f} bp/s, "
            f"peak RSS {summary['peak_rss_mb']:,.0f} MB)"
        )
        return summary
