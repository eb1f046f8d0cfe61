"""Does a tokenizer fit the DNA it is given? Unknown-token share and BPE vocabulary bounds.

Two faults train "successfully" and silently produce a useless model: a tokenizer whose
vocabulary does not cover the sequence (every base becomes [UNK], so masked prediction is
trivial and the loss goes to 0), and a BPE vocabulary far larger than the training
sequence can support (the trainer merges pairs seen once, i.e. memorises the sample, and
the embedding table and checkpoints grow with it). Both are checked here before training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from data.errors import TokenizerError

if TYPE_CHECKING:
    from data.genome import Genome
    from data.tokenizers import DNATokenizer

# Fixed BPE ids: the five special tokens and the five bases A C G T N.
BPE_FIXED_TOKENS = 10
# One learned token per this many bp of training sequence, at most. Measured with
# BPETokenizer.train (chunks of 1000 bp): the share of learned tokens that occur at most
# once in the encoded training sequence was 0% at one token per 64 bp and 8% at one per
# 32 bp on phage lambda (48.5 kbp), 7% at one per 48 bp and 40% at one per 32 bp on
# 400 kbp of E. coli: beyond this ratio the vocabulary grows by memorising the sample.
BP_PER_LEARNED_TOKEN = 64
DEFAULT_MAX_UNKNOWN = 0.01


def spread_chunks(genome: Genome, max_bp: int | None, chunk_bp: int) -> Iterator[str]:
    """``chunk_bp`` pieces of the genome's usable intervals, at most ``max_bp`` bp in all.

    With ``max_bp`` the chunks are evenly spaced across every interval, so the sample
    covers the whole genome rather than its first records. Deterministic. Arguments are
    checked at the call, not at the first chunk.
    """
    if max_bp is not None and max_bp < 1:
        raise TokenizerError(f"max_bp must be >= 1 when given, got {max_bp}")
    return _chunks(genome, max_bp, chunk_bp)


def _chunks(genome: Genome, max_bp: int | None, chunk_bp: int) -> Iterator[str]:
    total = sum(len(i) for i in genome.intervals)
    stride = 1 if max_bp is None else max(1, math.ceil(total / max_bp))
    budget = total if max_bp is None else max_bp
    index, emitted = 0, 0
    for interval in genome.intervals:
        for start in range(interval.start, interval.end, chunk_bp):
            if emitted >= budget:
                return
            if index % stride == 0:
                end = min(start + chunk_bp, interval.end, start + budget - emitted)
                emitted += end - start
                yield genome.fetch(interval.chrom, start, end)
            index += 1


def max_bpe_vocab(sample_bp: int) -> int:
    """The largest BPE vocabulary ``sample_bp`` bp of training sequence can support."""
    return BPE_FIXED_TOKENS + sample_bp // BP_PER_LEARNED_TOKEN


def check_bpe_vocab(vocab_size: int, sample_bp: int) -> None:
    """Refuse a vocabulary the sample cannot support, before any time is spent training.

    Refused rather than capped: the vocabulary size fixes the model's embedding table, so
    a silently smaller one would be a different model than the one asked for.
    """
    bound = max_bpe_vocab(sample_bp)
    if vocab_size > bound:
        raise TokenizerError(
            f"vocab_size={vocab_size:,} is more than {sample_bp:,} bp of training sequence "
            f"can support: at most {bound:,} ({BPE_FIXED_TOKENS} fixed tokens plus one per "
            f"{BP_PER_LEARNED_TOKEN} bp; past that most new tokens occur once, i.e. are "
            "memorised). Lower vocab_size, or train on more sequence (a larger max_bp or "
            "more FASTA)"
        )


def unknown_fraction(tokenizer: DNATokenizer, seq: str) -> float:
    """Share of the base pairs of ``seq`` that ``tokenizer`` encodes as [UNK].

    Counted in bp, not tokens, because a tokenizer may fuse a run of unknown characters
    into one [UNK] token.
    """
    if not seq:
        raise ValueError("unknown_fraction needs a non-empty sequence")
    encoding = tokenizer.encode(seq)
    spans = encoding.offsets[encoding.ids == tokenizer.unk_id]
    return float(np.sum(spans[:, 1] - spans[:, 0])) / len(seq)


def _unknown_characters(tokenizer: DNATokenizer, seq: str) -> str:
    """The distinct (cleaned) characters under [UNK] tokens, for the error message."""
    encoding = tokenizer.encode(seq)
    spans = encoding.offsets[encoding.ids == tokenizer.unk_id]
    cleaned = seq.upper()
    return "".join(sorted({c for start, end in spans[:64] for c in cleaned[start:end]}))


def check_dna_vocabulary(
    tokenizer: DNATokenizer,
    genome: Genome,
    sample_bp: int = 100_000,
    max_unknown: float = DEFAULT_MAX_UNKNOWN,
) -> float:
    """Refuse a tokenizer that encodes more than ``max_unknown`` of the genome as [UNK].

    Checks ``sample_bp`` bp spread across the genome; returns the unknown share.
    """
    sample = "".join(spread_chunks(genome, sample_bp, 1000))
    share = unknown_fraction(tokenizer, sample)
    if share > max_unknown:
        raise TokenizerError(
            f"{tokenizer!r} encodes {share:.1%} of a {len(sample):,} bp sample of the genome "
            f"as [UNK] (more than max_unknown={max_unknown:.1%}; characters it lacks: "
            f"{_unknown_characters(tokenizer, sample)!r}): its vocabulary does not cover "
            "this DNA (sequence is cleaned to uppercase A C G T N). Train a tokenizer on "
            'this genome with train_bpe, or use the "nucleotide" tokenizer'
        )
    return share
