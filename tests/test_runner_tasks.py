"""Task losses through the runner (#15): per-token heads other than MLM and final heads,
under every backprop mode and depth, against brute-force per-loss graphs in fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead
from rmt.heads import IGNORE_INDEX
from rmt.runner import graph_cuts

VOCAB, D, SEG, MEM, SEGMENTS = 24, 32, 4, 2, 4
BASES, CLASSES = 3, 4  # per-token labels (b, t, BASES) of CLASSES classes
LENGTHS = (16, 11, 6)  # last segments 3, 2, 1: final losses on neighbouring segments


class PerBaseHead(nn.Module):
    """A token-classification-like segment head: BASES logits of CLASSES per token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, BASES * CLASSES)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).unflatten(-1, (BASES, CLASSES))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor):
        logits = self(hidden)
        total = F.cross_entropy(
            logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total, (labels != IGNORE_INDEX).sum()


class PoolHead(nn.Module):
    """A final head on mean memory and the masked mean of the segment's hidden states.

    The hidden part makes scoring at the wrong segment visible: an all-padding segment
    has no content to average.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * D, CLASSES)

    def forward(self, memory, hidden, mask):
        weights = mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return self.proj(torch.cat([memory.mean(1), pooled], -1))

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")


def make_runner(**kwargs) -> tuple[MemoryRunner, PerBaseHead, PoolHead]:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2))
    mlm = MLMHead(D, VOCAB, encoder.embed_tokens)
    runner = MemoryRunner(encoder, MEM, SEG, head=mlm, **kwargs)
    return runner.double(), PerBaseHead().double(), PoolHead().double()


def make_batch(lengths=LENGTHS, seed: int = 1):
    """ids and mask (right padding), per-base labels (b, t, BASES), class targets (b,)."""
    g = torch.Generator().manual_seed(seed)
    t = SEGMENTS * SEG
    ids = torch.randint(5, VOCAB, (len(lengths), t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    labels = torch.randint(0, CLASSES, (len(lengths), t, BASES), generator=g)
    unlabelled = torch.rand(labels.shape, generator=g) < 0.3
    labels = torch.where(unlabelled | ~mask[..., None], IGNORE_INDEX, labels)
    targets = torch.randint(0, CLASSES, (len(lengths),), generator=g)
    return ids, mask, labels, targets


def reference_loss(runner, token_head, final_head, batch, kind: str, depth: int):
    """Brute force: each loss term on its own graph, each sample run alone to its length,
    memory detached exactly `depth` transitions before the segment the loss sits on."""
    ids, mask, labels, targets = batch
    lengths = mask.sum(1).tolist()

    def run(i: int, upto: int):
        memory = runner.init_memory(1)
        for j in range(upto + 1):
            if 0 < j == upto - depth:
                memory = memory.detach()
            cut = slice(j * SEG, min((j + 1) * SEG, lengths[i]))
            out, memory = runner.step(ids[i : i + 1, cut], memory)
        return out.hidden, memory, cut

    token_sum, final_sum = 0.0, 0.0
    for i, length in enumerate(lengths):
        last = (length - 1) // SEG
        if kind != "final":
            for t in range(last + 1):
                hidden, _, cut = run(i, t)
                token_sum = token_sum + token_head.loss(hidden, labels[i : i + 1, cut])[0]
        if kind != "token":
            hidden, memory, _ = run(i, last)
            outputs = final_head(memory, hidden, torch.ones(hidden.shape[:2], dtype=torch.bool))
            final_sum = final_sum + final_head.loss(outputs, targets[i : i + 1]).sum()
    count = (labels != IGNORE_INDEX).sum()
    return token_sum / count + final_sum / len(lengths)


def call(runner, token_head, final_head, batch, kind: str):
    ids, mask, labels, targets = batch
    token = dict(labels=labels, head=token_head) if kind != "final" else {}
    final = dict(final_head=final_head, targets=targets) if kind != "token" else {}
    return runner(ids, mask, **token, **final)


def grads_of(params, loss) -> list[torch.Tensor]:
    for p in params:
        p.grad = None
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("kind", ["token", "final", "both"])
@pytest.mark.parametrize("depth", [-1, 0, 1, 2])
@pytest.mark.parametrize("backprop", ["full", "truncated", "checkpoint", "replay"])
def test_task_losses_match_the_per_loss_truncated_reference(backprop, depth, kind):
    if backprop == "truncated" and depth < 0:
        pytest.skip("truncated needs a depth")
    runner, token_head, final_head = make_runner(bptt_depth=depth, backprop=backprop)
    if kind == "both":  # attached to the runner too: its parameters must count once
        runner.task_head = final_head
    batch = make_batch()
    params = [p for m in (runner, token_head, final_head) for p in m.parameters()]
    params = list({id(p): p for p in params}.values())
    out = call(runner, token_head, final_head, batch, kind)
    want_loss = reference_loss(runner, token_head, final_head, batch, kind, depth)
    torch.testing.assert_close(out.loss, want_loss, atol=1e-12, rtol=1e-10)
    got, want = grads_of(params, out.loss), grads_of(params, want_loss)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9, msg=f"parameter {i}")
    assert runner.head.dense.weight.grad is None  # the per-call head replaced the MLM head


def test_final_losses_apart_train_on_one_graph_with_a_cut_and_stay_exact():
    # Ends at segments 3 and 1 with depth 1: one cut (before segment 2) serves both, so
    # plain autograd runs (outputs keep their graph) and must still match the reference.
    runner, token_head, final_head = make_runner(bptt_depth=1)
    batch = make_batch(lengths=(16, 7, 5))
    params = [*runner.parameters(), *final_head.parameters()]
    out = call(runner, token_head, final_head, batch, "final")
    assert out.final_outputs.requires_grad
    want_loss = reference_loss(runner, token_head, final_head, batch, "final", 1)
    for a, b in zip(grads_of(params, out.loss), grads_of(params, want_loss), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_replay_repeats_dropout_for_final_losses():
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2, dropout=0.2)
    runner = MemoryRunner(Encoder(config), MEM, SEG).double()
    final_head = PoolHead().double()
    params = [*runner.parameters(), *final_head.parameters()]
    batch = make_batch()
    grads = {}
    for mode in ("full", "replay"):
        runner.backprop = mode
        torch.manual_seed(123)
        grads[mode] = grads_of(params, call(runner, None, final_head, batch, "final").loss)
    for a, b in zip(grads["replay"], grads["full"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_final_outputs_equal_each_sample_run_alone_to_its_own_length():
    runner, _, final_head = make_runner()
    ids, mask, _, _ = batch = make_batch(lengths=(16, 5, 1))  # ends in segments 3, 1, 0
    with torch.no_grad():
        out = runner(ids, mask, final_head=final_head)
        for i, length in enumerate(mask.sum(1).tolist()):
            alone = runner(ids[i : i + 1, :length], final_head=final_head)
            torch.testing.assert_close(
                out.final_outputs[i], alone.final_outputs[0], atol=1e-12, rtol=0
            )
    assert out.loss is None and out.final_sum is None
    assert torch.isfinite(out.final_outputs).all()  # an early end is scored where it ends
    scored = call(runner, None, final_head, batch, "final")
    torch.testing.assert_close(scored.final_outputs, out.final_outputs, atol=1e-12, rtol=0)
    per_sample = final_head.loss(out.final_outputs, batch[3])
    torch.testing.assert_close(scored.final_sum, per_sample.sum())
    assert scored.final_count == 3
    torch.testing.assert_close(scored.loss, per_sample.mean())


def test_both_losses_add_their_means_and_keep_the_token_sums_per_segment():
    runner, token_head, final_head = make_runner(backprop="replay", bptt_depth=1)
    batch = make_batch()
    both = call(runner, token_head, final_head, batch, "both")
    token = call(runner, token_head, final_head, batch, "token")
    final = call(runner, token_head, final_head, batch, "final")
    torch.testing.assert_close(both.loss, token.loss + final.loss, atol=1e-12, rtol=0)
    torch.testing.assert_close(both.segment_sums, token.segment_sums, atol=1e-12, rtol=0)
    assert torch.equal(both.segment_counts, token.segment_counts)
    assert final.segment_sums is None and final.segment_counts is None
    assert not both.final_outputs.requires_grad  # detached under the sweep


def test_graph_cuts_are_exact_or_defer_to_the_sweep():
    assert graph_cuts({3}, 1, 4) == {2}  # loss_on=last
    assert graph_cuts({1, 3}, 1, 4) == {2}  # final losses two segments apart: one graph
    assert graph_cuts({2, 3}, 1, 4) is None  # neighbours: the cut for 3 would stop 2
    assert graph_cuts({0, 1, 2, 3}, 0, 4) == {1, 2, 3}
    assert graph_cuts({0, 1, 2, 3}, -1, 4) == set()
    assert graph_cuts({1, 3}, 3, 4) == set()  # depth reaches the start: no cut


def test_targets_need_a_final_head_and_one_row_per_sequence():
    runner, _, final_head = make_runner()
    ids, mask, _, targets = make_batch()
    with pytest.raises(ValueError, match="targets were given but no final_head"):
        runner(ids, mask, targets=targets)
    with pytest.raises(ValueError, match="targets has 2 rows for 3 sequences"):
        runner(ids, mask, final_head=final_head, targets=targets[:2])
