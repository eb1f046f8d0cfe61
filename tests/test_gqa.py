"""Grouped-query attention in the native encoder, and the FLOP and parameter counts
(`benchmarks.measure`) of dense and grouped-query models."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import parameter_counts, segment_flops
from rmt import Encoder, EncoderConfig

VOCAB, D, HEADS = 40, 32, 4


def encoder(seed: int = 0, **shape) -> Encoder:
    torch.manual_seed(seed)
    config = EncoderConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=HEADS, **shape)
    return Encoder(config, kernels="torch")


def random_ids(batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(5, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def test_as_many_kv_heads_as_query_heads_is_the_multi_head_model_bitwise():
    plain, explicit = encoder(), encoder(n_kv_heads=HEADS)
    assert explicit.config.n_kv_heads == plain.config.n_kv_heads == HEADS  # None: n_heads
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert shapes == {k: v.shape for k, v in explicit.state_dict().items()}
    assert shapes["blocks.0.attn.qkv.weight"] == (3 * D, D)
    for a, b in zip(plain.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same initialisation, draw for draw
    ids = random_ids()
    assert torch.equal(plain(ids), explicit(ids))


def test_the_qkv_split_is_the_fused_layout_attention_always_had():
    """q | k | v, each (heads, head_dim): what `rearrange("b l (three h d) -> ...")` read."""
    attn = encoder().blocks[0].attn
    qkv = torch.randn(2, 5, 3 * D)
    before = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=HEADS)
    for got, want in zip(attn.split_heads(qkv), before, strict=True):
        assert torch.equal(got, want)


def repeated_kv(gqa: Encoder, groups: int) -> dict[str, torch.Tensor]:
    """`gqa`'s weights with each key/value head's rows repeated for its query heads: the
    multi-head model that computes what the grouped-query one does."""
    state, head_dim = dict(gqa.state_dict()), D // HEADS
    for name, weight in gqa.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = weight.split([D, D // groups, D // groups])
            k, v = (rearrange(t, "(h d) i -> h d i", d=head_dim) for t in (k, v))
            k, v = (rearrange(t.repeat_interleave(groups, 0), "h d i -> (h d) i") for t in (k, v))
            state[name] = torch.cat([q, k, v])
    return state


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_is_multi_head_attention_with_shared_kv_weights(kv_heads):
    gqa, mha = encoder(n_kv_heads=kv_heads), encoder(seed=1)
    groups = HEADS // kv_heads
    assert gqa.blocks[0].attn.qkv.weight.shape == ((HEADS + 2 * kv_heads) * D // HEADS, D)
    mha.load_state_dict(repeated_kv(gqa, groups))
    ids = random_ids()
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 6:] = False  # padding: keys masked the same way in both
    torch.testing.assert_close(gqa(ids, mask), mha(ids, mask))
    assert (gqa(ids) - encoder(seed=2)(ids)).abs().max() > 1e-3  # the comparison can fail


def test_kv_heads_must_divide_the_query_heads():
    with pytest.raises(ValueError, match=r"^n_heads=4 must be a multiple of n_kv_heads=3: each"):
        EncoderConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match=r"^n_heads=4 must be a multiple of n_kv_heads=0"):
        EncoderConfig(n_heads=4, n_kv_heads=0)


def test_parameter_counts_are_the_modules_and_a_hand_count():
    for shape in ({}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "norm": "layernorm"}):
        model = encoder(**shape)
        total, active = parameter_counts(model.config)
        assert total == active == sum(p.numel() for p in model.parameters()), shape
    # By hand, d 32, 4 heads of 8, 2 kv heads, SwiGLU d_ff 64 (8/3 x 32 rounded to 64):
    # embeddings 40 x 32 = 1280; per layer: 2 RMSNorms 64, q 32 x 32 = 1024,
    # k and v 2 x 32 x 16 = 1024, out 1024, MLP 3 x 32 x 64 = 6144 -> 9280; final norm 32.
    assert parameter_counts(encoder(n_kv_heads=2).config) == (1280 + 2 * 9280 + 32,) * 2


def counted_flops(model: Encoder, tokens: int, memory_tokens: int) -> int:
    """torch's matmul FLOP count of one forward of one sample over memory + tokens
    (SDPA's math backend, so the counter sees the attention matmuls)."""
    memory = torch.randn(1, memory_tokens, D)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.forward_with_memory(memory, random_ids(1, tokens), None)
    return counter.get_total_flops()


@pytest.mark.parametrize("kv_heads", [HEADS, 2, 1])
def test_segment_flops_are_the_matmuls_torch_counts(kv_heads):
    model = encoder(n_kv_heads=kv_heads)
    assert counted_flops(model, 7, 3) == segment_flops(model.config, 7, 3, head=False)


def test_segment_flops_by_hand():
    # d 32, 10 positions, 2 kv heads of 8: per layer 2 x 10 x (q 1024 + k and v 2 x 512
    # + out 1024 + MLP 6144) = 184,320 projection FLOPs, 2 x 2 x 10 x 10 x 32 = 12,800
    # attention FLOPs (scores and values over all 4 query heads).
    config = encoder(n_kv_heads=2).config
    assert segment_flops(config, 8, 2, head=False) == 2 * (184_320 + 12_800)
    dense = 2 * 2 * 10 * (1024 * 4 + 6144) + 2 * 12_800  # 1024 each for q, k, v, out
    assert segment_flops(encoder().config, 8, 2, head=False) == dense


def test_the_parameters_table_counts_the_built_encoders(capsys):
    from hydra import compose, initialize_config_module

    from benchmarks.parameters import counts, main
    from rmt.encoder import Encoder, EncoderConfig
    from rmt.options import train_options

    vocab, total, active = counts("genos_small", vocab=128)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        fields = train_options(compose("train", ["model=genos_small"])).model.encoder_fields()
    encoder = Encoder(EncoderConfig(**fields, vocab_size=128))
    assert vocab == 128 and total == sum(p.numel() for p in encoder.parameters()) > active
    main(["tiny", "dnafm"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| tiny | 512 |") and rows[3].startswith("| dnafm | 16 |")
