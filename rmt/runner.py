"""The recurrent memory runner (RMT): long sequences as segments that pass memory along.

A sequence of T content tokens is cut into segments of `segment_tokens`. Each segment
is encoded together with `memory_tokens` memory vectors prepended to it; the
encoder's outputs at those positions become the memory of the next segment. The
first segment reads a learned memory.

Two kinds of loss, alone or together: per-token losses scored segment by segment by a
segment head (MLM, token classification), and a per-sequence loss scored by a final head
on what each sample's own last segment returns (its memory and hidden states: sequence
classification, regression). A final loss of a sample that ends at segment j is a loss
at segment j, so both kinds decompose into per-segment terms.

Gradients through memory are bounded by `bptt_depth` = k: the loss of segment t reaches
the memory transitions t-1, ..., t-k and no further (k = -1: all of them, full BPTT).
Most cases are plain autograd with one or more `detach()`s (`graph_cuts`). Exact
truncation where losses sit on neighbouring segments (a loss on every segment, or final
losses ending at different segments, 1 <= k < segments-1) and memory replay need a
custom backward sweep (`rmt.runner_sweep`) that walks the segments in reverse and tracks,
for each loss, how many transitions its gradient has crossed.

`backprop` picks what the forward keeps for the backward; `bptt_depth` composes with
every mode:
- `full`: every segment's activations (memory grows with the number of segments);
- `truncated`: the same, and insists on a depth (`bptt_depth` >= 0);
- `checkpoint`: each segment's inputs only, recomputing its activations in the backward
  (per-segment activation checkpointing: memory still grows, by far less per segment);
- `replay`: only each segment's input memory; the backward recomputes one segment at a
  time (memory-replay backprop), so activation memory stays that of one segment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
from einops import repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from rmt.encoder import Encoder
from rmt.heads import IGNORE_INDEX, MLMHead
from rmt.loss import LOSS_ON, reduce_loss
from rmt.moe import take_aux_loss
from rmt.runner_sweep import SegmentResult, SegmentSweep, SweepPlan, SweepRecord

BACKPROP_MODES = ("full", "truncated", "checkpoint", "replay")
RECOMPUTING = ("checkpoint", "replay")  # modes whose backward sweep recomputes each segment


@dataclass
class RunnerOutput:
    """What one call of the runner returns.

    loss: the per-token part, a token-weighted mean over all segments (or the last
        one's), `rmt.loss.reduce_loss(segment_sums, segment_counts, loss_on)`, plus the
        final part, final_sum / final_count; each a mean; None without labels or targets.
    segment_sums: (segments,) summed token loss of each segment (detached).
    segment_counts: (segments,) labelled tokens per segment.
    memory: (batch, m, d) memory after the last segment.
    hidden: (batch, T, d) content-token hidden states, when asked for.
    final_outputs: (batch, k) final-head outputs, each at its sample's last segment
        (detached when the backward sweep ran).
    final_sum, final_count: summed per-sample final loss and samples scored (detached).
    """

    loss: torch.Tensor | None
    segment_sums: torch.Tensor | None
    segment_counts: torch.Tensor | None
    memory: torch.Tensor
    hidden: torch.Tensor | None = None
    final_outputs: torch.Tensor | None = None
    final_sum: torch.Tensor | None = None
    final_count: torch.Tensor | None = None

    @property
    def segment_losses(self) -> torch.Tensor | None:
        """(segments,) mean loss of each segment (0 where it had no labels)."""
        if self.segment_sums is None:
            return None
        return self.segment_sums / self.segment_counts.clamp(min=1)


@dataclass
class SegmentOutput:
    """One streamed segment: content-token hidden states (batch, S, d) and the new memory."""

    hidden: torch.Tensor
    memory: torch.Tensor


class LearnedMemory(nn.Module):
    """The m learned memory vectors the first segment reads.

    A module of its own (not a bare parameter of the runner) so that engines which
    gather parameters around each module's forward, like DeepSpeed ZeRO-3, see it.
    """

    def __init__(self, num_tokens: int, d_model: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_tokens, d_model) * std)

    def forward(self, batch_size: int) -> torch.Tensor:
        return repeat(self.weight, "m d -> b m d", b=batch_size)


class MemoryRunner(nn.Module):
    """Wraps an `Encoder` or an `rmt.hf_encoder.HFEncoder` (and optionally an `MLMHead`)
    into a recurrent memory model."""

    def __init__(
        self,
        encoder: Encoder,
        memory_tokens: int,
        segment_tokens: int,
        bptt_depth: int = -1,
        head: MLMHead | None = None,
        loss_on: str = "all",
        backprop: str = "full",
    ) -> None:
        super().__init__()
        if memory_tokens < 0 or segment_tokens < 1:
            raise ValueError(
                f"memory_tokens={memory_tokens} must be >= 0 and "
                f"segment_tokens={segment_tokens} >= 1"
            )
        longest = encoder.max_segment_tokens(memory_tokens)
        if longest is not None and segment_tokens > longest:
            raise ValueError(
                f"segment_tokens={segment_tokens} does not fit the encoder's positions beside "
                f"{memory_tokens} memory tokens and its special tokens; use at most {longest}"
            )
        self.encoder = encoder
        self.head = head
        self.memory_tokens = memory_tokens
        self.segment_tokens = segment_tokens
        self.bptt_depth = bptt_depth
        self.loss_on = loss_on
        self.backprop = backprop
        self.memory = LearnedMemory(memory_tokens, encoder.config.d_model, encoder.config.init_std)

    # -- settable knobs, validated on every assignment ------------------------------
    @property
    def bptt_depth(self) -> int:
        return self._bptt_depth

    @bptt_depth.setter
    def bptt_depth(self, value: int) -> None:
        if not isinstance(value, int) or value < -1:
            raise ValueError(f"bptt_depth={value!r}: use -1 (full BPTT) or a depth k >= 0")
        self._bptt_depth = value

    @property
    def backprop(self) -> str:
        return self._backprop

    @backprop.setter
    def backprop(self, value: str) -> None:
        if value not in BACKPROP_MODES:
            raise ValueError(f"backprop={value!r}; choose one of {BACKPROP_MODES}")
        self._backprop = value

    @property
    def loss_on(self) -> str:
        return self._loss_on

    @loss_on.setter
    def loss_on(self, value: str) -> None:
        if value not in LOSS_ON:
            raise ValueError(f"loss_on={value!r}; choose one of {LOSS_ON}")
        self._loss_on = value

    # -- streaming API --------------------------------------------------------------
    def init_memory(self, batch_size: int) -> torch.Tensor:
        """The learned initial memory, one copy per sample: (batch, m, d)."""
        return self.memory(batch_size)

    def step(
        self,
        segment_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[SegmentOutput, torch.Tensor]:
        """Encode one segment (batch, <= S) with `memory`; returns its output and new memory.

        Samples whose segment is all padding keep their memory unchanged.
        """
        mask = attention_mask.bool() if attention_mask is not None else None
        new_memory, hidden = self._encode_segment(memory, segment_input_ids, mask)
        return SegmentOutput(hidden=hidden, memory=new_memory), new_memory

    # -- whole sequences ------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_hidden: bool = False,
        *,
        head: nn.Module | None = None,
        final_head: nn.Module | None = None,
        targets: torch.Tensor | None = None,
    ) -> RunnerOutput:
        """Run all segments of (batch, T) tokens, carrying memory; a loss given labels/targets.

        labels (batch, T, ...): per-token targets, scored segment by segment by `head`
        (default: the runner's MLM head), any module with `loss(hidden, labels) -> (sum,
        count)`. targets (batch, ...): per-sequence targets, scored by `final_head`
        (`forward(memory, hidden, mask) -> outputs`, `loss(outputs, targets) -> (b,)`) at
        each sample's own last non-empty segment; without targets it still gives outputs.
        """
        head = self.head if head is None else head
        if labels is not None and head is None:
            raise ValueError("labels were given but this runner has no head to score them")
        if targets is not None and final_head is None:
            raise ValueError("targets were given but no final_head to score them")
        if targets is not None and targets.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"targets has {targets.shape[0]} rows for {input_ids.shape[0]} sequences"
            )
        if self.backprop == "truncated" and self.bptt_depth < 0:
            raise ValueError("backprop=truncated needs a depth: set bptt_depth to k >= 0")
        segments = self._split(input_ids, attention_mask, labels)
        rows = self._final_rows(attention_mask, input_ids.shape[0], len(segments), final_head)
        task = _Task(segments, head, final_head, targets, rows)
        cuts = graph_cuts(self._loss_segments(task), self.bptt_depth, len(segments))
        if task.scored and torch.is_grad_enabled() and (self.backprop == "replay" or cuts is None):
            return self._forward_sweep(task, return_hidden)
        return self._forward_autograd(task, cuts or set(), return_hidden)

    def _split(self, input_ids, attention_mask, labels):
        n = -(-input_ids.shape[1] // self.segment_tokens)
        mask = attention_mask.bool() if attention_mask is not None else None

        def cut(x):
            return [None] * n if x is None else x.split(self.segment_tokens, dim=1)

        return list(zip(cut(input_ids), cut(mask), cut(labels), strict=True))

    def _final_rows(self, attention_mask, batch: int, n: int, final_head):
        """Per segment, the samples whose last content token lies in it (None: no sample).

        Without a mask every sample ends at the last segment; a sample with no content
        at all is scored at the first, with the memory it started from.
        """
        if final_head is None:
            return [None] * n
        if attention_mask is None:
            return [None] * (n - 1) + [torch.arange(batch, device=self.memory.weight.device)]
        mask = attention_mask.bool()
        position = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, position, 0).amax(1) // self.segment_tokens
        ends = set(last.tolist())
        return [(last == j).nonzero()[:, 0] if j in ends else None for j in range(n)]

    def _loss_segments(self, task: _Task) -> set[int]:
        """The segments whose losses the backward starts from (what the graph cuts serve)."""
        n = len(task.segments)
        scored: set[int] = set()
        if task.has_labels:
            scored |= set(range(n)) if self.loss_on == "all" else {n - 1}
        if task.targets is not None:
            scored |= {j for j, rows in enumerate(task.rows) if rows is not None}
        return scored

    def _encode_segment(self, memory, input_ids, mask):
        new_memory, hidden = self.encoder.forward_with_memory(memory, input_ids, mask)
        # A copy, not a view: a view would keep the whole segment's hidden states alive for
        # as long as the memory lives (every segment of a replay forward, a whole stream).
        new_memory = new_memory.clone()
        if mask is not None:  # a sample that has ended keeps its memory
            new_memory = torch.where(mask.any(1)[:, None, None], new_memory, memory)
        return new_memory, hidden

    def _step(self, task: _Task, j: int, memory: torch.Tensor) -> SegmentResult:
        """Encode segment j from `memory` and score its losses: the one step every path runs.

        An encoder with experts (rmt.moe) has an aux loss per forward. It joins this
        segment's loss terms here, inside the step that replay and checkpointing
        recompute, so every backprop mode and truncation depth treats it exactly like the
        loss it rides on: weighted like the segment's labelled tokens (count x aux: the
        step's aux is then a labelled-token-weighted mean over segments, micro-batches
        and ranks, as the token loss is), or without labels like its final-head samples;
        a segment without a loss (loss_on=last) adds none. Only its gradient is added
        (aux - aux.detach() is exactly 0), so the losses returned, logged and evaluated
        stay the task's own; the training loop logs the aux itself as `moe_aux`.
        """
        ids, mask, labels = task.segments[j]
        new_memory, hidden = self._encode_segment(memory, ids, mask)
        aux = take_aux_loss(self.encoder)
        result = SegmentResult(new_memory, hidden)
        if labels is not None:
            result.token_sum, result.token_count = task.head.loss(hidden, labels)
        rows = task.rows[j]
        if rows is not None:
            if mask is None:
                mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            outputs = task.final_head(new_memory[rows], hidden[rows], mask[rows])
            if task.targets is not None:
                result.final_sum = task.final_head.loss(outputs, task.targets[rows]).sum()
            result.final_outputs = outputs
        if aux is not None and aux.requires_grad:
            gradient_only = aux - aux.detach()
            if result.token_sum is not None:
                result.token_sum = result.token_sum + result.token_count * gradient_only
            elif result.final_sum is not None:
                result.final_sum = result.final_sum + len(rows) * gradient_only
        return result

    def _forward_autograd(self, task: _Task, cuts: set[int], return_hidden: bool):
        step = partial(self._step, task)
        if self.backprop == "checkpoint" and task.scored and torch.is_grad_enabled():
            step = partial(checkpoint, step, use_reentrant=False)  # recompute in backward
        memory = self.init_memory(task.segments[0][0].shape[0])
        kept = []  # each segment's result; its hidden states only when asked for
        for j in range(len(task.segments)):
            if j in cuts:
                memory = memory.detach()
            result = step(j, memory)
            memory = result.memory
            kept.append(result if return_hidden else replace(result, hidden=None))
        return self._gathered(task, kept, memory, return_hidden)

    def _gathered(self, task: _Task, kept: list[SegmentResult], memory, return_hidden: bool):
        """The autograd path's output from every segment's result (losses with graph)."""

        def present(name: str) -> list[torch.Tensor]:
            return [getattr(r, name) for r in kept if getattr(r, name) is not None]

        hidden = torch.cat(present("hidden"), 1) if return_hidden else None
        out = RunnerOutput(None, None, None, memory, hidden)
        if task.has_labels:
            sums = torch.stack(present("token_sum"))
            out.segment_counts = torch.stack(present("token_count"))
            out.loss = reduce_loss(sums, out.segment_counts, self.loss_on)
            out.segment_sums = sums.detach()
        if task.final_head is not None:
            order = torch.cat([rows for rows in task.rows if rows is not None]).argsort()
            out.final_outputs = torch.cat(present("final_outputs"))[order]
        if task.targets is not None:
            final_sum = torch.stack(present("final_sum")).sum()
            out.final_sum, out.final_count = final_sum.detach(), task.final_count(memory.device)
            final_loss = final_sum / out.final_count
            out.loss = final_loss if out.loss is None else out.loss + final_loss
        return out

    def _forward_sweep(self, task: _Task, return_hidden: bool) -> RunnerOutput:
        memory = self.init_memory(task.segments[0][0].shape[0]).detach()
        plan = SweepPlan(
            step=partial(self._step, task),
            rows=task.rows,
            memory=memory,
            depth=self.bptt_depth,
            recompute=self.backprop in RECOMPUTING,
            random=self.training and _has_dropout(self.encoder, task.head, task.final_head),
            loss_on=self.loss_on,
            token_loss=task.has_labels,
            final_count=0 if task.targets is None else len(task.targets),
            return_hidden=return_hidden,
        )
        record = SweepRecord()
        initial = self.memory.weight
        params = _unique_params((self, task.head, task.final_head), skip=initial)
        loss, memory = SegmentSweep.apply(plan, record, initial, *params)
        out = RunnerOutput(loss, record.token_sums, record.token_counts, memory)
        out.hidden = torch.cat(record.hiddens, 1) if return_hidden else None
        out.final_outputs = record.final_outputs
        if task.targets is not None:
            out.final_sum = record.final_sums.sum()
            out.final_count = task.final_count(memory.device)
        return out


@dataclass
class _Task:
    """What one forward computes: the segments, the heads and who is scored where.

    rows: per segment, the samples whose final head runs there (None: none).
    """

    segments: list
    head: nn.Module | None
    final_head: nn.Module | None
    targets: torch.Tensor | None
    rows: list[torch.Tensor | None]

    @property
    def has_labels(self) -> bool:
        return self.segments[0][2] is not None

    @property
    def scored(self) -> bool:
        """Whether the call has a loss at all."""
        return self.has_labels or self.targets is not None

    def final_count(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(len(self.targets), device=device)


def graph_cuts(losses: set[int], depth: int, segments: int) -> set[int] | None:
    """Segments before which one autograd graph detaches memory so that the loss of every
    segment in `losses` crosses exactly `depth` transitions; None where no single graph can.

    Loss t needs a cut before segment t - depth and none in (t - depth, t]: a loss at
    every segment (or final losses at neighbouring segments) with 0 < depth conflicts.
    """
    if depth == 0:
        return set(range(1, segments))
    if depth < 0:
        return set()
    needed = {t - depth for t in losses if t - depth > 0}
    spanned = {j for t in losses for j in range(t - depth + 1, t + 1)}
    return None if needed & spanned else needed


def _unique_params(modules, skip: torch.Tensor) -> list[nn.Parameter]:
    """Trainable parameters of `modules` (None skipped), each once, in order, but `skip`."""
    seen, params = {id(skip)}, []
    for module in modules:
        for p in module.parameters() if module is not None else ():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _has_dropout(encoder: Encoder, *heads: nn.Module | None) -> bool:
    """Whether a training step draws random numbers (replay must then replay them)."""
    in_heads = any(
        isinstance(m, nn.Dropout) and m.p > 0 for h in heads if h is not None for m in h.modules()
    )
    return encoder.config.dropout > 0 or in_heads


__all__ = ["IGNORE_INDEX", "MemoryRunner", "RunnerOutput", "SegmentOutput", "graph_cuts"]
