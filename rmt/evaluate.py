"""Held-out evaluation: MLM loss and accuracy, beside a unigram baseline.

The baseline matters for DNA: a model that has only learned token frequencies already
lowers the loss far below log(vocab). `unigram_loss` is the loss of predicting every
masked token from training-set token frequencies alone; a model learns context only
where its loss goes below that.
"""

from __future__ import annotations

import numpy as np
import torch

from data import DNATokenizer, Genome, MLMBatches, Region
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

    Masks come from `batches.tile`'s fixed seed, so every evaluation of a run scores the
    same tokens. Stops after `max_tokens` content tokens (None: the whole regions).
    """
    device = torch.device(device)
    was_training = runner.training
    runner.eval()
    loss_sum = correct = count = tokens = unigram_sum = 0.0
    seg_sums = torch.zeros(segments, dtype=torch.float64)
    seg_counts = torch.zeros(segments, dtype=torch.float64)
    num_tokens = segments * runner.segment_tokens
    batch_iter = (b for region in regions for b in batches.tile(region, batch_size, num_tokens))
    for batch in batch_iter:
        ids, mask, labels = (
            x.to(device) for x in (batch.input_ids, batch.attention_mask, batch.labels)
        )
        with torch.autocast(device.type, amp, enabled=amp is not None):
            out = runner(ids, mask, labels, return_hidden=True)
            correct += float(runner.head.correct(out.hidden, labels))
        n = out.segment_counts.double().cpu()
        seg_sums[: len(n)] += out.segment_losses.double().cpu() * n
        seg_counts[: len(n)] += n
        loss_sum += float(out.loss) * float(n.sum())
        count += float(n.sum())
        tokens += float(mask.sum())
        if unigram is not None:
            targets = batch.labels[batch.labels != -100]
            unigram_sum -= float(unigram[targets].sum())
        if max_tokens is not None and tokens >= max_tokens:
            break
    runner.train(was_training)
    result = {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "segment_losses": (seg_sums / seg_counts.clamp(min=1)).tolist(),
        "masked_tokens": int(count),
        "tokens": int(tokens),
        "segments": segments,
    }
    if unigram is not None:
        result["unigram_loss"] = unigram_sum / max(count, 1)
    return result
