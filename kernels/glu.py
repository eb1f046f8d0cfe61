"""SwiGLU and GeGLU (tanh GELU) in Triton, forward and backward.

The MLP's up-projection is one matmul whose output is split in two halves, `gate` and
`up`. Unfused, torch writes act(gate), then the product, and the backward re-reads
both halves several times. These kernels read the halves in place (they are strided
views of one tensor, never copied), write the product once, and the backward writes
both gradients in one pass, recomputing the activation instead of storing it.

Math in fp32 whatever the storage dtype. Reference: `kernels.reference.swiglu/geglu`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.device import runs_triton

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GELU_CUBIC = tl.constexpr(0.044715)


@triton.jit
def _activation(g, GELU: tl.constexpr):
    """(act(g), act'(g)) in fp32: silu, or gelu with the tanh approximation."""
    if GELU:
        inner = SQRT_2_OVER_PI * (g + GELU_CUBIC * g * g * g)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # tanh, from a primitive every backend has
        act = 0.5 * g * (1.0 + t)
        dact = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * SQRT_2_OVER_PI * (
            1.0 + 3.0 * GELU_CUBIC * g * g
        )
    else:
        sig = tl.sigmoid(g)
        act = g * sig
        dact = sig * (1.0 + g * (1.0 - sig))
    return act, dact


@triton.jit
def _glu_fwd(
    g_ptr, u_ptr, out_ptr, width, g_stride, u_stride, GELU: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    g = tl.load(g_ptr + row * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * u_stride + cols, mask=mask, other=0.0).to(tl.float32)
    act, _ = _activation(g, GELU)
    tl.store(out_ptr + row * width + cols, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _glu_bwd(
    dout_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, width, g_stride, u_stride,
    GELU: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    dout = tl.load(dout_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * u_stride + cols, mask=mask, other=0.0).to(tl.float32)
    act, dact = _activation(g, GELU)
    tl.store(dg_ptr + row * width + cols, (dout * u * dact).to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + row * width + cols, (dout * act).to(du_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., width) as a (rows, width) view with unit column stride (copy only if needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _grid(rows: int, width: int) -> tuple[tuple[int, int], int]:
    block = min(1024, triton.next_power_of_2(width))
    return (rows, triton.cdiv(width, block)), block


class _GLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, gelu):
        g2, u2 = _rows(gate), _rows(up)
        rows, width = g2.shape
        out = torch.empty(
            (rows, width), dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device
        )
        grid, block = _grid(rows, width)
        _glu_fwd[grid](g2, u2, out, width, g2.stride(0), u2.stride(0), GELU=gelu, BLOCK=block)
        ctx.save_for_backward(g2, u2)
        ctx.gelu, ctx.shape = gelu, gate.shape
        return out.view(gate.shape)

    @staticmethod
    def backward(ctx, dout):
        g2, u2 = ctx.saved_tensors
        rows, width = g2.shape
        dout2 = dout.reshape(rows, width).contiguous()
        dg = torch.empty((rows, width), dtype=g2.dtype, device=g2.device)
        du = torch.empty((rows, width), dtype=u2.dtype, device=u2.device)
        grid, block = _grid(rows, width)
        _glu_bwd[grid](
            dout2, g2, u2, dg, du, width, g2.stride(0), u2.stride(0), GELU=ctx.gelu, BLOCK=block
        )
        return dg.view(ctx.shape), du.view(ctx.shape), None


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton `reference.swiglu`: silu(gate) * up."""
    if not runs_triton(gate):
        return reference.swiglu(gate, up)
    return _GLU.apply(gate, up, False)


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton `reference.geglu`: gelu_tanh(gate) * up."""
    if not runs_triton(gate):
        return reference.geglu(gate, up)
    return _GLU.apply(gate, up, True)
