"""rmt-infer's entry points: options -> inputs -> plan -> stream (fixed batch slots) -> outputs.

``main`` (the Hydra app) converts the config once (``infer_options``); ``run_inference``
takes the typed options, loads and checks every input (checkpoint, FASTA, regions,
model) before it touches the output directory, so a run that cannot start claims
nothing; then, holding the directory's lock, it claims it, streams every job (resuming
from the saved state when there is one), assembles the outputs and writes the summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import DNATokenizer, Genome
from rmt.checkpoint import load_model, resolve_checkpoint
from rmt.cli import autocast_dtype, pick_device, user_errors, write_json
from rmt.data_config import hf_tokenizer
from rmt.hf_encoder import mlm_head_weights
from rmt.hf_runner import hf_runner, is_hf_encoder_dir
from rmt.infer.options import PROGRAM, InferOptions, infer_options
from rmt.infer.outputs import (
    PLAN,
    SPOOL,
    STATE,
    SUMMARY,
    Assembly,
    assemble,
    errors_name,
    prepare_output,
    remove_stale_temps,
    run_identity,
)
from rmt.infer.plan import Plan, check_token_embeddings, infer_fasta, load_plan, resolve_regions
from rmt.infer.stream import Streamer
from rmt.install import CONFIG_PATH
from rmt.lock import RunLock
from rmt.option_errors import check
from rmt.runner import MemoryRunner

log = logging.getLogger(__name__)
COORDINATES = "0-based half-open, forward strand; strand -1 = reverse complement"


@dataclass(frozen=True)
class Inputs:
    """What a run reads, every part loaded and checked."""

    checkpoint: Path
    fasta: list[str]
    genome: Genome
    runner: MemoryRunner
    tokenizer: DNATokenizer
    device: torch.device


def load_inputs(options: InferOptions) -> Inputs:
    """The checkpoint, FASTA, regions and model, or the user error that stops the run."""
    out = Path(options.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file, not a directory: choose a directory")
    bare = is_hf_encoder_dir(options.checkpoint)
    checkpoint = Path(options.checkpoint) if bare else resolve_checkpoint(options.checkpoint)
    fasta = infer_fasta(options.data.fasta, checkpoint)
    genome = Genome(fasta, cache_dir=options.data.cache_dir)
    check_token_embeddings(options, resolve_regions(genome, options.regions))
    if options.threads:
        torch.set_num_threads(options.threads)
    device = pick_device(options.device)
    if bare:
        runner, tokenizer = hf_model(options, checkpoint, device)
    else:
        runner, tokenizer = load_model(checkpoint, device, options.kernels)
    check(runner.head is not None or not options.tracks.masked_stride, "tracks.masked_stride",
          options.tracks.masked_stride, f"needs an MLM head and the model in {checkpoint} has "
          "none: use tracks.masked_stride=0 (embeddings only)")  # fmt: skip
    return Inputs(checkpoint, fasta, genome, runner, tokenizer, device)


def hf_model(
    options: InferOptions, path: Path, device: torch.device
) -> tuple[MemoryRunner, DNATokenizer]:
    """A bare HF encoder, run segment by segment without memory (none was trained), with
    the longest segments its positions hold; its MLM head only if the weights hold one (an
    untrained head's scores would mean nothing), else embeddings only."""
    tokenizer, hf = hf_tokenizer(path, "checkpoint"), options.hf
    runner = hf_runner(
        path, tokenizer, {"memory_tokens": 0, "segment_tokens": None}, hf.layout,
        hf.attn_implementation, hf.trust_remote_code, kernels=options.kernels,
    )  # fmt: skip
    if not mlm_head_weights(path):
        runner.head = None
    log.warning(
        "%s is a bare Hugging Face encoder: no memory was trained, so it runs with "
        "memory_tokens=0, %d-token segments%s", path, runner.segment_tokens,
        "" if runner.head is not None else ", embeddings only (it has no MLM head)",
    )  # fmt: skip
    return runner.to(device).eval(), tokenizer


def run_inference(options: InferOptions) -> dict:
    """Stream the configured regions through the model into ``options.output``; the summary."""
    started = time.perf_counter()
    inputs = load_inputs(options)
    out = Path(options.output)
    with errors_name(out), RunLock(out, PROGRAM):
        remove_stale_temps(out)
        identity = run_identity(options, inputs.checkpoint, inputs.fasta)
        prepare_output(out, identity, options.overwrite)
        state = torch.load(out / STATE, weights_only=True) if (out / STATE).exists() else None
        if state is None or not state.get("done"):
            run_jobs(options, inputs, state, started)
        shutil.rmtree(out / SPOOL, ignore_errors=True)
        return json.loads((out / SUMMARY).read_text())


def run_jobs(options: InferOptions, inputs: Inputs, state: dict | None, started: float) -> None:
    """Stream every job (from ``state`` when resuming), then write the final outputs."""
    out, runner, tokenizer, genome = (
        Path(options.output),
        inputs.runner,
        inputs.tokenizer,
        inputs.genome,
    )
    plan = load_plan(out / PLAN, options, genome, tokenizer, runner.segment_tokens)
    amp = autocast_dtype(options.precision, inputs.device)
    streamer = Streamer(options, runner, tokenizer, genome, plan.jobs, out, inputs.device, amp)
    if state is not None:
        streamer.restore(state)
    streamer.begin_attempt(started)
    progress = tqdm(
        total=streamer.total_bp(), initial=streamer.stats["bp"], unit="bp", unit_scale=True,
        disable=not options.progress, desc=PROGRAM, smoothing=0.05,
    )  # fmt: skip
    while (bp := streamer.step()) is not None:
        progress.update(bp)
        if streamer.stats["steps"] % options.save_every == 0:
            streamer.save()
    progress.close()
    streamer.save()
    outputs = assemble(assembly(options, streamer, plan))
    streamer.clock()
    write_json(out / SUMMARY, make_summary(options, streamer, plan, inputs, outputs))
    streamer.mark_done()


def assembly(options: InferOptions, streamer: Streamer, plan: Plan) -> Assembly:
    """What the final files are made of: the plan, the spools, the row formats."""
    runner, lengths = streamer.runner, streamer.genome.lengths
    return Assembly(
        out=Path(options.output),
        spool=streamer.spool,
        jobs=plan.jobs,
        chroms=list(dict.fromkeys((r.chrom, lengths[r.chrom]) for r in plan.regions)),
        tracks=tracks(options, runner),
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


def tracks(options: InferOptions, runner: MemoryRunner) -> list[str]:
    """The tracks written: the MLM head's scores, so none for a model without one."""
    if runner.head is None:
        return []
    return ["logprob"] + (["masked"] if options.tracks.masked_stride else [])


def make_summary(
    options: InferOptions, streamer: Streamer, plan: Plan, inputs: Inputs, outputs: list[str]
) -> dict:
    """summary.json: what was run, how much, how fast, in how much memory.

    bp counts: ``region_bp`` is the regions' length (each base once), of which
    ``bp_per_strand`` were scored on each strand and ``n_bp_skipped`` are N runs (not
    scored); ``strand_bp`` sums the scored bp over the strands, what ``bp_per_s`` divides.
    ``wall_s`` sums every attempt's time (``attempts``: a killed one up to its last
    resume point), so a resumed run's rate is not overstated.
    """
    stats, device = streamer.stats, streamer.device
    wall_s = stats["wall_s"]
    counts = ("tokens", "segments", "burn_in_segments", "model_segments", "steps")
    summary = {
        "checkpoint": str(inputs.checkpoint),
        "fasta": inputs.fasta,
        "regions": [str(r) for r in plan.regions],
        "strand": options.strand,
        "streams": len(plan.jobs),
        "region_bp": plan.region_bp,
        "bp_per_strand": plan.scored_bp,
        "n_bp_skipped": plan.region_bp - plan.scored_bp,
        "strand_bp": stats["bp"],
        **{key: stats[key] for key in counts},
        "wall_s": round(wall_s, 3),
        "attempts": [
            {"wall_s": round(a["wall_s"], 3), "strand_bp": a["strand_bp"]}
            for a in stats["attempts"]
        ],
        "runs": len(stats["attempts"]),
        "model_s": round(stats["model_s"], 3),
        "bp_per_s": round(stats["bp"] / wall_s, 1),
        "tokens_per_s": round(stats["tokens"] / wall_s, 1),
        "peak_rss_mb": round(streamer.peak_rss_mb(), 1),
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
            f"{PROGRAM}: wrote {options.output} ({summary['bp_per_strand']:,} bp on "
            f"{len(options.strands)} strand(s), {summary['n_bp_skipped']:,} bp of N skipped, "
            f"{summary['tokens']:,} tokens, {summary['bp_per_s']:,.0f} bp/s, "
            f"peak RSS {summary['peak_rss_mb']:,.0f} MB)"
        )
        return summary
