"""rmt-score's entry points: options -> inputs (checked) -> plan -> chunks (resumable) -> outputs.

``run_scoring`` joins the launcher's ranks (one process: a world of one) and loads and
checks every input (checkpoint, FASTA, VCF, contig map, model) before it touches the
output directory, so a run that cannot start claims nothing; then rank 0, holding the
directory's lock, claims it; every rank scores its share of the chunks not scored yet
(saving a resume point every ``save_every`` chunks, ``rmt.score.spool``), and rank 0
writes the outputs and the summary (``rmt.infer.ranks``: where the ranks meet).

Under torchrun the chunks left are balanced by rows over the ranks (``balance``). A
chunk's contexts and rows are batched by the chunk alone (``score_chunk``), never beside
another rank's or chunk's, so its scores' bits do not depend on the number of ranks, and
N ranks write the bytes one process writes. More ranks than chunks are refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import DNATokenizer, Genome
from rmt.checkpoint import load_model, refuse_causal, resolve_checkpoint
from rmt.cli import autocast_dtype, user_errors, write_json
from rmt.compile import compile_runner
from rmt.infer.outputs import SPOOL, STATE, SUMMARY, errors_name
from rmt.infer.plan import balance, infer_fasta
from rmt.infer.ranks import Ranks
from rmt.install import CONFIG_PATH
from rmt.lock import RunLock
from rmt.runner import MemoryRunner
from rmt.score import outputs
from rmt.score.options import PROGRAM, ScoreOptions, score_options
from rmt.score.plan import Block, Context, plan_blocks, plan_chunks, resolve_context
from rmt.score.scoring import score_chunk
from rmt.score.spool import Earlier, RankSpool, earlier, gather, write_pt
from rmt.score.vcf import (
    Checked,
    check_records,
    header_info_ids,
    read_contig_map,
    read_records,
    status_counts,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What a run reads, every part loaded and checked, and the plan made from it."""

    checkpoint: Path
    fasta: list[str]
    genome: Genome
    checked: list[Checked]
    runner: MemoryRunner
    tokenizer: DNATokenizer
    device: torch.device
    context: Context
    blocks: list[Block]


def load_inputs(options: ScoreOptions, device: torch.device) -> Inputs:
    """The checkpoint, FASTA, variants and model, or the user error that stops the run."""
    out = Path(options.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file, not a directory: choose a directory")
    checkpoint = resolve_checkpoint(options.checkpoint)
    refuse_causal(checkpoint, PROGRAM, f"checkpoint={options.checkpoint}")
    fasta = infer_fasta(options.data.fasta, checkpoint)
    genome = Genome(fasta, cache_dir=options.data.cache_dir)
    records = read_records(options.variants)
    if options.info_key in header_info_ids(options.variants):
        raise ValueError(
            f"{options.variants} already has an INFO field {options.info_key} (scored before?): "
            "score the original VCF, or name the new field with info_key=..."
        )
    mapping = read_contig_map(options.contig_map)
    checked = check_records(options.variants, records, genome, mapping,
                            options.context.flank, options.ref_mismatch)  # fmt: skip
    if options.threads:
        torch.set_num_threads(options.threads)
    runner, tokenizer = load_model(checkpoint, device, options.kernels)
    compile_runner(runner, options.compile)
    if runner.head is None:
        raise ValueError(
            f"checkpoint={checkpoint} has no MLM head (a fine-tuned model?): scoring needs "
            "the pre-trained model it was fine-tuned from"
        )
    first = next((c.contig for c in checked if c.scored), next(iter(genome.lengths)))
    context = resolve_context(options.context, tokenizer, genome, first, runner.segment_tokens)
    blocks = plan_blocks(checked, genome, options.strands, context)
    return Inputs(checkpoint, fasta, genome, checked, runner, tokenizer, device, context, blocks)


def run_scoring(options: ScoreOptions, after_save: Callable[[int], None] | None = None) -> dict:
    """Score ``options.variants`` into ``options.output``; the summary (on every rank).

    ``after_save(chunks_done)`` is called after each of this rank's resume points is
    written: a caller (a test) may stop the run there, as a kill would.
    """
    started = time.perf_counter()
    ranks = Ranks.join(options.device)
    inputs = load_inputs(options, ranks.world.device)
    chunks = plan_chunks(inputs.blocks, options.batch_size)
    check_ranks(len(chunks), ranks.world.world_size)
    out = Path(options.output)
    with errors_name(out), contextlib.ExitStack() as held:
        claim = ranks.on_main(lambda: claim_output(options, inputs, held))
        if claim is not None:
            score_mine(options, inputs, chunks, claim, ranks, started, after_save)
            ranks.wait_for_all()
        summary = ranks.on_main(lambda: finish(options, inputs, chunks, claim, started))
    ranks.leave()
    return summary


def check_ranks(chunks: int, world_size: int) -> None:
    """Refuse more ranks than chunks: the chunks are what ranks divide. (A resumed run
    with fewer chunks left than ranks leaves the others idle.)"""
    if world_size > chunks:
        raise ValueError(
            f"{world_size} ranks were launched for {chunks} chunk(s) of variants, so "
            f"{world_size - chunks} would have nothing to score: launch at most {chunks} "
            f"(torchrun --nproc_per_node={chunks}); a smaller batch_size makes more chunks, "
            "but changes the batches, so the scores' last bits"
        )


@dataclass(frozen=True)
class Claim:
    """This run's name (its spool files') and what earlier runs scored."""

    attempt: str
    earlier: Earlier


def claim_output(options: ScoreOptions, inputs: Inputs, held: contextlib.ExitStack) -> Claim | None:
    """Rank 0: lock the output directory (until ``held`` closes) and claim it; None when
    it holds a finished run with this identity."""
    out = Path(options.output)
    held.enter_context(RunLock(out, PROGRAM))
    identity = outputs.score_identity(options, inputs.checkpoint, inputs.fasta)
    state = outputs.claim(out, identity, options.overwrite)
    if state is not None and state.get("done"):
        return None
    return Claim(str(time.time_ns()), earlier(out))


def score_mine(
    options: ScoreOptions,
    inputs: Inputs,
    chunks: list[list[Block]],
    claim: Claim,
    ranks: Ranks,
    started: float,
    after_save: Callable[[int], None] | None,
) -> None:
    """Score this rank's share of the chunks not yet scored, saving a resume point every
    ``save_every`` chunks and after the last."""
    world = ranks.world
    left = [k for k in range(len(chunks)) if k not in claim.earlier.chunks]
    rows = [sum(len(b.rows) for b in chunks[k]) for k in left]
    mine = [left[i] for i in balance(rows, world.world_size)[world.rank]]
    counts = {k: _variants(chunks[k]) for k in mine}
    progress = tqdm(
        total=sum(counts.values()), unit="variant", smoothing=0.05,
        disable=not options.progress or not world.is_main, desc=PROGRAM + ranks.label,
    )  # fmt: skip
    spool = RankSpool(Path(options.output), claim.attempt, world.rank)
    amp = autocast_dtype(options.precision, inputs.device, "precision")
    for n, k in enumerate(mine, 1):
        scores = score_chunk(inputs.runner, inputs.tokenizer, inputs.genome, chunks[k],
                             options.batch_size, inputs.device, amp)  # fmt: skip
        spool.append(k, scores)
        progress.update(counts[k])
        if n % options.save_every == 0 or n == len(mine):
            spool.save(time.perf_counter() - started)
            if after_save is not None:
                after_save(len(claim.earlier.chunks) + n)
    progress.close()
    spool.close()


def finish(
    options: ScoreOptions, inputs: Inputs, chunks: list, claim: Claim | None, started: float
) -> dict:
    """Rank 0, every chunk scored: the final outputs and summary (unless a finished run's
    are there already), the spool removed; the summary."""
    out = Path(options.output)
    if claim is not None:
        written = write_outputs(options, inputs, out, gather(out, len(chunks)))
        wall_s = claim.earlier.wall_s + time.perf_counter() - started
        stats = {"wall_s": wall_s, "runs": claim.earlier.runs + 1}
        write_json(out / SUMMARY, make_summary(options, inputs, chunks, stats, written))
        write_pt(out / STATE, {"done": True, **stats})
    shutil.rmtree(out / SPOOL, ignore_errors=True)
    return json.loads((out / SUMMARY).read_text())


def _variants(chunk: list[Block]) -> int:
    """The (record, strand) pairs a chunk scores: what the progress bar counts."""
    return len({(row.record, b.strand) for b in chunk for row in b.rows})


def info_header(options: ScoreOptions, context: Context) -> str:
    """The ##INFO line: what the number is, and what it was computed from."""
    strands = "mean of both strands" if options.strand == "both" else "plus strand"
    return (
        f'##INFO=<ID={options.info_key},Number=A,Type=Float,Description="{PROGRAM}: masked '
        f"marginal log-likelihood ratio log p(ALT) - log p(REF) in nats ({strands}; "
        f"{context.upstream} bp or more of upstream context through the memory where the "
        f"record has them, {context.flank} bp flanks tokenised per allele); . where an ALT "
        'was not scored">'
    )


def write_outputs(options: ScoreOptions, inputs: Inputs, out: Path, rows: np.ndarray) -> list[str]:
    """scores.tsv and the annotated VCF from the spooled rows; the names written."""
    lls = outputs.allele_scores(rows)
    outputs.write_tsv(out / outputs.TSV, inputs.checked, lls)
    values = outputs.info_values(inputs.checked, lls)
    header = info_header(options, inputs.context)
    written = outputs.write_vcf(out, Path(options.variants), header, options.info_key, values)
    return [*written, outputs.TSV]


def make_summary(
    options: ScoreOptions, inputs: Inputs, chunks: list, stats: dict, written: list[str]
) -> dict:
    """summary.json: what was scored, what was skipped and why, how fast."""
    counts = status_counts(inputs.checked)
    scored = counts.pop("scored")
    runner, wall_s = inputs.runner, stats["wall_s"]
    return {
        "checkpoint": str(inputs.checkpoint),
        "fasta": inputs.fasta,
        "variants": str(options.variants),
        "records": len(inputs.checked),
        "alts_scored": scored,
        "skipped": counts,
        "strands": options.strands,
        "context": {
            "upstream_bp": inputs.context.upstream,
            "flank_bp": inputs.context.flank,
            "block_bp": inputs.context.block,
            "segment_tokens": runner.segment_tokens,
            "memory_tokens": runner.memory_tokens,
        },
        "blocks": len(inputs.blocks),
        "chunks": len(chunks),
        "allele_rows": sum(len(b.rows) for b in inputs.blocks),
        "wall_s": round(wall_s, 3),
        "runs": stats["runs"],
        "alts_per_s": round(scored * len(options.strands) / max(wall_s, 1e-9), 2),
        "device": str(inputs.device),
        "outputs": written,
    }


@hydra.main(config_path=CONFIG_PATH, config_name="score", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors(PROGRAM):
        options = score_options(cfg)
        summary = run_scoring(options)
        if int(os.environ.get("RANK", "0")) != 0:  # the other ranks of a torchrun
            return summary
        skipped = ", ".join(f"{n:,} {why}" for why, n in summary["skipped"].items() if n)
        print(
            f"{PROGRAM}: wrote {options.output} ({summary['alts_scored']:,} ALT allele(s) "
            f"scored on {len(options.strands)} strand(s) in {summary['wall_s']:,.1f} s; "
            f"skipped: {skipped or 'none'})"
        )
        return summary
