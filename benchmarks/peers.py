"""lucidrains' `recurrent-memory-transformer-pytorch` as rmt-bench peers (`luci_*`).

Its `RecurrentMemoryTransformer` is a causal decoder LM (the RMT paper's decoder form):
each segment is `[read memories] segment [write memories]`, the write memories' outputs
are the next segment's read memories, and its training loss is next-token cross-entropy
on every token. It is built at the point's shape, with the extras its constructor turns
on by default switched to what this project's encoder does:

- `use_xl_memories=False`: no Transformer-XL key/value cache across segments, so the only
  state carried is the memory, as here;
- `num_residual_streams=1`: one residual stream (plain residuals, no hyper-connections);
- `rotary_pos_emb=True, abs_pos_emb=False`: RoPE, as here, instead of learned absolute
  positions;
- `emb_gradient_frac=1.0`: the embedding's gradient unscaled, as here;
- `use_flash_attn=True`: attention through `F.scaled_dot_product_attention`, as here;
- `ff_mult` chosen so its GEGLU MLP is `d_ff` wide (this encoder's gated width).

What stays its own: a null key/value in every attention, a learned value-residual mix in
every layer after the first, causal attention (a token sees the read memories and the
tokens before it, a write memory sees everything), an untied LM head. Inference
(`luci_stream`) drops the LM head (`to_logits` is replaced by the identity): every
inference method here encodes and none projects onto the vocabulary. The package is
imported only when a model is built (the `bench` extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from benchmarks.measure import segment_flops
from benchmarks.points import Point
from rmt import EncoderConfig

LUCI_PACKAGE = "recurrent-memory-transformer-pytorch"  # its distribution's name (pip)
LUCI_MODULE = "recurrent_memory_transformer_pytorch"  # its import name


def luci_model(point: Point, config: EncoderConfig, lm_head: bool = True) -> nn.Module:
    """Its `RecurrentMemoryTransformerWrapper` at `point`'s shape (without LM head: no
    `lm_head`), on the point's device."""
    from recurrent_memory_transformer_pytorch import (
        RecurrentMemoryTransformer,
        RecurrentMemoryTransformerWrapper,
    )

    transformer = RecurrentMemoryTransformer(
        config.d_model,
        num_tokens=config.vocab_size,
        depth=config.n_layers,
        heads=config.n_heads,
        dim_head=config.d_model // config.n_heads,
        seq_len=point.segment_tokens,
        num_memory_tokens=point.memory_tokens,
        ff_mult=1.5 * (config.d_ff + 0.5) / config.d_model,  # int(d * mult * 2 / 3) = d_ff
        attn_dropout=config.dropout,
        ff_dropout=config.dropout,
        use_flash_attn=True,
        abs_pos_emb=False,
        rotary_pos_emb=True,
        use_xl_memories=False,
        emb_gradient_frac=1.0,
        num_residual_streams=1,
    )
    if not lm_head:
        transformer.to_logits = nn.Identity()
    # Its attention enters the deprecated `torch.backends.cuda.sdp_kernel` on every call.
    warnings.filterwarnings("ignore", "`torch.backends.cuda.sdp_kernel", FutureWarning)
    return RecurrentMemoryTransformerWrapper(transformer).to(point.device)


def luci_flops(point: Point, config: EncoderConfig, lm_head: bool = True) -> int:
    """Matmul FLOPs of one forward over all of `point`'s segments (2 per multiply-add).

    Per segment: the blocks on the segment and its 2 m memory positions (read and write),
    attention over one more key (the null key/value), the value-residual mix (d x heads)
    in every layer but the first, then (with `lm_head`) the LM head on every token.
    """
    m, tokens, layers = point.memory_tokens, point.segment_tokens, config.n_layers
    positions = tokens + 2 * m
    gated = replace(config, activation="geglu")  # its MLP is gated whatever `activation` says
    segment = segment_flops(gated, tokens, 2 * m, head=False)
    segment += layers * 2 * 2 * positions * config.d_model  # scores and values of the null key
    segment += (layers - 1) * 2 * positions * config.d_model * config.n_heads
    if lm_head:
        segment += 2 * tokens * config.d_model * config.vocab_size
    return point.batch_size * point.segments * segment


def luci_stream(point: Point, model: nn.Module, input_ids: torch.Tensor) -> Callable[[], None]:
    """Inference a segment at a time through its transformer, only the memory carried.

    Its wrapper's forward would concatenate every segment's outputs; this is that loop
    without keeping them, as `rmt_infer` keeps nothing.
    """
    model.eval()
    transformer = model.transformer

    @torch.inference_mode()
    def step() -> None:
        memories = None  # its first segment reads its learned read-memory embedding
        for segment in input_ids.split(point.segment_tokens, dim=1):
            _, memories, _ = transformer(segment, memories)

    return step


def luci_loss(
    model: nn.Module, input_ids: torch.Tensor, replay: bool
) -> Callable[[], torch.Tensor | None]:
    """Its wrapper's training forward over all segments: next-token loss on every token,
    full BPTT (the loss to backward) or memory-replay backprop (`replay`: it runs the
    backward itself, segment by segment, and the step gets None).

    The wrapper shifts its input by one token for the targets, so one token is appended:
    it then feeds exactly the point's segments.
    """
    model.train()
    inputs = torch.cat([input_ids, input_ids[:, :1]], dim=1)

    def loss() -> torch.Tensor | None:
        if replay:
            model(inputs, memory_replay_backprop=True)
            return None
        value, _ = model(inputs, return_loss=True)
        return value

    return loss
