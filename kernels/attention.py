"""Attention for the fused backend: flash-attn's kernel where it applies, else torch SDPA.

flash-attn (the optional `gpu` extra) is used only when it imports, the tensors are on
CUDA in fp16/bf16 (as under autocast), the head size is one it supports, and there is
no padding mask (it takes no arbitrary mask; padded batches go to SDPA). It wants
(batch, length, heads, head_dim), which a transpose of the encoder's layout gives
without a copy. Not tested here: the test machines have no GPU.
"""

from __future__ import annotations

import torch

from kernels import reference

try:
    from flash_attn import flash_attn_func
except ImportError:  # the `gpu` extra is not installed
    flash_attn_func = None


def _flash_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> bool:
    return (
        flash_attn_func is not None
        and mask is None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.dtype == k.dtype == v.dtype
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
    )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """`reference.attention`, through flash-attn when `_flash_applies`."""
    if not _flash_applies(q, k, v, mask):
        return reference.attention(q, k, v, mask, dropout)
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout
    )
    return out.transpose(1, 2)
