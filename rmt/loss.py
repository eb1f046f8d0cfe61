"""One reduction from per-segment loss sums to the loss, for training and evaluation alike.

The runner returns, per segment, the summed token loss and the number of labelled
tokens. `memory.loss_on` decides which segments count: `all` (a token-weighted mean over
every segment) or `last` (the last segment only). Everything that turns sums into a
loss goes through here: the runner's forward (its backward sweep needs the per-segment
weights), the training loop's normaliser across micro-batches and ranks, and held-out
evaluation, so a run with `loss_on=last` is evaluated on the tokens it trains on.
"""

from __future__ import annotations

import torch

from data.masking import IGNORE_INDEX

LOSS_ON = ("all", "last")


def _selection(counts: torch.Tensor, loss_on: str) -> torch.Tensor:
    """1 for each segment whose tokens the loss scores, else 0 (same dtype as counts)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on={loss_on!r}; choose one of {LOSS_ON}")
    chosen = torch.ones_like(counts) if loss_on == "all" else torch.zeros_like(counts)
    chosen[-1] = 1
    return chosen


def scored_tokens(counts: torch.Tensor, loss_on: str) -> torch.Tensor:
    """The loss's denominator: labelled tokens in the segments `loss_on` scores (0-dim)."""
    return (_selection(counts, loss_on) * counts).sum()


def segment_weights(counts: torch.Tensor, loss_on: str) -> torch.Tensor:
    """Per-segment weights w_j with loss = sum_j w_j * loss_sum_j."""
    chosen = _selection(counts, loss_on)
    return chosen / (chosen * counts).sum().clamp(min=1)


def reduce_loss(sums: torch.Tensor, counts: torch.Tensor, loss_on: str) -> torch.Tensor:
    """The loss from per-segment sums and counts (a mean; 0 when nothing is scored)."""
    return (segment_weights(counts.to(sums.dtype), loss_on) * sums).sum()


def label_counts(labels: torch.Tensor, segment_tokens: int) -> torch.Tensor:
    """Labelled tokens per segment of (batch, T) labels, without running the model."""
    return torch.stack([(c != IGNORE_INDEX).sum() for c in labels.split(segment_tokens, 1)])


__all__ = [
    "IGNORE_INDEX",
    "LOSS_ON",
    "label_counts",
    "reduce_loss",
    "scored_tokens",
    "segment_weights",
]
