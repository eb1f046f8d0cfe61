"""The base encoder: a pre-norm bidirectional transformer over DNA tokens.

Deliberately plain (nanoGPT-sized): token embeddings, `n_layers` blocks of
RoPE self-attention + gated or plain MLP, a final norm. No absolute positions, so the
same weights serve any segment length and the memory runner can prepend memory states
as ordinary input vectors through `forward_embeddings`.

With `causal=True` it is the decoder of the RMT paper instead (next-token prediction):
each segment is laid out [read memory | tokens | write memory] under a causal mask
(`causal_mask`), and `rmt.decoding` runs the same layers one token at a time over a
key/value cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kernels import get_ops
from kernels.reference import rotary_tables
from rmt.moe import MoEMLP

if TYPE_CHECKING:
    from rmt.decoding import LayerCache

ACTIVATIONS = ("swiglu", "geglu", "gelu")
NORMS = ("rmsnorm", "layernorm")


@dataclass
class EncoderConfig:
    """Shape and flavour of the encoder. `d_ff=None` picks the usual width per activation."""

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    # A decoder (next-token prediction; `Encoder.forward_with_memory` gives the layout).
    causal: bool = False
    # Grouped-query attention: n_kv_heads key/value heads, each shared by
    # n_heads // n_kv_heads query heads (None: n_heads, plain multi-head attention).
    n_kv_heads: int | None = None
    # A mixture of experts (rmt.moe) in place of every dense MLP when n_experts > 0.
    n_experts: int = 0
    moe_top_k: int = 2  # experts per position
    moe_d_ff: int | None = None  # each expert's width (None: d_ff)
    moe_capacity_factor: float | None = None  # None: dropless; else assignments dropped
    moe_aux_weight: float = 0.01  # load-balancing loss weight (Switch / GShard)
    moe_z_weight: float = 0.0  # router z-loss weight (ST-MoE)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; choose one of {ACTIVATIONS}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}; choose one of {NORMS}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model={self.d_model} must split into n_heads={self.n_heads} "
                "heads of even size (RoPE rotates pairs of channels)"
            )
        if self.d_ff is None:
            # Gated MLPs get 8/3 d (rounded to 64) so they cost the same as a 4 d GELU MLP.
            gated = self.activation != "gelu"
            self.d_ff = 64 * round(8 * self.d_model / 3 / 64) if gated else 4 * self.d_model
        self._check_kv_heads()
        self._check_experts()

    def _check_kv_heads(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}: "
                "each key/value head serves n_heads // n_kv_heads query heads"
            )

    def _check_experts(self) -> None:
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        if self.n_experts < 0:
            raise ValueError(f"n_experts={self.n_experts} must be >= 0 (0: a dense MLP)")
        if self.n_experts and not 1 <= self.moe_top_k <= self.n_experts:
            raise ValueError(
                f"moe_top_k={self.moe_top_k} must be between 1 and n_experts={self.n_experts}"
            )
        if self.moe_capacity_factor is not None and self.moe_capacity_factor <= 0:
            raise ValueError(
                f"moe_capacity_factor={self.moe_capacity_factor} must be > 0 (null: dropless)"
            )
        if self.moe_d_ff < 1:
            raise ValueError(f"moe_d_ff={self.moe_d_ff} must be >= 1 (null: d_ff)")
        for key in ("moe_aux_weight", "moe_z_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


class Norm(nn.Module):
    """Pre-norm step: add a block's output to the residual stream, then normalize.

    One op (`add_rms_norm` / `add_layer_norm`) so the fused backend reads the stream once.
    """

    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.kind, self.eps, self.ops = config.norm, config.norm_eps, ops
        self.weight = nn.Parameter(torch.ones(config.d_model))
        self.bias = nn.Parameter(torch.zeros(config.d_model)) if self.kind == "layernorm" else None

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + delta), x + delta); with delta None, (norm(x), x)."""
        if self.kind == "rmsnorm":
            return self.ops.add_rms_norm(x, delta, self.weight, self.eps)
        return self.ops.add_layer_norm(x, delta, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    """RoPE self-attention; grouped-query (GQA) when n_kv_heads < n_heads."""

    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.dropout, self.ops = config.dropout, ops
        # One fused projection: n_heads query heads, then n_kv_heads key and value heads.
        width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.qkv = nn.Linear(config.d_model, width, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection (b, l, (H + 2 K) head_dim) as q, k, v (b, H, l, head_dim):
        each of the K key/value heads repeated for its H // K query heads, because the
        rotary and attention ops take equal head counts."""
        q, k, v = qkv.split(
            [self.n_heads * self.head_dim, *[self.n_kv_heads * self.head_dim] * 2], -1
        )
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", d=self.head_dim) for t in (q, k, v))
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """With a `cache` (incremental decoding), x's keys and values are appended to it
        and x attends to all it holds; `mask` then has one column per cached position."""
        q, k, v = self.split_heads(self.qkv(x))
        q, k = self.ops.apply_rotary(q, k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)
        y = self.ops.attention(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    """Gated (SwiGLU, GeGLU) or plain GELU MLP, `d_ff` wide (default: the config's)."""

    def __init__(self, config: EncoderConfig, ops, d_ff: int | None = None) -> None:
        super().__init__()
        self.activation, self.ops = config.activation, ops
        d_ff = d_ff or config.d_ff
        gated = config.activation != "gelu"
        self.up = nn.Linear(config.d_model, (2 if gated else 1) * d_ff, bias=False)
        self.down = nn.Linear(d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu":
            return self.down(F.gelu(self.up(x), approximate="tanh"))
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(getattr(self.ops, self.activation)(gate, up))


def make_mlp(config: EncoderConfig, ops) -> nn.Module:
    """The block's MLP: dense, or `n_experts` expert MLPs `moe_d_ff` wide behind a router."""
    if not config.n_experts:
        return MLP(config, ops)
    return MoEMLP(config, [MLP(config, ops, config.moe_d_ff) for _ in range(config.n_experts)])


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)).

    Blocks pass (residual stream, last branch output) rather than their sum, so each add
    happens inside the next norm (fused on the Triton backend); same arithmetic either way.
    """

    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.norm1, self.attn = Norm(config, ops), Attention(config, ops)
        self.norm2, self.mlp = Norm(config, ops), make_mlp(config, ops)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, delta, rope, mask, cache=None, valid=None):
        """(stream, pending delta) -> (stream, pending delta); the stream is x + delta.

        `valid` (b, l), True at real positions: padding is not routed to experts."""
        normed, x = self.norm1(x, delta)
        normed, x = self.norm2(x, self.drop(self.attn(normed, rope, mask, cache)))
        moe = isinstance(self.mlp, MoEMLP)
        return x, self.drop(self.mlp(normed, valid) if moe else self.mlp(normed))


class Encoder(nn.Module):
    """Token ids -> final hidden states (batch, length, d_model)."""

    def __init__(self, config: EncoderConfig, kernels: str = "auto") -> None:
        """`kernels` (auto | torch | triton) picks the backend of the fusable ops: a property
        of the machine that runs the model, so it is not part of the saved config."""
        super().__init__()
        self.config = config
        ops = get_ops(kernels)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, ops) for _ in range(config.n_layers))
        self.final_norm = Norm(config, ops)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self.apply(self._init_weights)
        # Scale residual-branch outputs by depth (GPT-2) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "down.weight")):  # experts' too
                nn.init.normal_(p, std=config.init_std / (2 * config.n_layers) ** 0.5)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def rope(self, length: int, device: torch.device, dtype: torch.dtype):
        """cos/sin tables for positions 0..length-1, cached per (length, device, dtype)."""
        key = (length, device, dtype)
        if key not in self._rope_cache:
            head_dim = self.config.d_model // self.config.n_heads
            self._rope_cache[key] = rotary_tables(
                length, head_dim, self.config.rope_base, device, dtype
            )
        return self._rope_cache[key]

    def causal_mask(self, memory_tokens: int, length: int, device: torch.device) -> torch.Tensor:
        """(2m + S, 2m + S) bool, True = attend, for [read memory | tokens | write memory]:
        the read memory sees itself, token i the read memory and tokens <= i, the write
        memory everything. Cached per (m, S, device)."""
        key = (memory_tokens, length, device)
        if key not in self._mask_cache:
            m, n = memory_tokens, 2 * memory_tokens + length
            mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            mask[:m, :m] = True
            mask[m + length :] = True
            self._mask_cache[key] = mask
        return self._mask_cache[key]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward_embeddings(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the blocks on input vectors (batch, length, d); mask is True where valid."""
        mask = valid = None
        # A mask with nothing padded is dropped (SDPA's fastest path); that check reads a
        # value, which a compiled graph cannot, so there the caller drops it (rmt.compile).
        if key_padding_mask is not None and (
            torch.compiler.is_compiling() or not bool(key_padding_mask.all())
        ):
            mask, valid = rearrange(key_padding_mask, "b l -> b 1 1 l"), key_padding_mask
        return self.run_blocks(x, mask, valid=valid)

    def run_blocks(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        start: int = 0,
        caches: list[LayerCache] | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The blocks and final norm on x (batch, length, d) at positions start, start+1, ...;
        `mask` (True = attend) broadcasts to (batch, heads, length, keys). `caches` (one per
        block, rmt.decoding) hold the earlier positions' keys and values. `valid` (batch,
        length), True at x's real positions (None: all), keeps padding out of the experts."""
        cos, sin = self.rope(start + x.shape[1], x.device, x.dtype)
        rope = (cos[start:], sin[start:])
        delta = None
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            x, delta = block(x, delta, rope, mask, cache, valid)
        return self.final_norm(x, delta)[0]

    def forward_with_memory(
        self, memory: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory states (b, m, d), token states (b, s, d)): memory first, then the tokens.

        The runner's one call per segment; a wrapped Hugging Face encoder
        (`rmt.hf_encoder.HFEncoder`) places memory and special tokens its own way. A causal
        encoder reads the memory before the tokens and writes it after them (`_causal`).
        """
        if self.config.causal:
            return self._causal(memory, input_ids, mask)
        m = memory.shape[1]
        x = torch.cat([memory.to(self.embed_tokens.weight.dtype), self.embed(input_ids)], 1)
        key_mask = None if mask is None else torch.cat([mask.new_ones(mask.shape[0], m), mask], 1)
        h = self.forward_embeddings(x, key_mask)
        return h[:, :m], h[:, m:]

    def _causal(self, memory, input_ids, mask):
        """The decoder RMT's segment: [memory | tokens | memory] (both memory blocks the
        same input vectors) under `causal_mask`, padded tokens never seen; returns (the
        write block's outputs: the new memory, the token states). Rotary positions run
        0 .. 2m + S - 1 in that order."""
        m, s = memory.shape[1], input_ids.shape[1]
        memory = memory.to(self.embed_tokens.weight.dtype)
        x = torch.cat([memory, self.embed(input_ids), memory], 1)
        attend, keys = self.causal_mask(m, s, x.device), None
        if mask is not None and not bool(mask.all()):
            ones = mask.new_ones(mask.shape[0], m)
            keys = torch.cat([ones, mask, ones], 1)
            attend = attend & rearrange(keys, "b l -> b 1 1 l")
        h = self.run_blocks(x, attend, valid=keys)
        return h[:, m + s :], h[:, m : m + s]

    def max_segment_tokens(self, memory_tokens: int) -> int | None:
        """None: rotary positions put no bound on a segment's length."""
        return None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = attention_mask.bool() if attention_mask is not None else None
        if self.config.causal:  # a segment without memory
            empty = self.embed_tokens.weight.new_zeros(input_ids.shape[0], 0, self.config.d_model)
            return self._causal(empty, input_ids, mask)[1]
        return self.forward_embeddings(self.embed(input_ids), mask)
