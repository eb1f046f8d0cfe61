"""Scoring one batched step: per-token log-probabilities, hidden states, the new memory.

Every row of a step is one stream's next segment; rows are padded to the longest, and
padding never changes a real token's score (the runner masks it out of attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import Encoding
from rmt.runner import MemoryRunner


@dataclass
class SegmentBatch:
    """Segments of different lengths as one padded (b, n) batch."""

    ids: torch.Tensor
    valid: torch.Tensor  # (b, n) bool: a real token, not padding
    lengths: torch.Tensor

    @property
    def mask(self) -> torch.Tensor | None:
        """The runner's attention mask: None when nothing is padding (the fast path)."""
        return None if bool(self.valid.all()) else self.valid


def pad_segments(segments: list[Encoding], pad_id: int, device: torch.device) -> SegmentBatch:
    """The segments' ids in one batch, padded with ``pad_id`` to the longest."""
    longest = max(len(s) for s in segments)
    ids = np.full((len(segments), longest), pad_id, dtype=np.int64)
    for row, segment in enumerate(segments):
        ids[row, : len(segment)] = segment.ids
    lengths = torch.tensor([len(s) for s in segments], device=device)
    valid = torch.arange(longest, device=device)[None] < lengths[:, None]
    return SegmentBatch(torch.from_numpy(ids).to(device), valid, lengths)


@dataclass
class Scores:
    """One step's outputs, row for row with the batch."""

    hidden: torch.Tensor
    memory: torch.Tensor
    logprob: torch.Tensor
    masked: torch.Tensor | None
    pooled: torch.Tensor  # mean hidden state over each row's real tokens, fp32


def masked_log_probs(
    runner: MemoryRunner, batch: SegmentBatch, memory: torch.Tensor, stride: int, mask_id: int
) -> torch.Tensor:
    """Each token's log-probability with it masked: ``stride`` passes as one batch.

    Pass r replaces the tokens at positions = r (mod k) of every segment by [MASK] and
    reads them off, every pass from the same input memory.
    """
    k, (b, n), ids, mask = stride, batch.ids.shape, batch.ids, batch.mask
    position = torch.arange(n, device=ids.device)
    chosen = ((position % k)[None, :] == torch.arange(k, device=ids.device)[:, None])[:, None]
    if mask is not None:  # (k, 1, n) -> (k, b, n): padding stays padding
        chosen = chosen & mask.bool()[None]
    passes = torch.where(chosen, mask_id, ids[None]).reshape(k * b, n)
    repeated_mask = None if mask is None else mask.repeat(k, 1)
    seg, _ = runner.step(passes, memory.repeat(k, 1, 1), repeated_mask)
    hidden = seg.hidden.reshape(k, b, n, -1)[position % k, :, position].transpose(0, 1)
    return runner.head.token_log_probs(hidden, ids)


def score_step(
    runner: MemoryRunner,
    batch: SegmentBatch,
    memory: torch.Tensor,
    masked_stride: int,
    mask_id: int,
    amp: torch.dtype | None,
) -> Scores:
    """Run one segment per row (with ``masked_stride`` k, also the k masked passes).

    The memory carried on is always the unmasked pass's. A runner without an MLM head
    (a bare encoder, a fine-tuned model) scores no token: its log-probabilities are NaN.
    """
    device = batch.ids.device
    with torch.inference_mode(), torch.autocast(device.type, amp, enabled=amp is not None):
        out, new_memory = runner.step(batch.ids, memory, batch.mask)
        if runner.head is None:
            logprob = torch.full(batch.ids.shape, torch.nan, device=device)
        else:
            logprob = runner.head.token_log_probs(out.hidden, batch.ids)
        masked = None
        if masked_stride:
            masked = masked_log_probs(runner, batch, memory, masked_stride, mask_id)
        valid = batch.valid[..., None]
        pooled = (out.hidden.float() * valid).sum(1) / batch.lengths[:, None]
    return Scores(out.hidden, new_memory, logprob, masked, pooled)
