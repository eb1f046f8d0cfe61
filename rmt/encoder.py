"""The base encoder: a pre-norm bidirectional transformer over DNA tokens.

Deliberately plain (nanoGPT-sized): token embeddings, `n_layers` blocks of
RoPE self-attention + gated or plain MLP, a final norm. No absolute positions, so the
same weights serve any segment length and the memory runner can prepend memory states
as ordinary input vectors through `forward_embeddings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kernels import get_ops
from kernels.reference import rotary_tables

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
    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.n_heads, self.dropout, self.ops = config.n_heads, config.dropout, ops
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        q, k, v = rearrange(
            self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads
        )
        q, k = self.ops.apply_rotary(q, k, *rope)
        y = self.ops.attention(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.activation, self.ops = config.activation, ops
        gated = config.activation != "gelu"
        self.up = nn.Linear(config.d_model, (2 if gated else 1) * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        else:
            gate, up = h.chunk(2, dim=-1)
            h = getattr(self.ops, self.activation)(gate, up)
        return self.down(h)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)).

    Blocks pass (residual stream, last branch output) rather than their sum, so each add
    happens inside the next norm (fused on the Triton backend); same arithmetic either way.
    """

    def __init__(self, config: EncoderConfig, ops) -> None:
        super().__init__()
        self.norm1, self.attn = Norm(config, ops), Attention(config, ops)
        self.norm2, self.mlp = Norm(config, ops), MLP(config, ops)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, delta, rope, mask):
        """(stream, pending delta) -> (stream, pending delta); the stream is x + delta."""
        normed, x = self.norm1(x, delta)
        normed, x = self.norm2(x, self.drop(self.attn(normed, rope, mask)))
        return x, self.drop(self.mlp(normed))


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
        self.apply(self._init_weights)
        # Scale residual-branch outputs by depth (GPT-2) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
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

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward_embeddings(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the blocks on input vectors (batch, length, d); mask is True where valid."""
        mask = None
        if key_padding_mask is not None and not bool(key_padding_mask.all()):
            mask = rearrange(key_padding_mask, "b l -> b 1 1 l")
        rope = self.rope(x.shape[1], x.device, x.dtype)
        delta = None
        for block in self.blocks:
            x, delta = block(x, delta, rope, mask)
        return self.final_norm(x, delta)[0]

    def forward_with_memory(
        self, memory: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory states (b, m, d), token states (b, s, d)): memory first, then the tokens.

        The runner's one call per segment; a wrapped Hugging Face encoder
        (`rmt.hf_encoder.HFEncoder`) places memory and special tokens its own way.
        """
        m = memory.shape[1]
        x = torch.cat([memory.to(self.embed_tokens.weight.dtype), self.embed(input_ids)], 1)
        key_mask = None if mask is None else torch.cat([mask.new_ones(mask.shape[0], m), mask], 1)
        h = self.forward_embeddings(x, key_mask)
        return h[:, :m], h[:, m:]

    def max_segment_tokens(self, memory_tokens: int) -> int | None:
        """None: rotary positions put no bound on a segment's length."""
        return None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = attention_mask.bool() if attention_mask is not None else None
        return self.forward_embeddings(self.embed(input_ids), mask)
