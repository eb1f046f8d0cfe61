"""Held-out evaluation: MLM loss and accuracy, beside a unigram baseline.

The baseline matters for DNA: a model that has only learned token frequencies already
lowers the loss far below log(vocab). `unigram_loss` is the loss of predicting every
masked token from training-set token frequencies alone; a model learns context only
where its loss goes below that.
"""

from __future__ import annotations

import numpy as np
import torch

from data import IGNORE_INDEX, Batch, DNATokenizer, Genome, MLMBatches, Region
from rmt.loss import reduce_loss, scored_tokens
from rmt.runner import MemoryRunner


def unigram_log_probs(
    tokenizer: DNATokenizer, genome: Genome, max_bp: int = 5_000_000
) -> torch.Tensor:
    """Log token frequencies over (up to `max_bp` of) the training genome, add-one smoothed."""
    counts = np.ones(tokenizer.vocab_size)
    budget = max_bp
    for interval in genome.intervals:
        end = min(interval.end, interval.start + budget)
        ids = tokenizer.encode(genome.fetch(interval.chrom, interval.start, end)).ids
        counts += np.bincount(ids, minlength=tokenizer.vocab_size)
        budget -= end - interval.start
        if budget <= 0:
            break
    return torch.from_numpy(np.log(counts / counts.sum()))


@torch.no_grad()
def evaluate(
    runner: MemoryRunner,
    batches: MLMBatches,
    regions: list[Region],
    segments: int,
    batch_size: int,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
    unigram: torch.Tensor | None = None,
) -> dict:
    """Held-out MLM loss and accuracy over tiled windows of `segments` segments each.

    Loss, accuracy and the unigram baseline are reduced like the training loss
    (`runner.loss_on`: every segment's masked tokens, or the last segment's), from
    per-segment sums. Masks come from `batches.tile`'s fixed seed, so every evaluation
    of a run scores the same tokens. Stops after `max_tokens` content tokens (None: the
    whole regions).
    """
    device = torch.device(device)
    was_training = runner.training
    runner.eval()
    totals = torch.zeros(4, segments, dtype=torch.float64)  # loss, correct, unigram, count
    tokens = 0
    num_tokens = segments * runner.segment_tokens
    batch_iter = (b for region in regions for b in batches.tile(region, batch_size, num_tokens))
    for batch in batch_iter:
        totals += _segment_totals(runner, batch.to(device), amp, unigram)
        tokens += int(batch.attention_mask.sum())
        if max_tokens is not None and tokens >= max_tokens:
            break
    runner.train(was_training)
    sums, correct, unigram_sums, counts = totals
    result = {
        "loss": float(reduce_loss(sums, counts, runner.loss_on)),
        "accuracy": float(reduce_loss(correct, counts, runner.loss_on)),
        "segment_losses": (sums / counts.clamp(min=1)).tolist(),
        "masked_tokens": int(scored_tokens(counts, runner.loss_on)),
        "tokens": tokens,
        "segments": segments,
    }
    if unigram is not None:
        result["unigram_loss"] = float(reduce_loss(unigram_sums, counts, runner.loss_on))
    return result


def _segment_totals(
    runner: MemoryRunner, batch: Batch, amp: torch.dtype | None, unigram: torch.Tensor | None
) -> torch.Tensor:
    """(4, segments) per-segment loss sums, correct predictions, unigram loss sums, counts."""
    ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
    with torch.autocast(ids.device.type, amp, enabled=amp is not None):
        out = runner(ids, mask, labels, return_hidden=True)
        pieces = zip(
            out.hidden.split(runner.segment_tokens, 1),
            labels.split(runner.segment_tokens, 1),
            strict=True,
        )
        correct = [runner.head.correct(h, y) for h, y in pieces]
    rows = [out.segment_sums, torch.stack(correct), out.segment_counts]
    totals = torch.stack([r.double().cpu() for r in rows])
    unigram_sums = torch.zeros(len(out.segment_counts), dtype=torch.float64)
    if unigram is not None:
        for j, y in enumerate(batch.labels.cpu().split(runner.segment_tokens, 1)):
            unigram_sums[j] = -unigram[y[y != IGNORE_INDEX]].sum()
    return torch.cat([totals[:2], unigram_sums[None], totals[2:]])
