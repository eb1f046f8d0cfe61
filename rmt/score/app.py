"""rmt-score's entry points: options -> inputs (checked) -> plan -> chunks (resumable) -> outputs.

``run_scoring`` loads and checks every input (checkpoint, FASTA, VCF, contig map, model)
before it touches the output directory, so a run that cannot start claims nothing; then,
holding the directory's lock, it claims it, scores the chunks it has not scored yet
(saving a resume point every ``save_every`` chunks), writes the outputs and the summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import DNATokenizer, Genome
from rmt.checkpoint import load_model, resolve_checkpoint
from rmt.cli import autocast_dtype, pick_device, user_errors, write_json
from rmt.infer.outputs import SPOOL, SUMMARY, errors_name
from rmt.infer.plan import infer_fasta
from rmt.install import CONFIG_PATH
from rmt.lock import RunLock
from rmt.runner import MemoryRunner
from rmt.score import outputs
from rmt.score.options import PROGRAM, ScoreOptions, score_options
from rmt.score.plan import Block, Context, plan_blocks, plan_chunks, resolve_context
from rmt.score.scoring import score_chunk
from rmt.score.vcf import (
    Checked,
    check_records,
    header_info_ids,
    read_contig_map,
    read_records,
    status_counts,
)
from rmt.writers import Spool

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


def load_inputs(options: ScoreOptions) -> Inputs:
    """The checkpoint, FASTA, variants and model, or the user error that stops the run."""
    out = Path(options.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file, not a directory: choose a directory")
    checkpoint = resolve_checkpoint(options.checkpoint)
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
    device = pick_device(options.device)
    runner, tokenizer = load_model(checkpoint, device, options.kernels)
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
    """Score ``options.variants`` into ``options.output``; the summary.

    ``after_save(chunks_done)`` is called after each resume point is written: a caller
    (a test) may stop the run there, as a kill would.
    """
    started = time.perf_counter()
    inputs = load_inputs(options)
    out = Path(options.output)
    with errors_name(out), RunLock(out, PROGRAM):
        identity = outputs.score_identity(options, inputs.checkpoint, inputs.fasta)
        state = outputs.claim(out, identity, options.overwrite)
        if state is None or not state.get("done"):
            score_all(options, inputs, state, started, after_save)
        shutil.rmtree(out / SPOOL, ignore_errors=True)
        return json.loads((out / SUMMARY).read_text())


def score_all(
    options: ScoreOptions,
    inputs: Inputs,
    state: dict | None,
    started: float,
    after_save: Callable[[int], None] | None,
) -> None:
    """Score every chunk not yet scored (from ``state``), then write the final outputs."""
    out = Path(options.output)
    chunks = plan_chunks(inputs.blocks, options.batch_size)
    state = state or {"chunks": 0, "rows": 0, "wall_s": 0.0, "runs": 0}
    stats = {"wall_s": state["wall_s"], "runs": state["runs"] + 1}
    spool = Spool(outputs.spool_path(out), outputs.ROW_DTYPE, state["rows"])
    amp = autocast_dtype(options.precision, inputs.device)
    counts = [_variants(c) for c in chunks]
    progress = tqdm(
        total=sum(counts), initial=sum(counts[: state["chunks"]]), unit="variant",
        disable=not options.progress, desc=PROGRAM, smoothing=0.05,
    )  # fmt: skip
    for k in range(state["chunks"], len(chunks)):
        scores = score_chunk(inputs.runner, inputs.tokenizer, inputs.genome, chunks[k],
                             options.batch_size, inputs.device, amp)  # fmt: skip
        spool.append(outputs.spool_rows(scores))
        progress.update(counts[k])
        if (k + 1) % options.save_every == 0 or k + 1 == len(chunks):
            spool.flush()
            stats["wall_s"] = state["wall_s"] + time.perf_counter() - started
            outputs.write_state(out, {"chunks": k + 1, "rows": spool.rows, **stats})
            if after_save is not None:
                after_save(k + 1)
    progress.close()
    spool.close()
    written = write_outputs(options, inputs, out)
    stats["wall_s"] = state["wall_s"] + time.perf_counter() - started
    summary = make_summary(options, inputs, chunks, stats, written)
    write_json(out / SUMMARY, summary)
    outputs.write_state(out, {"done": True, **stats})


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


def write_outputs(options: ScoreOptions, inputs: Inputs, out: Path) -> list[str]:
    """scores.tsv and the annotated VCF from the spool; the names written."""
    lls = outputs.allele_scores(out / SPOOL / outputs.ROWS)
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
        skipped = ", ".join(f"{n:,} {why}" for why, n in summary["skipped"].items() if n)
        print(
            f"{PROGRAM}: wrote {options.output} ({summary['alts_scored']:,} ALT allele(s) "
            f"scored on {len(options.strands)} strand(s) in {summary['wall_s']:,.1f} s; "
            f"skipped: {skipped or 'none'})"
        )
        return summary
