"""The runner's reverse backward sweep: exact per-loss truncation and memory replay.

Plain autograd with `detach()` cuts cannot give every loss its own truncation when losses
sit on neighbouring segments (a cut that stops one loss also stops the next), and it
keeps every segment's activations. `SegmentSweep` runs the segments forward without a
graph across them and walks them in reverse in the backward, tracking for each loss how
many memory transitions its gradient has crossed.

A segment's loss is (its token loss, weighted like `rmt.loss.segment_weights`) + (the
final-head loss of the samples whose last segment it is, weighted 1 / samples). The
runner hands the sweep one callable, `step(j, memory) -> SegmentResult`, that encodes
segment j and scores both; the backward calls it again to recompute a segment (replay),
so every head call is inside the recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from rmt.heap import release_free_heap
from rmt.loss import segment_weights

# Replay on the CPU returns freed heap pages to the OS every this many segments (rmt.heap).
TRIM_EVERY = 8


@dataclass
class SegmentResult:
    """What one segment's step computes; the losses are None where that segment has none.

    token_sum / token_count: summed per-token loss and labelled tokens (0-dim).
    final_sum: summed final-head loss of the samples that end at this segment (0-dim).
    final_outputs: (rows, k) final-head outputs of those samples.
    """

    memory: torch.Tensor
    hidden: torch.Tensor | None
    token_sum: torch.Tensor | None = None
    token_count: torch.Tensor | None = None
    final_sum: torch.Tensor | None = None
    final_outputs: torch.Tensor | None = None


@dataclass
class SweepPlan:
    """Everything the sweep needs from the runner, so it reads none of the runner's internals.

    step: encodes segment j from the memory given and scores its losses.
    rows: per segment, the samples scored by the final head there (None: none).
    memory: the detached initial memory (batch, m, d).
    recompute: keep only each segment's input memory and recompute in the backward.
    random: the step draws random numbers (dropout): replay them exactly.
    token_loss: whether the steps score per-token losses (weighted as `loss_on` says).
    final_count: samples the final loss averages over (0: no final loss).
    """

    step: Callable[[int, torch.Tensor], SegmentResult]
    rows: list[torch.Tensor | None]
    memory: torch.Tensor
    depth: int
    recompute: bool
    random: bool
    loss_on: str
    token_loss: bool
    final_count: int
    return_hidden: bool


@dataclass
class SweepRecord:
    """The forward's detached by-products: per-segment sums, final outputs, hidden states."""

    token_sums: torch.Tensor | None = None
    token_counts: torch.Tensor | None = None
    final_sums: torch.Tensor | None = None
    final_outputs: torch.Tensor | None = None
    hiddens: list[torch.Tensor] = field(default_factory=list)


class SegmentSweep(torch.autograd.Function):
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
    def forward(ctx, plan: SweepPlan, record: SweepRecord, memory_param, *params):
        n, memory = len(plan.rows), plan.memory
        # Everything that lives until the backward is allocated here, once: small tensors
        # allocated between each segment's large short-lived activations would pin heap
        # pages and make the peak resident memory creep up with the number of segments.
        inputs = memory.new_empty((n, *memory.shape)) if plan.recompute else None
        dtype = torch.promote_types(memory.dtype, torch.float32)
        if plan.token_loss:
            record.token_sums = memory.new_zeros(n, dtype=dtype)
            record.token_counts = torch.zeros(n, dtype=torch.long, device=memory.device)
        record.final_sums = memory.new_zeros(n, dtype=dtype) if plan.final_count else None
        saved = []  # replay: RNG states (with dropout); otherwise each segment's graph
        for j in range(n):
            if plan.recompute:
                if plan.random:  # only dropout draws random numbers
                    saved.append(_rng_state(memory.device))
                result = plan.step(j, inputs[j].copy_(memory))
            else:
                mem_in = memory.detach().requires_grad_(True)
                with torch.enable_grad():
                    result = plan.step(j, mem_in)
                # The graph, without the hidden states and outputs it need not keep alive.
                saved.append((mem_in, replace(result, hidden=None, final_outputs=None)))
            _record(record, plan, j, result)
            memory = result.memory
        token_weights, loss = _weights_and_loss(plan, record)
        ctx.plan, ctx.saved, ctx.inputs, ctx.params = plan, saved, inputs, params
        ctx.token_weights = token_weights
        return loss, memory.detach()

    @staticmethod
    def backward(ctx, grad_loss, _grad_memory):
        plan, params, depth = ctx.plan, ctx.params, ctx.plan.depth
        # Parameter gradients are summed here and returned once, as this Function's input
        # gradients: every parameter then accumulates exactly once per backward, which is
        # what DDP's and ZeRO's gradient hooks expect.
        totals: list[torch.Tensor | None] = [None] * len(params)
        streams: list[tuple[int, torch.Tensor]] = []  # (loss index t, cotangent on mem_out)
        on_cpu = ctx.inputs is not None and ctx.inputs.device.type == "cpu"
        final_weight = grad_loss / plan.final_count if plan.final_count else None
        for j in reversed(range(len(plan.rows))):
            if on_cpu and j % TRIM_EVERY == 0:
                release_free_heap()
            mem_in, result = _segment_graph(ctx, j)
            streams = [(t, c) for t, c in streams if depth < 0 or t - j <= depth]
            token_weight = ctx.token_weights[j] * grad_loss if plan.token_loss else None
            losses, weights = _loss_terms(result, token_weight, final_weight)
            if not streams and not losses:  # nothing of the loss reaches this segment
                continue
            new_memory = result.memory
            mem_grad = sum(c for _, c in streams) if streams else torch.zeros_like(new_memory)
            if depth < 0:  # one merged stream: a single backward gives params and memory
                grads = torch.autograd.grad(
                    [*losses, new_memory], [mem_in, *params], [*weights, mem_grad],
                    allow_unused=True,
                )  # fmt: skip
                streams = [(j, _or_zeros(grads[0], mem_in))]
                _accumulate(totals, grads[1:])
                del grads  # else one stale set of parameter gradients lives on per segment
                continue
            moved = [
                (t, torch.autograd.grad(new_memory, mem_in, c, retain_graph=True)[0])
                for t, c in streams
            ]
            own = None
            if losses:
                own = torch.autograd.grad(
                    losses, mem_in, weights, retain_graph=True, allow_unused=True
                )[0]
            grads = torch.autograd.grad(
                [*losses, new_memory], params, [*weights, mem_grad], allow_unused=True
            )
            _accumulate(totals, grads)
            del grads
            streams = [*moved, (j, _or_zeros(own, mem_in))]
        reaching = [c for t, c in streams if depth < 0 or t <= depth]
        grad_memory = sum(c.sum(0) for c in reaching) if reaching else None
        ctx.saved = ctx.plan = ctx.params = ctx.inputs = None
        return None, None, grad_memory, *totals


def _record(record: SweepRecord, plan: SweepPlan, j: int, result: SegmentResult) -> None:
    """Keep segment j's detached sums, counts, final outputs and (if asked) hidden states."""
    if result.token_sum is not None:
        record.token_sums[j] = result.token_sum.detach()
        record.token_counts[j] = result.token_count
    if result.final_sum is not None:
        record.final_sums[j] = result.final_sum.detach()
    if result.final_outputs is not None:
        outputs = result.final_outputs.detach()
        if record.final_outputs is None:
            batch = plan.memory.shape[0]
            record.final_outputs = outputs.new_empty((batch, *outputs.shape[1:]))
        record.final_outputs[plan.rows[j]] = outputs
    if plan.return_hidden:
        record.hiddens.append(result.hidden.detach())


def _weights_and_loss(plan: SweepPlan, record: SweepRecord):
    """Per-segment token weights and the loss: token mean (as reduce_loss) + final mean."""
    weights, loss = None, 0.0
    if plan.token_loss:
        sums = record.token_sums
        weights = segment_weights(record.token_counts.to(sums.dtype), plan.loss_on)
        loss = (weights * sums).sum()
    if plan.final_count:
        loss = loss + record.final_sums.sum() / plan.final_count
    return weights, loss


def _loss_terms(result: SegmentResult, token_weight, final_weight):
    """The segment's differentiable losses and their cotangents (both lists, maybe empty)."""
    pairs = [(result.token_sum, token_weight), (result.final_sum, final_weight)]
    kept = [(x, w) for x, w in pairs if x is not None and x.requires_grad]
    return [x for x, _ in kept], [w for _, w in kept]


def _segment_graph(ctx, j: int) -> tuple[torch.Tensor, SegmentResult]:
    """Segment j's input memory and result with a graph, recomputing it when replaying."""
    plan = ctx.plan
    if not plan.recompute:
        return ctx.saved[j]
    mem_in = ctx.inputs[j].detach().requires_grad_(True)
    replayed_rng = _RestoredRng(ctx.saved[j], mem_in.device) if ctx.saved else nullcontext()
    with torch.enable_grad(), replayed_rng:
        return mem_in, plan.step(j, mem_in)


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return grad if grad is not None else torch.zeros_like(like)


def _accumulate(totals: list, grads) -> None:
    for i, g in enumerate(grads):
        if g is not None:
            totals[i] = g if totals[i] is None else totals[i].add_(g)


def _rng_state(device: torch.device):
    """RNG state to replay a segment's dropout masks exactly."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class _RestoredRng:
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


__all__ = ["TRIM_EVERY", "SegmentResult", "SegmentSweep", "SweepPlan", "SweepRecord"]
