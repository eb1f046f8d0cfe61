"""rmt-infer's entry points: options -> inputs -> plan -> stream (fixed batch slots) -> outputs.

``main`` (the Hydra app) converts the config once (``infer_options``); ``run_inference``
takes the typed options, joins the launcher's ranks (one process: a world of one), loads
and checks every input (checkpoint, FASTA, regions, model) before it touches the output
directory, so a run that cannot start claims nothing; then rank 0, holding the
directory's lock, claims it and plans; every rank streams its shards (each resuming
from its saved state when there is one); rank 0 assembles the outputs and writes the
summary (``rmt.infer.ranks``: where the ranks meet).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import DNATokenizer, Genome
from rmt.checkpoint import load_model, refuse_causal, resolve_checkpoint
from rmt.cli import autocast_dtype, user_errors, write_json
from rmt.compile import compile_runner
from rmt.hf_runner import bare_hf_model, is_hf_encoder_dir
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
    row_dtypes,
    run_identity,
    shard_state,
    write_state,
)
from rmt.infer.plan import Plan, check_token_embeddings, infer_fasta, load_plan, resolve_regions
from rmt.infer.ranks import Ranks
from rmt.infer.stream import Streamer
from rmt.infer.summary import make_summary, merge_stats
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


def load_inputs(options: InferOptions, device: torch.device) -> Inputs:
    """The checkpoint, FASTA, regions and model on ``device``, or the user error that
    stops the run."""
    out = Path(options.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file, not a directory: choose a directory")
    bare = is_hf_encoder_dir(options.checkpoint)
    checkpoint = Path(options.checkpoint) if bare else resolve_checkpoint(options.checkpoint)
    if not bare:
        refuse_causal(checkpoint, PROGRAM, f"checkpoint={options.checkpoint}")
    fasta = infer_fasta(options.data.fasta, checkpoint)
    genome = Genome(fasta, cache_dir=options.data.cache_dir)
    check_token_embeddings(options, resolve_regions(genome, options.regions))
    if bare:
        runner, tokenizer = hf_model(options, checkpoint, device)
    else:
        runner, tokenizer = load_model(checkpoint, device, options.kernels)
    compile_runner(runner, options.compile)
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
    hf = options.hf
    runner, tokenizer = bare_hf_model(
        path, hf.layout, hf.attn_implementation, hf.trust_remote_code, options.kernels
    )
    log.warning(
        "%s is a bare Hugging Face encoder: no memory was trained, so it runs with "
        "memory_tokens=0, %d-token segments%s", path, runner.segment_tokens,
        "" if runner.head is not None else ", embeddings only (it has no MLM head)",
    )  # fmt: skip
    return runner.to(device).eval(), tokenizer


@dataclass(frozen=True)
class Claim:
    """What rank 0 tells every rank once it holds the output: the plan (None: the outputs
    are complete already) and this launch's name among the attempts."""

    plan: Plan | None
    attempt: str


def run_inference(options: InferOptions) -> dict:
    """Stream the configured regions through the model into ``options.output``; the summary."""
    started = time.perf_counter()
    if options.threads:
        torch.set_num_threads(options.threads)
    ranks = Ranks.join(options.device)
    check_ranks(options, ranks.world.world_size)
    inputs = load_inputs(options, ranks.world.device)
    out = Path(options.output)
    with errors_name(out), contextlib.ExitStack() as held:
        claim = ranks.on_main(lambda: claim_output(options, inputs, held))
        if claim.plan is not None:
            stream_shards(options, inputs, claim, ranks, started)
            ranks.wait_for_all()
        summary = ranks.on_main(lambda: finish(options, inputs, claim, ranks, started))
    ranks.leave()
    return summary


def check_ranks(options: InferOptions, world_size: int) -> None:
    """Refuse more ranks than shards: the shards are what ranks divide."""
    shards = options.parallel.shards
    if world_size > shards:
        raise ValueError(
            f"{world_size} ranks were launched for parallel.shards={shards}, so "
            f"{world_size - shards} would have nothing to run: launch at most {shards} "
            f"(torchrun --nproc_per_node={shards}), or set parallel.shards to a multiple of "
            f"{world_size} (the outputs depend on the shards, never on the number of ranks)"
        )


def claim_output(options: InferOptions, inputs: Inputs, held: contextlib.ExitStack) -> Claim:
    """Rank 0: lock the output directory (until ``held`` closes), claim it for this
    configuration, and plan (or read the plan of the run being resumed)."""
    out = Path(options.output)
    held.enter_context(RunLock(out, PROGRAM))
    remove_stale_temps(out)
    prepare_output(out, run_identity(options, inputs.checkpoint, inputs.fasta), options.overwrite)
    state = out / STATE
    if state.exists() and torch.load(state, weights_only=True).get("done"):
        return Claim(None, "")
    segment_tokens = inputs.runner.segment_tokens
    plan = load_plan(out / PLAN, options, inputs.genome, inputs.tokenizer, segment_tokens)
    return Claim(plan, str(time.time_ns()))


def stream_shards(
    options: InferOptions, inputs: Inputs, claim: Claim, ranks: Ranks, started: float
) -> None:
    """Stream this rank's shards one after another, each from its saved state if any."""
    plan, out = claim.plan, Path(options.output)
    shard_bp = plan.shard_bp()
    mine = ranks.my_shards(shard_bp)
    amp = autocast_dtype(options.precision, inputs.device, "precision")
    progress = tqdm(
        total=sum(shard_bp[k] for k in mine), unit="bp", unit_scale=True, smoothing=0.05,
        disable=not options.progress or not ranks.world.is_main, desc=PROGRAM + ranks.label,
    )  # fmt: skip
    for shard in mine:
        streamer = Streamer(
            options, inputs.runner, inputs.tokenizer, inputs.genome, plan, shard, out,
            inputs.device, amp,
        )  # fmt: skip
        if restored := (path := shard_state(out, shard)).exists():
            streamer.restore(torch.load(path, weights_only=True))
        progress.update(streamer.stats["bp"])
        if not (restored and streamer.finished):  # a shard without jobs saves its state too
            run_shard(streamer, options.save_every, progress, claim, ranks, started)
    progress.close()


def run_shard(
    streamer: Streamer, save_every: int, progress: tqdm, claim: Claim, ranks: Ranks,
    started: float,
) -> None:  # fmt: skip
    """Stream a shard to its end, saving a resume point every ``save_every`` steps."""
    streamer.begin_attempt(started, claim.attempt, ranks.world.world_size)
    while (bp := streamer.step()) is not None:
        progress.update(bp)
        if streamer.stats["steps"] % save_every == 0:
            streamer.save()
    streamer.save()


def finish(
    options: InferOptions, inputs: Inputs, claim: Claim, ranks: Ranks, started: float
) -> dict:
    """Rank 0, every shard streamed: the final outputs and summary (unless a finished
    run is rerun), the spool removed; the summary."""
    out = Path(options.output)
    if claim.plan is not None:
        shards = range(len(claim.plan.shards))
        stats = [torch.load(shard_state(out, k), weights_only=True)["stats"] for k in shards]
        outputs = assemble(assembly(options, inputs, claim.plan))
        wall_s = time.perf_counter() - started
        stats = merge_stats(stats, claim.attempt, wall_s, ranks.world.world_size)
        sources = {"checkpoint": str(inputs.checkpoint), "fasta": inputs.fasta}
        summary = make_summary(options, stats, claim.plan, sources, inputs.device, outputs)
        write_json(out / SUMMARY, summary)
        write_state(out / STATE, {"done": True, "stats": stats})
    shutil.rmtree(out / SPOOL, ignore_errors=True)
    return json.loads((out / SUMMARY).read_text())


def assembly(options: InferOptions, inputs: Inputs, plan: Plan) -> Assembly:
    """What the final files are made of: the plan, the spools, the row formats."""
    runner, lengths, out = inputs.runner, inputs.genome.lengths, Path(options.output)
    d = runner.encoder.config.d_model
    token_dtype, segment_dtype = row_dtypes(options, d, runner.memory_tokens)
    return Assembly(
        out=out,
        spool=out / SPOOL,
        jobs=plan.jobs,
        chroms=list(dict.fromkeys((r.chrom, lengths[r.chrom]) for r in plan.regions)),
        tracks=tracks(options, runner),
        token_dtype=token_dtype,
        segment_dtype=segment_dtype,
        token_embeddings=options.embeddings.tokens,
        attrs={
            "segment_tokens": runner.segment_tokens,
            "memory_tokens": runner.memory_tokens,
            "d_model": d,
            "coordinates": COORDINATES,
        },
    )


def tracks(options: InferOptions, runner: MemoryRunner) -> list[str]:
    """The tracks written: the MLM head's scores, so none for a model without one."""
    if runner.head is None:
        return []
    return ["logprob"] + (["masked"] if options.tracks.masked_stride else [])


@hydra.main(config_path=CONFIG_PATH, config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors(PROGRAM):
        options = infer_options(cfg)
        summary = run_inference(options)
        if int(os.environ.get("RANK", "0")) != 0:  # the other ranks of a torchrun
            return summary
        print(
            f"{PROGRAM}: wrote {options.output} ({summary['bp_per_strand']:,} bp on "
            f"{len(options.strands)} strand(s), {summary['n_bp_skipped']:,} bp of N skipped, "
            f"{summary['tokens']:,} tokens, {summary['bp_per_s']:,.0f} bp/s, "
            f"peak RSS {summary['peak_rss_mb']:,.0f} MB)"
        )
        return summary
