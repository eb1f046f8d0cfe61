"""Pure-torch reference implementations of the encoder's fusable ops.

These are the ground truth that any fused kernel is tested against, and the
implementation used on every device where no kernel applies. Signatures are the
contract a kernel must keep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.masking import IGNORE_INDEX  # labels are the data's: one definition, there


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, x * rsqrt(mean(x^2) + eps) * weight, computed in at
    least fp32 and cast back: torch's fused op, one pass instead of five elementwise ops."""
    xf = x.float() if x.element_size() < 4 else x
    return F.rms_norm(xf, (x.shape[-1],), weight.to(xf.dtype), eps).to(x.dtype)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-norm step: residual stream `x` (+ a block's output `delta`), then RMSNorm.

    Returns (normed, new residual stream); with `delta=None` the stream is `x` itself.
    """
    residual = x if delta is None else x + delta
    return rms_norm(residual, weight, eps), residual


def add_layer_norm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`add_rms_norm` with LayerNorm (optional bias)."""
    residual = x if delta is None else x + delta
    return layer_norm(residual, weight, bias, eps), residual


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: silu(gate) * up."""
    return F.silu(gate) * up


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """GeGLU activation: gelu(gate, tanh approximation) * up."""
    return F.gelu(gate, approximate="tanh") * up


def rotary_tables(
    length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim // 2) for positions 0..length-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (batch, heads, length, head_dim) by position (half-split layout).

    Position i of the sequence is rotated by angle i * inv_freq; the encoder decides
    what the positions are (memory tokens take the first positions of each segment).
    """

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    return rotate(q), rotate(k)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """Bidirectional attention over (batch, heads, length, head_dim); mask True = attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of `x @ weight.T + bias` against `labels` (-100 ignored).

    Materializes all (rows, vocab) logits; cast to fp32 before the softmax when narrower.
    """
    logits = F.linear(x, weight, bias)
    return F.cross_entropy(
        logits.float() if logits.element_size() < 4 else logits,
        labels,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
