"""The causal RMT: its attention layout, KV-cache decoding, next-token labels, task=clm."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fast_config import FAST_TRAIN
from hydra import compose, initialize_config_module

from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead, load_model
from rmt.decoding import DecoderState, StreamDecoder
from rmt.heads import IGNORE_INDEX
from rmt.options import train_options
from rmt.tasks.clm import next_token_labels
from rmt.train import check_causal, train

VOCAB, D, SEG, MEM = 12, 32, 8, 3


def make_encoder(causal: bool = True, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    config = EncoderConfig(
        vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2, causal=causal, init_std=0.2
    )
    return Encoder(config, kernels="torch")


def make_runner(memory_tokens: int = MEM, **kwargs) -> MemoryRunner:
    encoder = make_encoder()
    head = MLMHead(D, VOCAB, encoder.embed_tokens, kernels="torch")
    return MemoryRunner(encoder, memory_tokens, SEG, head=head, **kwargs).double()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(5, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- the layout and its mask ------------------------------------------------------------
def test_causal_mask_is_the_decoder_rmt_layout():
    got = make_encoder().causal_mask(2, 3, torch.device("cpu")).int()
    # rows attend to columns: [read r0 r1 | tokens t0 t1 t2 | write w0 w1]
    want = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0],  # read memory: itself only
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # token i: read memory, tokens <= i
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],  # write memory: everything
        [1, 1, 1, 1, 1, 1, 1],
    ])  # fmt: skip
    assert torch.equal(got, want)


def layout_states(encoder: Encoder, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Every position's output of one causal segment: [read | tokens | write]."""
    m = memory.shape[1]
    x = torch.cat([memory, encoder.embed(ids), memory], 1)
    return encoder.run_blocks(x, encoder.causal_mask(m, ids.shape[1], x.device))


def test_changing_token_j_changes_nothing_before_j_and_the_write_memory_always():
    encoder = make_encoder().double()
    memory = torch.randn(2, MEM, D, dtype=torch.float64)
    ids = random_ids(2, SEG)
    base = layout_states(encoder, memory, ids)
    write, tokens = encoder.forward_with_memory(memory, ids, None)
    torch.testing.assert_close(write, base[:, MEM + SEG :], atol=1e-12, rtol=0)
    torch.testing.assert_close(tokens, base[:, MEM : MEM + SEG], atol=1e-12, rtol=0)
    for j in range(SEG):
        changed = ids.clone()
        changed[:, j] = 5 + (changed[:, j] - 4) % (VOCAB - 5)  # another content token
        out = layout_states(encoder, memory, changed)
        # The read memory and the tokens before j are bitwise the same ...
        assert torch.equal(out[:, : MEM + j], base[:, : MEM + j]), j
        # ... token j and the write memory see the change.
        assert (out[:, MEM + j] - base[:, MEM + j]).abs().max() > 1e-6, j
        assert (out[:, MEM + SEG :] - base[:, MEM + SEG :]).abs().amax(-1).min() > 1e-9, j


def test_padded_tokens_are_never_seen():
    encoder = make_encoder().double()
    memory = torch.randn(2, MEM, D, dtype=torch.float64)
    ids = random_ids(2, SEG)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 5:] = False
    write, tokens = encoder.forward_with_memory(memory, ids, mask)
    other = ids.clone()
    other[0, 5:] = 0  # different padding ids
    write2, tokens2 = encoder.forward_with_memory(memory, other, mask)
    torch.testing.assert_close(write2, write, atol=0, rtol=0)
    torch.testing.assert_close(tokens2[0, :5], tokens[0, :5], atol=0, rtol=0)
    # A valid token's state is what the unpadded, shorter segment gives it.
    alone = encoder.forward_with_memory(memory[:1], ids[:1, :5], None)[1]
    torch.testing.assert_close(tokens[:1, :5], alone, atol=1e-12, rtol=0)


def test_a_causal_encoder_alone_is_a_segment_without_memory():
    encoder = make_encoder().double()
    ids = random_ids(2, SEG)
    empty = torch.zeros(2, 0, D, dtype=torch.float64)
    write, tokens = encoder.forward_with_memory(empty, ids, None)
    assert write.shape == (2, 0, D)
    torch.testing.assert_close(encoder(ids), tokens, atol=0, rtol=0)
    changed = ids.clone()
    changed[:, -1] = 5 + (ids[:, -1] - 4) % (VOCAB - 5)
    assert torch.equal(encoder(changed)[:, :-1], tokens[:, :-1])


# -- KV-cache decoding ------------------------------------------------------------------
@pytest.mark.parametrize("memory_tokens", [MEM, 0])
def test_token_by_token_decoding_equals_one_call_and_the_runner_step(memory_tokens):
    runner = make_runner(memory_tokens).float()
    memory = runner.init_memory(2) + torch.randn(2, memory_tokens, D)
    ids = random_ids(2, SEG)
    write, tokens = runner.encoder.forward_with_memory(memory, ids, None)
    state = DecoderState.start(runner.encoder, memory)
    one_by_one = torch.cat([state.decode(ids[:, i : i + 1]) for i in range(SEG)], 1)
    torch.testing.assert_close(one_by_one, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.write(), write, atol=1e-5, rtol=1e-5)
    # In pieces (several tokens at once: causal among themselves), and as runner.step.
    state = DecoderState.start(runner.encoder, memory)
    pieces = torch.cat([state.decode(ids[:, :3]), state.decode(ids[:, 3:])], 1)
    out, new_memory = runner.step(ids, memory)
    torch.testing.assert_close(pieces, out.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.write(), new_memory, atol=1e-5, rtol=1e-5)


def test_stream_decoding_equals_the_runners_forward_over_segments():
    runner = make_runner()
    ids = random_ids(2, 3 * SEG + 5)
    whole = runner(ids, return_hidden=True)
    decoder = StreamDecoder(runner, 2)
    hidden = torch.cat([decoder.feed(ids[:, :4]), decoder.feed(ids[:, 4:])], 1)
    torch.testing.assert_close(hidden, whole.hidden, atol=1e-12, rtol=0)
    full = runner(ids[:, : 3 * SEG])  # the memory the fourth (partial) segment read
    torch.testing.assert_close(decoder.memory, full.memory, atol=1e-12, rtol=0)
    # Memory stays flat: the cache holds the current segment only.
    for _ in range(2 * SEG):
        decoder.feed(ids[:, :1])
        assert decoder.state.caches[0].keys.shape[2] <= MEM + SEG


@torch.no_grad()
def test_the_triton_kernels_decode_at_offset_positions_as_torch_does():
    # The rotary kernel reads its tables from a slice starting at the cached positions.
    reference = make_encoder()
    triton = Encoder(reference.config, kernels="triton")
    triton.load_state_dict(reference.state_dict())
    memory, ids = torch.randn(1, MEM, D), random_ids(1, 5)
    write, tokens = reference.forward_with_memory(memory, ids, None)
    state = DecoderState.start(triton, memory)
    one_by_one = torch.cat([state.decode(ids[:, i : i + 1]) for i in range(5)], 1)
    torch.testing.assert_close(one_by_one, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.write(), write, atol=1e-5, rtol=1e-5)


def test_decoding_refuses_a_bidirectional_encoder():
    with pytest.raises(ValueError, match="needs a causal encoder"):
        DecoderState.start(make_encoder(causal=False), torch.zeros(1, MEM, D))


# -- next-token labels and the loss -----------------------------------------------------
def test_labels_are_the_next_token_across_segment_boundaries():
    ids = torch.tensor([[5, 6, 7, 8, 9, 5], [9, 8, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    labels = next_token_labels(ids, mask)
    x = IGNORE_INDEX
    assert labels.tolist() == [[6, 7, 8, 9, 5, x], [8, 7, x, x, x, x]]


def test_the_runner_loss_is_next_token_cross_entropy_over_all_segments():
    runner = make_runner()
    ids = random_ids(2, 3 * SEG)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 2 * SEG + 3 :] = False
    out = runner(ids, mask, next_token_labels(ids, mask), return_hidden=True)
    # Brute force: position t (any segment, its last token included) predicts token t+1.
    logits = runner.head(out.hidden)[:, :-1]
    target = torch.where(mask[:, 1:] & mask[:, :-1], ids[:, 1:], IGNORE_INDEX)
    want = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
    torch.testing.assert_close(out.loss, want)
    assert int(out.segment_counts.sum()) == 3 * SEG - 1 + 2 * SEG + 3 - 1


def param_grads(runner: MemoryRunner, ids, labels) -> dict[str, torch.Tensor]:
    runner.zero_grad(set_to_none=True)
    runner(ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in runner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("depth", [-1, 1])
def test_replay_and_checkpoint_give_the_full_bptt_gradients_of_a_causal_runner(depth):
    ids = random_ids(2, 4 * SEG)
    labels = next_token_labels(ids, torch.ones_like(ids, dtype=torch.bool))
    grads = {}
    for mode in ("full", "checkpoint", "replay"):
        runner = make_runner(bptt_depth=depth, backprop=mode)
        grads[mode] = param_grads(runner, ids, labels)
    assert grads["full"]["memory.weight"].abs().sum() > 0
    for mode in ("checkpoint", "replay"):
        assert grads[mode].keys() == grads["full"].keys()
        for name, grad in grads["full"].items():
            torch.testing.assert_close(grads[mode][name], grad, atol=1e-12, rtol=1e-9)


# -- rmt-train task=clm -----------------------------------------------------------------
def options(*overrides: str):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return train_options(compose(config_name="train", overrides=list(overrides)))


CLM = [*FAST_TRAIN, "task=clm", "model.causal=true", "curriculum.stages=[{segments: 2, steps: 2}]"]


@pytest.mark.parametrize("tokenizer", ["nucleotide", "bpe"])
def test_train_clm_writes_bits_per_base_beside_the_markov_baselines(tmp_path, tokenizer):
    extra = ["tokenizer.path=nucleotide"] if tokenizer == "nucleotide" else []
    result = train(options(*CLM, *extra, "trainer.memory_gain=false"), tmp_path)
    final = json.loads((tmp_path / "eval.json").read_text())["final"]
    assert result["eval_bits_per_base"] == pytest.approx(final["bits_per_base"])
    # bits per base = summed NLL in bits over the bases the scored tokens spell.
    nats = final["loss"] * final["masked_tokens"]
    assert final["bits_per_base"] == pytest.approx(nats / math.log(2) / final["bases"])
    if tokenizer == "nucleotide":
        assert final["bases"] == final["masked_tokens"]
    else:
        assert final["bases"] > 2 * final["masked_tokens"]
    for k in (1, 5):  # fitted on lambda's training sequence, scored on the held-out windows
        assert 1.5 < final[f"markov{k}_bits_per_base"] < 2.1
        assert result[f"eval_markov{k}_bits_per_base"] == final[f"markov{k}_bits_per_base"]
    runner, _ = load_model(tmp_path)
    assert runner.encoder.config.causal


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=clm"], "task=clm .* needs a causal model, and model.causal=false: set "
         "model.causal=true"),
        (["model.causal=true"], "model.causal=true cannot learn task=mlm .*: use task=clm"),
    ],
)  # fmt: skip
def test_train_refuses_a_task_the_model_cannot_learn(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(options(*FAST_TRAIN, *overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_clm_refuses_a_hugging_face_encoder_and_impossible_markov_orders():
    cfg = options("task=clm", "model.causal=true")
    cfg.model.hf = "/models/gena-lm"  # set after the checks: only its value matters here
    with pytest.raises(ValueError, match=r"model.hf=/models/gena-lm is a bidirectional"):
        check_causal(cfg)
    with pytest.raises(ValueError, match=r"task.markov_orders=\[1, 40\] cannot hold it"):
        options("task=clm", "model.causal=true", "task.markov_orders=[1,40]")
