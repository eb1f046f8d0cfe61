"""What is scored, in which order: allele rows grouped into blocks, blocks into chunks.

A row is one allele (REF, or one scored ALT) of one record on one strand. Rows are sorted
by strand, FASTA record, block and position; the rows of one block share the block's
context, streamed through the memory once. A chunk is consecutive whole blocks with at
most ``batch_size`` rows (or one block, when it alone has more): its contexts run as one
batch, then its rows, ``batch_size`` at a time. Chunks are the unit of work and of
resuming; the plan is recomputed on a rerun (it depends only on the inputs and options,
which the output directory's identity pins).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from data import DNATokenizer, Genome
from rmt.score.alleles import Site, context_bounds, site
from rmt.score.options import ContextOptions
from rmt.score.vcf import SCORED, Checked

UPSTREAM_SEGMENTS = 8  # context.upstream's default, in segments' worth of bp
SAMPLE_BP = 100_000  # reference read to measure bp per token


@dataclass(frozen=True)
class Context:
    """``context.*`` in bp, defaults resolved."""

    upstream: int
    flank: int
    block: int


def resolve_context(
    options: ContextOptions, tokenizer: DNATokenizer, genome: Genome, chrom: str, segment: int
) -> Context:
    """Defaults of ``context.*`` from the tokenizer's bp per token on the first
    ``SAMPLE_BP`` of ``chrom``: 8 segments' worth upstream, blocks of one segment's."""
    bp = 0
    if options.upstream is None or options.block is None:
        sample = genome.fetch(chrom, 0, min(SAMPLE_BP, genome.lengths[chrom]))
        bp = max(1, round(segment * tokenizer.bp_per_token(sample)))
    upstream = UPSTREAM_SEGMENTS * bp if options.upstream is None else options.upstream
    return Context(upstream, options.flank, options.block or bp)


@dataclass(frozen=True)
class Row:
    """One allele of one record on one strand: what one score is for."""

    record: int  # the record's index in the VCF
    allele: int  # 0: REF; i: the i-th ALT
    site: Site
    allele_bases: str


@dataclass(frozen=True)
class Block:
    """Rows whose windows start in one block, and the context they share."""

    chrom: str
    strand: str
    context: tuple[int, int]  # frame bases
    rows: tuple[Row, ...]


def record_rows(checked: Checked, genome: Genome, strand: str, flank: int) -> list[Row]:
    """REF and every scored ALT of a record, on ``strand``; none if no ALT is scored."""
    if not checked.scored:
        return []
    r = checked.record
    where = site(genome, checked.contig, r.start, len(r.ref), strand, flank)
    statuses = zip(r.alts, checked.statuses, strict=True)
    alleles = [(0, r.ref)] + [(i, alt) for i, (alt, s) in enumerate(statuses, 1) if s == SCORED]
    return [Row(r.index, i, where, bases) for i, bases in alleles]


def plan_blocks(
    checked: list[Checked], genome: Genome, strands: list[str], context: Context
) -> list[Block]:
    """Every row, grouped into blocks, in (strand, FASTA record, block, position) order."""
    order = {name: i for i, name in enumerate(genome.lengths)}
    flank = context.flank
    rows = [row for s in strands for c in checked for row in record_rows(c, genome, s, flank)]

    def key(row: Row) -> tuple:
        where = row.site
        return (strands.index(where.strand), order[where.chrom], where.block(context.block))

    rows.sort(key=lambda row: (*key(row), row.site.start, row.record, row.allele))
    blocks = []
    for _, group in itertools.groupby(rows, key=key):
        members = tuple(group)
        first = members[0].site
        bounds = context_bounds(first.block(context.block), context.upstream)
        blocks.append(Block(first.chrom, first.strand, bounds, members))
    return blocks


def plan_chunks(blocks: list[Block], batch_size: int) -> list[list[Block]]:
    """Consecutive blocks with at most ``batch_size`` rows together (or one block alone)."""
    chunks: list[list[Block]] = []
    rows = 0
    for block in blocks:
        if chunks and rows + len(block.rows) <= batch_size:
            chunks[-1].append(block)
            rows += len(block.rows)
        else:
            chunks.append([block])
            rows = len(block.rows)
    return chunks
