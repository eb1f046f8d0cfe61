"""The model part: each block's context streamed through the memory, then every allele row
run from its block's memory with the tokens covering the allele masked.

The score of an allele is its masked marginal log-likelihood: with token ids
x = context + lead + window(allele) (rmt/score/alleles.py) cut into the runner's segments
of S tokens from the start, carrying memory, and the window tokens overlapping the
allele's bases (set M) all replaced by [MASK] at once,

    ll(allele) = sum over i in M of log p(x_i | x with M masked)

read by the MLM head (``MLMHead.token_log_probs``). The context's whole segments are
shared by a block's rows and run once per block; the rest of it (fewer than S tokens)
starts each row, so every row is cut exactly as x would be. Rows and contexts of one chunk
run as batches, padded to the longest (padding is masked out of attention and never
changes a real token's score); a row that has ended drops out of later steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import DNATokenizer, Genome
from rmt.runner import MemoryRunner
from rmt.score.alleles import allele_tokens, piece_ids
from rmt.score.plan import Block, Row


@dataclass(frozen=True)
class RowTokens:
    """One row's tokens after its block's shared segments, and which of them are scored."""

    ids: np.ndarray
    scored: np.ndarray  # bool


def _padded(pieces: list[np.ndarray], pad_id: int, device: torch.device):
    """(ids (b, n), valid (b, n) or None when nothing is padding)."""
    longest = max(len(p) for p in pieces)
    ids = np.full((len(pieces), longest), pad_id, dtype=np.int64)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = piece
    lengths = torch.tensor([len(p) for p in pieces], device=device)
    valid = torch.arange(longest, device=device)[None] < lengths[:, None]
    return torch.from_numpy(ids).to(device), None if bool(valid.all()) else valid


def stream_contexts(
    runner: MemoryRunner, contexts: list[np.ndarray], pad_id: int, device: torch.device
) -> torch.Tensor:
    """The memory after each context's whole segments (its last, partial one is not run)."""
    s = runner.segment_tokens
    memory = runner.init_memory(len(contexts)).to(device).clone()  # rows written in place
    full = [len(c) // s for c in contexts]
    for j in range(max(full, default=0)):
        rows = [i for i, n in enumerate(full) if n > j]
        ids, valid = _padded([contexts[i][j * s : (j + 1) * s] for i in rows], pad_id, device)
        index = torch.tensor(rows, device=device)
        _, memory[index] = runner.step(ids, memory[index], valid)
    return memory


def score_sequences(
    runner: MemoryRunner,
    memory: torch.Tensor,
    sequences: list[RowTokens],
    tokenizer: DNATokenizer,
    device: torch.device,
) -> torch.Tensor:
    """(rows,) summed log p of each sequence's scored tokens, with all of them masked, every
    row starting from its own ``memory`` row."""
    s = runner.segment_tokens
    totals = torch.zeros(len(sequences), dtype=torch.float64, device=device)
    memory = memory.clone()
    segments = [-(-len(q.ids) // s) for q in sequences]
    for j in range(max(segments)):
        rows = [i for i, n in enumerate(segments) if n > j]
        cut = slice(j * s, (j + 1) * s)
        ids, valid = _padded([sequences[i].ids[cut] for i in rows], tokenizer.pad_id, device)
        scored, _ = _padded([sequences[i].scored[cut] for i in rows], 0, device)
        scored = scored.bool()
        index = torch.tensor(rows, device=device)
        masked = torch.where(scored, tokenizer.mask_id, ids)
        out, memory[index] = runner.step(masked, memory[index], valid)
        if bool(scored.any()):
            log_p = runner.head.token_log_probs(out.hidden[scored], ids[scored])
            owner = index[:, None].expand_as(scored)[scored]
            totals.index_add_(0, owner, log_p.double())
    return totals


def row_sequences(
    tokenizer: DNATokenizer, genome: Genome, block: Block, leftover: np.ndarray
) -> list[RowTokens]:
    """Each row of ``block``: the context's leftover tokens, the lead, the allele window."""
    leads: dict[int, np.ndarray] = {}
    out = []
    for row in block.rows:
        w = row.site.window[0]
        if w not in leads:
            bounds = (block.context[1], w)
            leads[w] = piece_ids(tokenizer, genome, block.chrom, bounds, block.strand)
        window, scored = allele_tokens(tokenizer, genome, row.site, row.allele_bases)
        ids = np.concatenate([leftover, leads[w], window])
        flags = np.concatenate([np.zeros(len(leftover) + len(leads[w]), bool), scored])
        out.append(RowTokens(ids, flags))
    return out


def score_chunk(
    runner: MemoryRunner,
    tokenizer: DNATokenizer,
    genome: Genome,
    chunk: list[Block],
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> list[tuple[Row, float]]:
    """Every row of the chunk's blocks with its log-likelihood, in the chunk's order."""
    s = runner.segment_tokens
    contexts = [piece_ids(tokenizer, genome, b.chrom, b.context, b.strand) for b in chunk]
    rows, sequences, owners = [], [], []
    for i, (block, context) in enumerate(zip(chunk, contexts, strict=True)):
        leftover = context[len(context) // s * s :]
        rows += block.rows
        sequences += row_sequences(tokenizer, genome, block, leftover)
        owners += [i] * len(block.rows)
    with torch.inference_mode(), torch.autocast(device.type, amp, enabled=amp is not None):
        memory = stream_contexts(runner, contexts, tokenizer.pad_id, device)
        scores = []
        for start in range(0, len(rows), batch_size):
            batch = slice(start, start + batch_size)
            index = torch.tensor(owners[batch], device=device)
            lls = score_sequences(runner, memory[index], sequences[batch], tokenizer, device)
            scores += lls.tolist()
    return list(zip(rows, scores, strict=True))
