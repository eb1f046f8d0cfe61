"""Invariants of the encoder and the recurrent memory runner (DESIGN.md), in fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead

VOCAB, D, SEG, MEM = 40, 32, 6, 3


def make_runner(memory_tokens: int = MEM, tied: bool = True, **kwargs) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2)
    encoder = Encoder(config)
    head = MLMHead(D, VOCAB, encoder.embed_tokens if tied else None)
    runner = MemoryRunner(encoder, memory_tokens, SEG, head=head, **kwargs)
    return runner.double()


def random_batch(batch: int, segments: int, label_prob: float = 0.5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, segments * SEG), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < label_prob, ids, -100)
    return ids, labels


def param_grads(runner: MemoryRunner, loss_fn) -> dict[str, torch.Tensor]:
    runner.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in runner.named_parameters()
    }


def truncated_reference(runner: MemoryRunner, ids, labels, depth: int):
    """Exact truncated BPTT by brute force: every segment's loss gets its own graph whose
    memory is cut `depth` transitions before it."""

    def loss():
        segments = runner._split(ids, None, labels)
        total_count = (labels != -100).sum()
        total = 0.0
        for t in range(len(segments)):
            memory = runner.init_memory(ids.shape[0])
            for j in range(t + 1):
                if depth >= 0 and j == t - depth and j > 0:
                    memory = memory.detach()
                memory, hidden = runner._encode_segment(memory, segments[j][0], None)
            loss_sum, _ = runner.head.loss(hidden, segments[t][2])
            total = total + loss_sum
        return total / total_count

    return loss


def assert_grads_close(a, b, atol=1e-12):
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-9, msg=name)


def test_one_segment_without_memory_equals_the_bare_encoder():
    runner = make_runner(memory_tokens=0)
    ids, _ = random_batch(2, 1)
    out = runner(ids, return_hidden=True)
    torch.testing.assert_close(out.hidden, runner.encoder(ids), atol=0, rtol=0)
    assert out.memory.shape == (2, 0, D)


def test_memory_changes_the_output_of_later_segments():
    runner = make_runner()
    ids, _ = random_batch(2, 2)
    together = runner(ids, return_hidden=True).hidden[:, SEG:]
    alone = runner(ids[:, SEG:], return_hidden=True).hidden
    assert (together - alone).abs().max() > 1e-6


def test_one_call_equals_stepping_segment_by_segment():
    assert_stepping_equals_one_call(make_runner())


def assert_stepping_equals_one_call(runner: MemoryRunner) -> None:
    """Streaming segment by segment (init_memory + step) gives one call's states; also
    used for a wrapped Hugging Face encoder (tests/test_hf_encoder.py)."""
    ids, _ = random_batch(3, 4)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 2 * SEG + 2 :] = False  # sample 0 ends inside segment 3
    whole = runner(ids, mask, return_hidden=True)
    memory, hiddens = runner.init_memory(3), []
    for j in range(4):
        cut = slice(j * SEG, (j + 1) * SEG)
        seg_out, memory = runner.step(ids[:, cut], memory, attention_mask=mask[:, cut])
        hiddens.append(seg_out.hidden)
    torch.testing.assert_close(torch.cat(hiddens, 1), whole.hidden, atol=1e-12, rtol=0)
    torch.testing.assert_close(memory, whole.memory, atol=1e-12, rtol=0)


def test_a_sample_that_has_ended_keeps_its_memory():
    runner = make_runner()
    ids, _ = random_batch(2, 4)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 2 * SEG :] = False  # sample 0 is two segments long, sample 1 four
    batched = runner(ids, mask, return_hidden=True)
    alone = runner(ids[:1, : 2 * SEG], return_hidden=True)
    torch.testing.assert_close(batched.memory[0], alone.memory[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(batched.hidden[0, : 2 * SEG], alone.hidden[0], atol=1e-12, rtol=0)


def test_padding_inside_a_segment_does_not_leak_into_valid_tokens():
    runner = make_runner()
    ids, _ = random_batch(1, 2)
    short = ids[:, : SEG + 2]
    padded = torch.cat([short, torch.full((1, SEG - 2), 3)], 1)
    mask = torch.arange(2 * SEG)[None] < SEG + 2
    a = runner(short, return_hidden=True)
    b = runner(padded, mask, return_hidden=True)
    torch.testing.assert_close(b.hidden[:, : SEG + 2], a.hidden, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.memory, a.memory, atol=1e-12, rtol=0)


def test_loss_is_token_weighted_mean_over_segments():
    runner = make_runner()
    ids, labels = random_batch(2, 3)
    labels[:, :SEG] = -100
    labels[0, 0] = ids[0, 0]  # one label in segment 0: token weighting differs from segment mean
    out = runner(ids, labels=labels, return_hidden=True)
    logits = runner.head(out.hidden)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    per_segment = [
        F.cross_entropy(
            logits[:, s].reshape(-1, VOCAB), labels[:, s].reshape(-1), ignore_index=-100
        )
        for s in (slice(j * SEG, (j + 1) * SEG) for j in range(3))
    ]
    torch.testing.assert_close(out.segment_losses, torch.stack(per_segment))
    runner.loss_on = "last"
    torch.testing.assert_close(runner(ids, labels=labels).loss, per_segment[-1])


@pytest.mark.parametrize("backprop", ["full", "truncated", "checkpoint", "replay"])
@pytest.mark.parametrize("depth", [0, 1, 2, 3, -1])
def test_truncated_bptt_matches_the_exact_per_segment_reference(depth, backprop):
    if backprop == "truncated" and depth < 0:
        pytest.skip("truncated needs a depth (tested below)")
    runner = make_runner(bptt_depth=depth, backprop=backprop)
    ids, labels = random_batch(2, 5)
    got = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    want = param_grads(runner, truncated_reference(runner, ids, labels, depth))
    assert_grads_close(got, want)


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_gradient_of_a_segment_loss_reaches_exactly_k_transitions(depth):
    # Segment j uses only token id 5 + j, so embedding row 5 + j has a gradient exactly
    # when the loss reaches segment j. The head is untied so it cannot touch those rows.
    runner = make_runner(tied=False, bptt_depth=depth)
    segments, t = 6, 5
    ids = (5 + torch.arange(segments)).repeat_interleave(SEG)[None].repeat(2, 1)
    labels = torch.full_like(ids, -100)
    labels[:, t * SEG : (t + 1) * SEG] = 7  # only segment t is scored
    for backprop in ("truncated", "checkpoint", "replay"):
        runner.backprop = backprop
        grads = param_grads(runner, lambda: runner(ids, labels=labels).loss)
        rows = grads["encoder.embed_tokens.weight"][5 : 5 + segments].abs().sum(1)
        reached = [j for j in range(segments) if rows[j] > 0]
        assert reached == list(range(max(0, t - depth), t + 1)), backprop
        assert (grads["memory.weight"].abs().sum() > 0) == (t <= depth)


def test_depth_at_least_segments_minus_one_is_full_bptt():
    ids, labels = random_batch(2, 4)
    full = make_runner(bptt_depth=-1)
    want = param_grads(full, lambda: full(ids, labels=labels).loss)
    for depth in (3, 10):
        runner = make_runner(bptt_depth=depth)
        assert_grads_close(param_grads(runner, lambda r=runner: r(ids, labels=labels).loss), want)


def test_truncated_depth_is_settable_between_calls():
    runner = make_runner()
    ids, labels = random_batch(2, 4)
    full = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    runner.bptt_depth = 1
    truncated = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    assert (full["memory.weight"] - truncated["memory.weight"]).abs().max() > 0
    with pytest.raises(ValueError, match="bptt_depth"):
        runner.bptt_depth = -2
    with pytest.raises(ValueError, match="backprop"):
        runner.backprop = "magic"
    runner.bptt_depth, runner.backprop = -1, "truncated"
    with pytest.raises(ValueError, match="needs a depth"):
        runner(ids, labels=labels)


def test_replay_keeps_dropout_masks_identical_in_the_recomputation():
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2, dropout=0.2)
    encoder = Encoder(config)
    runner = MemoryRunner(encoder, MEM, SEG, head=MLMHead(D, VOCAB, encoder.embed_tokens)).double()
    ids, labels = random_batch(2, 3)
    grads = {}
    for mode in ("full", "checkpoint", "replay"):
        runner.backprop = mode
        torch.manual_seed(123)
        grads[mode] = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    assert_grads_close(grads["replay"], grads["full"])
    assert_grads_close(grads["checkpoint"], grads["full"])


def test_encoder_config_rejects_bad_values_in_its_own_names():
    # The model knows nothing of Hydra: the app qualifies these (model.activation=...).
    with pytest.raises(ValueError, match=r"^activation='relu'; choose one of"):
        EncoderConfig(activation="relu")
    with pytest.raises(ValueError, match=r"^d_model=30 must split into n_heads=4 heads"):
        EncoderConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown model config keys"):
        EncoderConfig.from_dict({"width": 3})
