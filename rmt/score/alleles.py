"""Alleles as the model reads them: each variant's window on one strand, per allele, tokenised.

Positions are in a strand's *frame*: forward positions on '+', positions along the reverse
complement on '-' (a boundary at forward x is at L - x on a record of L bp), so that on
either strand what is upstream of a variant lies at lower positions, and the '-' strand is
scored exactly as '+' would score the reverse-complemented record.

For a variant whose REF covers frame bases [s, e), with F = ``context.flank``,
B = ``context.block`` and U = ``context.upstream`` (all bp):

- window  [w, we) = [s - F, e + F), clipped to the record: tokenised once per allele, with
  the allele spelled in place of REF (the reverse complement of it on '-');
- block   c0 = floor(w / B) * B: variants whose windows start in the same block share it;
- context [max(0, c0 - U), c0): tokenised once per block and streamed through the memory;
- lead    [c0, w): tokenised once per variant, the same for every allele.

An allele's tokens are context + lead + window; the window tokens that overlap the allele's
bases are the ones masked and scored (``covering``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data import DNATokenizer, Genome, reverse_complement


def frame_fetch(genome: Genome, chrom: str, start: int, end: int, strand: str) -> str:
    """Bases [start, end) of the strand's frame, 5' to 3' on that strand ('' if empty)."""
    if start >= end:
        return ""
    if strand == "+":
        return genome.fetch(chrom, start, end)
    length = genome.lengths[chrom]
    return genome.fetch(chrom, length - end, length - start, "-")


@dataclass(frozen=True)
class Site:
    """Where one variant is read on one strand, in that strand's frame."""

    chrom: str  # the FASTA record
    strand: str
    start: int  # REF's bases [start, end)
    end: int
    window: tuple[int, int]

    def block(self, block_bp: int) -> int:
        """The start of the block the window starts in."""
        return self.window[0] // block_bp * block_bp


def site(genome: Genome, chrom: str, start: int, ref_len: int, strand: str, flank: int) -> Site:
    """The variant with REF at forward [start, start + ref_len) on ``strand``."""
    length = genome.lengths[chrom]
    s, e = (start, start + ref_len) if strand == "+" else (length - start - ref_len, length - start)
    return Site(chrom, strand, s, e, (max(0, s - flank), min(length, e + flank)))


def context_bounds(block_start: int, upstream: int) -> tuple[int, int]:
    """The frame bases [start, block_start) a block's context is read from."""
    return max(0, block_start - upstream), block_start


def allele_window(genome: Genome, where: Site, allele: str) -> tuple[str, int, int]:
    """The window with ``allele`` (as written in the VCF: forward strand) in REF's place,
    on the site's strand, and the allele's bases [a0, a1) in it."""
    w, we = where.window
    left = frame_fetch(genome, where.chrom, w, where.start, where.strand)
    right = frame_fetch(genome, where.chrom, where.end, we, where.strand)
    allele = allele.upper() if where.strand == "+" else reverse_complement(allele.upper())
    return left + allele + right, len(left), len(left) + len(allele)


def covering(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Which tokens (their [start, end) bp offsets) overlap bases [start, end)."""
    return (offsets[:, 0] < end) & (offsets[:, 1] > start)


def allele_tokens(
    tokenizer: DNATokenizer, genome: Genome, where: Site, allele: str
) -> tuple[np.ndarray, np.ndarray]:
    """The window's token ids with ``allele`` in place, and which of them are scored."""
    sequence, a0, a1 = allele_window(genome, where, allele)
    encoding = tokenizer.encode(sequence)
    return encoding.ids, covering(encoding.offsets, a0, a1)


def piece_ids(tokenizer: DNATokenizer, genome: Genome, chrom: str, bounds, strand: str):
    """Token ids of the frame bases ``bounds`` = (start, end), tokenised on their own."""
    return tokenizer.encode(frame_fetch(genome, chrom, *bounds, strand)).ids
