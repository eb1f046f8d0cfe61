"""Held-out evaluation: MLM loss and accuracy, beside a unigram baseline and the memory gain.

Three numbers tell a reader what a run has learned, on the same masked tokens:
- `unigram_loss`: predicting every masked token from training-set token frequencies
  alone. For DNA this is already far below log(vocab); a model learns context only
  where its loss goes below it.
- `loss_memory_reset`: the same model with its memory reset to the learned initial
  memory before every segment, so each segment is scored on its own local context. This
  is the honest "no memory" model for a memory-trained network: the initial memory is a
  constant that carries nothing about the sequence, and every training sample's first
  segment looked exactly like this. (Removing the memory positions instead would feed
  the encoder a shape it never trained on and measure that shock, not local context.)
- `loss`: memory carried across segments, as in training.

`memory_gain` = (reset - carried) summed over the labelled tokens of segments 2..n,
per labelled token (nats), with its standard error over windows (`memory_gain_se`):
what the memory adds. Segment 1 reads the initial memory in both passes, so it is
scored once and shared; the masks are the batch's, identical in both passes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from data import IGNORE_INDEX, Batch, DNATokenizer, Genome, MLMBatches, Region
from rmt.heads import target_log_probs
from rmt.loss import reduce_loss, scored_tokens
from rmt.runner import MemoryRunner

# Per window and segment (rows x segments tables), accumulated over the evaluation.
FIELDS = ("loss", "correct", "count", "unigram", "loss_reset")
MEMORY_KEYS = ("memory_gain", "memory_gain_se", "loss_memory_reset", "segment_losses_memory_reset")


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
    memory_gain: bool = True,
) -> dict:
    """Held-out MLM loss and accuracy over tiled windows of `segments` segments each.

    Loss, accuracy and the unigram baseline are reduced like the training loss
    (`runner.loss_on`: every segment's masked tokens, or the last segment's). Masks come
    from `batches.tile`'s fixed seed, so every evaluation of a run scores the same
    tokens. Stops after `max_tokens` content tokens (None: the whole regions). With
    `memory_gain` (and memory tokens), the memory-reset pass too; else its keys are None.
    """
    device = torch.device(device)
    was_training = runner.training
    runner.eval()
    reset = memory_gain and runner.memory_tokens > 0
    tables, tokens = [], 0
    num_tokens = segments * runner.segment_tokens
    batch_iter = (b for region in regions for b in batches.tile(region, batch_size, num_tokens))
    for batch in batch_iter:
        tables.append(window_scores(runner, batch.to(device), amp, unigram, reset))
        tokens += int(batch.attention_mask.sum())
        if max_tokens is not None and tokens >= max_tokens:
            break
    runner.train(was_training)
    table = {k: torch.cat([t[k] for t in tables]) for k in FIELDS}
    return {**summarize(table, runner.loss_on, unigram is not None, reset), "tokens": tokens}


def window_scores(
    runner: MemoryRunner,
    batch: Batch,
    amp: torch.dtype | None = None,
    unigram: torch.Tensor | None = None,
    reset: bool = True,
) -> dict[str, torch.Tensor]:
    """`FIELDS` as (windows, segments) float64 tables for one batch (no gradients).

    `loss_reset` (with `reset`) scores segments 2..n from the learned initial memory
    and shares segment 1 with the carried pass; without `reset` it is NaN.
    """
    ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
    seg = runner.segment_tokens
    with torch.autocast(ids.device.type, amp, enabled=amp is not None):
        hidden = runner(ids, mask, return_hidden=True).hidden
        loss, correct, count = _scores(runner, hidden, labels)
        loss_reset = torch.full_like(loss, math.nan)
        if reset:
            initial = runner.init_memory(ids.shape[0])
            pieces = zip(ids.split(seg, 1), mask.split(seg, 1), strict=True)
            alone = [hidden[:, :seg]] + [
                runner.step(i, initial, m)[0].hidden for j, (i, m) in enumerate(pieces) if j
            ]
            loss_reset = _scores(runner, torch.cat(alone, 1), labels)[0]
    unigram_sums = torch.zeros_like(loss)
    if unigram is not None:
        cpu_labels = labels.cpu()
        per_token = torch.where(cpu_labels == IGNORE_INDEX, 0.0, -unigram[cpu_labels.clamp(min=0)])
        unigram_sums = _binned(per_token.double(), seg)
    return dict(zip(FIELDS, (loss, correct, count, unigram_sums, loss_reset), strict=True))


def _scores(runner: MemoryRunner, hidden: torch.Tensor, labels: torch.Tensor):
    """Summed loss, correct top-1 predictions and labelled tokens per (window, segment).

    The head runs once, on labelled positions only; the loss in fp32 (`target_log_probs`,
    what inference scores with too).
    """
    selected = labels != IGNORE_INDEX
    logits = runner.head(hidden[selected])
    target = labels[selected]
    token_loss = -target_log_probs(logits, target)
    token_correct = (logits.argmax(-1) == target).double()
    per_token = torch.zeros(labels.shape, dtype=torch.float64, device=labels.device)
    rows = []
    for values in (token_loss.double(), token_correct, torch.ones_like(token_correct)):
        rows.append(_binned(per_token.masked_scatter(selected, values), runner.segment_tokens))
    return rows


def _binned(per_token: torch.Tensor, segment_tokens: int) -> torch.Tensor:
    """(windows, T) per-token values -> (windows, segments) sums, on the CPU."""
    return torch.stack([c.sum(1) for c in per_token.split(segment_tokens, 1)], 1).cpu()


def summarize(table: dict[str, torch.Tensor], loss_on: str, unigram: bool, reset: bool) -> dict:
    """The evaluation's metrics from the per-window tables (see the module docstring)."""
    sums, counts = table["loss"].sum(0), table["count"].sum(0)
    segments = counts.numel()
    result = {
        "loss": float(reduce_loss(sums, counts, loss_on)),
        "accuracy": float(reduce_loss(table["correct"].sum(0), counts, loss_on)),
        "segment_losses": (sums / counts.clamp(min=1)).tolist(),
        "masked_tokens": int(scored_tokens(counts, loss_on)),
        "segments": segments,
        "unigram_loss": None,
        **dict.fromkeys(MEMORY_KEYS),
    }
    if unigram:
        result["unigram_loss"] = float(reduce_loss(table["unigram"].sum(0), counts, loss_on))
    if reset:
        reset_sums = table["loss_reset"].sum(0)
        result["loss_memory_reset"] = float(reduce_loss(reset_sums, counts, loss_on))
        result["segment_losses_memory_reset"] = (reset_sums / counts.clamp(min=1)).tolist()
        if segments > 1:
            gain, se = memory_gain_stats(table["loss"], table["loss_reset"], table["count"])
            result["memory_gain"], result["memory_gain_se"] = gain, se
    return result


def memory_gain_stats(
    carried: torch.Tensor, reset: torch.Tensor, counts: torch.Tensor
) -> tuple[float | None, float | None]:
    """Gain over segments 2..n per labelled token, and its standard error over windows.

    A ratio of sums over windows (d_w: reset - carried loss, c_w: labelled tokens), so
    its standard error is the ratio estimator's: sqrt(N/(N-1) sum (d_w - g c_w)^2) / sum c_w.
    None where nothing is scored (the SE also with a single window).
    """
    d, c = (reset - carried)[:, 1:].sum(1), counts[:, 1:].sum(1)
    d, c = d[c > 0], c[c > 0]
    if c.numel() == 0:
        return None, None
    gain = d.sum() / c.sum()
    n = c.numel()
    if n < 2:
        return float(gain), None
    se = torch.sqrt(n / (n - 1) * ((d - gain * c) ** 2).sum()) / c.sum()
    return float(gain), float(se)
