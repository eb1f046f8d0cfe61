"""The recurrent memory runner (RMT): long sequences as segments that pass memory along.

A sequence of T content tokens is cut into segments of `segment_tokens`. Each segment
is encoded together with `memory_tokens` memory vectors prepended to it; the
encoder's outputs at those positions become the memory of the next segment. The
first segment reads a learned memory.

Gradients through memory are bounded by `bptt_depth` = k: the loss of segment t reaches
the memory transitions t-1, ..., t-k and no further (k = -1: all of them, full BPTT).
Most cases are plain autograd with one or more `detach()`s. Exact per-segment truncation
with a loss on every segment (1 <= k < segments-1) and memory replay need a custom
backward sweep (`_SegmentSweep`) that walks the segments in reverse and tracks, for each
loss, how many transitions its gradient has crossed.

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

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from einops import repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from rmt.encoder import Encoder
from rmt.heads import IGNORE_INDEX, MLMHead
from rmt.heap import release_free_heap
from rmt.loss import LOSS_ON, reduce_loss, segment_weights

BACKPROP_MODES = ("full", "truncated", "checkpoint", "replay")
RECOMPUTING = ("checkpoint", "replay")  # modes whose backward sweep recomputes each segment
# Replay on the CPU returns freed heap pages to the OS every this many segments (rmt.heap).
TRIM_EVERY = 8


@dataclass
class RunnerOutput:
    """What one call of the runner returns.

    loss: token-weighted mean MLM loss over all segments (or the last one's), or None;
        `rmt.loss.reduce_loss(segment_sums, segment_counts, loss_on)` without the graph.
    segment_sums: (segments,) summed token loss of each segment (detached).
    segment_counts: (segments,) labelled tokens per segment.
    memory: (batch, m, d) memory after the last segment.
    hidden: (batch, T, d) content-token hidden states, when asked for.
    """

    loss: torch.Tensor | None
    segment_sums: torch.Tensor | None
    segment_counts: torch.Tensor | None
    memory: torch.Tensor
    hidden: torch.Tensor | None = None

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
    """Wraps an `Encoder` (and optionally an `MLMHead`) into a recurrent memory model."""

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
        self.encoder = encoder
        self.head = head
        self.memory_tokens = memory_tokens
        self.segment_tokens = segment_tokens
        self.bptt_depth = bptt_depth
        self.loss_on = loss_on
        self.backprop = backprop
        self.memory = LearnedMemory(
            memory_tokens, encoder.config.d_model, encoder.config.init_std
        )

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
    ) -> RunnerOutput:
        """Run all segments of (batch, T) tokens, carrying memory; loss when labels given."""
        if labels is not None and self.head is None:
            raise ValueError("labels were given but this runner has no head to score them")
        segments = self._split(input_ids, attention_mask, labels)
        depth = self.bptt_depth
        if self.backprop == "truncated" and depth < 0:
            raise ValueError("backprop=truncated needs a depth: set bptt_depth to k >= 0")
        needs_sweep = (
            labels is not None
            and torch.is_grad_enabled()
            and (
                self.backprop == "replay"
                or (self.loss_on == "all" and 0 < depth < len(segments) - 1)
            )
        )
        if needs_sweep:
            return self._forward_sweep(segments, return_hidden)
        return self._forward_autograd(segments, return_hidden)

    def _split(self, input_ids, attention_mask, labels):
        n = -(-input_ids.shape[1] // self.segment_tokens)
        mask = attention_mask.bool() if attention_mask is not None else None

        def cut(x):
            return [None] * n if x is None else x.split(self.segment_tokens, dim=1)

        return list(zip(cut(input_ids), cut(mask), cut(labels), strict=True))

    def _encode_segment(self, memory, input_ids, mask):
        m = self.memory_tokens
        x = torch.cat(
            [memory.to(self.encoder.embed_tokens.weight.dtype), self.encoder.embed(input_ids)], 1
        )
        key_mask = None if mask is None else torch.cat([mask.new_ones(mask.shape[0], m), mask], 1)
        h = self.encoder.forward_embeddings(x, key_mask)
        # A copy, not a view: a view would keep the whole segment's hidden states alive for
        # as long as the memory lives (every segment of a replay forward, a whole stream).
        new_memory, hidden = h[:, :m].clone(), h[:, m:]
        if mask is not None:  # a sample that has ended keeps its memory
            new_memory = torch.where(mask.any(1)[:, None, None], new_memory, memory)
        return new_memory, hidden

    def _segment_loss(self, memory, input_ids, mask, labels):
        new_memory, hidden = self._encode_segment(memory, input_ids, mask)
        loss_sum, count = self.head.loss(hidden, labels)
        return new_memory, hidden, loss_sum, count

    def _forward_autograd(self, segments, return_hidden):
        n, depth = len(segments), self.bptt_depth
        # Where to cut the graph so that each loss crosses at most `depth` transitions.
        if depth == 0:
            cut_before = set(range(1, n))
        elif self.loss_on == "last" and 0 < depth < n - 1:
            cut_before = {n - 1 - depth}
        else:
            cut_before = set()
        memory = self.init_memory(segments[0][0].shape[0])
        hiddens, sums, counts = [], [], []
        checkpointed = self.backprop == "checkpoint" and torch.is_grad_enabled()
        for j, (ids, mask, labels) in enumerate(segments):
            if j in cut_before:
                memory = memory.detach()
            if labels is None:
                memory, hidden = self._encode_segment(memory, ids, mask)
            else:
                step = self._segment_loss
                if checkpointed:  # keep only the segment's inputs; recompute in backward
                    step = partial(checkpoint, self._segment_loss, use_reentrant=False)
                memory, hidden, loss_sum, count = step(memory, ids, mask, labels)
                sums.append(loss_sum)
                counts.append(count)
            if return_hidden:
                hiddens.append(hidden)
        hidden = torch.cat(hiddens, 1) if return_hidden else None
        if not sums:
            return RunnerOutput(None, None, None, memory, hidden)
        sums_t, counts_t = torch.stack(sums), torch.stack(counts)
        loss = reduce_loss(sums_t, counts_t, self.loss_on)
        return RunnerOutput(loss, sums_t.detach(), counts_t, memory, hidden)

    def _forward_sweep(self, segments, return_hidden):
        hiddens: list[torch.Tensor] = []
        initial = self.memory.weight
        params = [p for p in self.parameters() if p.requires_grad and p is not initial]
        loss, seg_sums, counts, memory = _SegmentSweep.apply(
            self, segments, hiddens, return_hidden, initial, *params
        )
        hidden = torch.cat(hiddens, 1) if return_hidden else None
        return RunnerOutput(loss, seg_sums, counts, memory, hidden)


class _SegmentSweep(torch.autograd.Function):
    """Forward over all segments; backward as a reverse sweep with exact truncation.

    Backward, at segment j (last to first), the cotangent arriving at the segment's
    output memory is kept as separate *streams*, one per loss t, because each must stop
    after crossing `k` transitions: stream t may enter segment j only if t - j <= k.
    Every stream that enters is pushed through the segment to its input memory on its
    own (a vector-Jacobian product w.r.t. that memory only), and the parameters receive
    the sum of all of them in one backward. For k = -1 all streams merge into one and a
    segment costs a single backward, which is exactly memory-replay backprop.
    """

    @staticmethod
    def forward(ctx, runner: MemoryRunner, segments, hiddens, return_hidden, memory_param, *params):
        replay = runner.backprop in RECOMPUTING
        n, batch = len(segments), segments[0][0].shape[0]
        memory = runner.init_memory(batch).detach()
        # Everything that lives until the backward is allocated here, once: small tensors
        # allocated between each segment's large short-lived activations would pin heap
        # pages and make the peak resident memory creep up with the number of segments.
        inputs = memory.new_empty((n, *memory.shape)) if replay else None
        sums_t = memory.new_empty(n, dtype=torch.promote_types(memory.dtype, torch.float32))
        counts_t = torch.empty(n, dtype=torch.long, device=memory.device)
        random = replay and runner.training and runner.encoder.config.dropout > 0
        saved = []  # replay: RNG states (with dropout); otherwise each segment's graph
        for j, (ids, mask, labels) in enumerate(segments):
            if replay:
                if random:  # only dropout draws random numbers
                    saved.append(_rng_state(memory.device))
                new_memory, hidden, loss_sum, count = runner._segment_loss(
                    inputs[j].copy_(memory), ids, mask, labels
                )
            else:
                mem_in = memory.detach().requires_grad_(True)
                with torch.enable_grad():
                    new_memory, hidden, loss_sum, count = runner._segment_loss(
                        mem_in, ids, mask, labels
                    )
                saved.append((mem_in, new_memory, loss_sum))
            if return_hidden:
                hiddens.append(hidden.detach())
            sums_t[j], counts_t[j] = loss_sum.detach(), count
            memory = new_memory
        weights = segment_weights(counts_t.to(sums_t.dtype), runner.loss_on)
        ctx.runner, ctx.segments, ctx.saved, ctx.weights = runner, segments, saved, weights
        ctx.inputs = inputs
        ctx.params = params
        ctx.mark_non_differentiable(sums_t, counts_t)
        return (weights * sums_t).sum(), sums_t, counts_t, memory.detach()

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums, _grad_counts, _grad_memory):
        depth, params = ctx.runner.bptt_depth, ctx.params
        # Parameter gradients are summed here and returned once, as this Function's input
        # gradients: every parameter then accumulates exactly once per backward, which is
        # what DDP's and ZeRO's gradient hooks expect.
        totals: list[torch.Tensor | None] = [None] * len(params)
        streams: list[tuple[int, torch.Tensor]] = []  # (loss index t, cotangent on mem_out)
        on_cpu = ctx.inputs is not None and ctx.inputs.device.type == "cpu"
        for j in reversed(range(len(ctx.segments))):
            if on_cpu and j % TRIM_EVERY == 0:
                release_free_heap()
            mem_in, new_memory, loss_sum = _segment_graph(ctx, j)
            streams = [(t, c) for t, c in streams if depth < 0 or t - j <= depth]
            w = ctx.weights[j] * grad_loss
            mem_grad = sum(c for _, c in streams) if streams else torch.zeros_like(new_memory)
            if depth < 0:  # one merged stream: a single backward gives params and memory
                grads = torch.autograd.grad(
                    [loss_sum, new_memory], [mem_in, *params], [w, mem_grad], allow_unused=True
                )
                streams = [(j, grads[0])]
                _accumulate(totals, grads[1:])
                del grads  # else one stale set of parameter gradients lives on per segment
                continue
            moved = [
                (t, torch.autograd.grad(new_memory, mem_in, c, retain_graph=True)[0])
                for t, c in streams
            ]
            own = torch.autograd.grad(loss_sum, mem_in, w, retain_graph=True, allow_unused=True)[0]
            grads = torch.autograd.grad(
                [loss_sum, new_memory], params, [w, mem_grad], allow_unused=True
            )
            _accumulate(totals, grads)
            del grads
            streams = [*moved, (j, own if own is not None else torch.zeros_like(mem_in))]
        reaching = [c for t, c in streams if depth < 0 or t <= depth]
        grad_memory = sum(c.sum(0) for c in reaching) if reaching else None
        ctx.saved = ctx.segments = ctx.params = ctx.inputs = None
        return None, None, None, None, grad_memory, *totals


def _segment_graph(ctx, j: int):
    """Segment j's (input memory, output memory, loss sum) with a graph, recomputing if replay."""
    if ctx.runner.backprop not in RECOMPUTING:
        return ctx.saved[j]
    mem_in = ctx.inputs[j].detach().requires_grad_(True)
    replayed_rng = _restored_rng(ctx.saved[j], mem_in.device) if ctx.saved else nullcontext()
    with torch.enable_grad(), replayed_rng:
        new_memory, _, loss_sum, _ = ctx.runner._segment_loss(mem_in, *ctx.segments[j])
    return mem_in, new_memory, loss_sum


def _accumulate(totals: list, grads) -> None:
    for i, g in enumerate(grads):
        if g is not None:
            totals[i] = g if totals[i] is None else totals[i].add_(g)


def _rng_state(device: torch.device):
    """RNG state to replay a segment's dropout masks exactly."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class _restored_rng:
    def __init__(self, state, device: torch.device) -> None:
        self.state, self.device = state, device

    def __enter__(self):
        self.saved = _rng_state(self.device)
        torch.set_rng_state(self.state[0])
        if self.state[1] is not None:
            torch.cuda.set_rng_state(self.state[1], self.device)

    def __exit__(self, *exc):
        torch.set_rng_state(self.saved[0])
        if self.saved[1] is not None:
            torch.cuda.set_rng_state(self.saved[1], self.device)


__all__ = ["IGNORE_INDEX", "MemoryRunner", "RunnerOutput", "SegmentOutput"]
