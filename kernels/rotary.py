"""Rotary position embeddings for q and k in Triton, forward and backward.

torch's version splits each head in halves, multiplies, and concatenates: five
temporaries per tensor. This kernel rotates q and k in one launch, reading them in
place through their strides (they arrive as views of the fused qkv projection) and the
cos/sin tables once per block of positions. The backward is the same kernel rotating
by the opposite angle (the rotation's transpose). Half-split layout, as
`kernels.reference.apply_rotary`; math in fp32, outputs in q's and k's dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.device import runs_triton


@triton.jit
def _rotate_pair(in_ptr, out_ptr, in_off, out_off, cos, sin, mask, HALF: tl.constexpr):
    x1 = tl.load(in_ptr + in_off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(in_ptr + in_off + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_off, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(out_ptr + out_off + HALF, (x2 * cos + x1 * sin).to(dtype), mask=mask)


@triton.jit
def _rotary(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
    heads, length,
    q_sb, q_sh, q_sl, k_sb, k_sh, k_sl,
    HALF: tl.constexpr, INVERSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_H)
    mask = (pos[:, None] < length) & (cols[None, :] < HALF)
    table = pos[:, None] * HALF + cols[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
    if INVERSE:
        sin = -sin
    # Outputs are contiguous (batch, heads, length, 2 * HALF).
    out_off = ((b * heads + h) * length + pos[:, None]) * (2 * HALF) + cols[None, :]
    q_off = b * q_sb + h * q_sh + pos[:, None].to(tl.int64) * q_sl + cols[None, :]
    k_off = b * k_sb + h * k_sh + pos[:, None].to(tl.int64) * k_sl + cols[None, :]
    _rotate_pair(q_ptr, qo_ptr, q_off, out_off, cos, sin, mask, HALF)
    _rotate_pair(k_ptr, ko_ptr, k_off, out_off, cos, sin, mask, HALF)


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _rotate(q, k, cos, sin, inverse):
    q, k = _unit_stride(q), _unit_stride(k)
    batch, heads, length, dim = q.shape
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    block_l = 32
    grid = (batch * heads, triton.cdiv(length, block_l))
    _rotary[grid](
        q, k, q_out, k_out, cos, sin,
        heads, length,
        *q.stride()[:3], *k.stride()[:3],
        HALF=dim // 2, INVERSE=inverse, BLOCK_L=block_l,
        BLOCK_H=triton.next_power_of_2(dim // 2),
    )  # fmt: skip
    return q_out, k_out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        return _rotate(q, k, cos, sin, False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = _rotate(dq, dk, cos, sin, True)
        return dq, dk, None, None


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.apply_rotary` for q, k of shape (batch, heads, length, head_dim)."""
    if not runs_triton(q):
        return reference.apply_rotary(q, k, cos, sin)
    return _Rotary.apply(q, k, cos, sin)
