"""Fused residual add + RMSNorm / LayerNorm in Triton, forward and backward.

A pre-norm block reads the residual stream twice per sub-layer (add the branch output,
then normalize the sum). Fusing them reads `x` and `delta` once, writes the new stream
and the normed rows in the same pass, and the backward folds the stream's own gradient
into the norm's. Weight (and bias) gradients are reduced the way Liger and Unsloth do:
each program sums its rows into one partial row, then a `sum(0)` over a few hundred
partial rows finishes the reduction (no atomics, deterministic).

Statistics are computed in fp32 whatever the storage dtype. Reference:
`kernels.reference.add_rms_norm` / `add_layer_norm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.device import reduction_programs, runs_triton


@triton.jit
def _add_norm_fwd(
    x_ptr, delta_ptr, res_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr,
    D, eps,
    HAS_DELTA: tl.constexpr, HAS_BIAS: tl.constexpr, IS_RMS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    s = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        s += tl.load(delta_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        # Normalize the stream as stored, so normed and stream agree in narrow dtypes.
        stored = s.to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * D + cols, stored, mask=mask)
        s = stored.to(tl.float32)
    if not IS_RMS:
        mean = tl.sum(s, axis=0) / D
        s = tl.where(mask, s - mean, 0.0)
        tl.store(mean_ptr + row, mean)
    rstd = tl.rsqrt(tl.sum(s * s, axis=0) / D + eps)
    tl.store(rstd_ptr + row, rstd)
    y = s * rstd * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_norm_bwd(
    dy_ptr, dres_ptr, res_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
    n_rows, D,
    HAS_DRES: tl.constexpr, HAS_BIAS: tl.constexpr, IS_RMS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for row in range(pid, n_rows, tl.num_programs(0)):
        s = tl.load(res_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        xhat = s * rstd
        if not IS_RMS:
            xhat = tl.where(mask, (s - tl.load(mean_ptr + row)) * rstd, 0.0)
        dy = tl.load(dy_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        dw += dy * xhat
        if IS_RMS:
            ds = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / D))
        else:
            ds = rstd * (g - tl.sum(g, axis=0) / D - xhat * (tl.sum(g * xhat, axis=0) / D))
        if HAS_BIAS:
            db += dy
        if HAS_DRES:
            ds += tl.load(dres_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * D + cols, ds.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * D + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(db_ptr + pid * D + cols, db, mask=mask)


def _launch_options(width: int) -> tuple[int, int]:
    """(BLOCK, num_warps): one program holds a whole row."""
    block = triton.next_power_of_2(width)
    return block, 4 if block <= 1024 else 8 if block <= 4096 else 16


class _AddNorm(torch.autograd.Function):
    """Returns `normed` when delta is None, else (normed, new residual stream)."""

    @staticmethod
    def forward(ctx, x, delta, weight, bias, eps, is_rms):
        shape, width = x.shape, x.shape[-1]
        x2 = x.reshape(-1, width).contiguous()
        rows = x2.shape[0]
        dtype = x.dtype if delta is None else torch.promote_types(x.dtype, delta.dtype)
        if delta is None:
            delta2, residual = x2, x2
        else:
            delta2 = delta.reshape(-1, width).contiguous()
            residual = torch.empty((rows, width), dtype=dtype, device=x.device)
        y = torch.empty((rows, width), dtype=dtype, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        mean = rstd if is_rms else torch.empty_like(rstd)
        block, warps = _launch_options(width)
        _add_norm_fwd[(rows,)](
            x2, delta2, residual, y, weight, weight if bias is None else bias, mean, rstd,
            width, eps,
            HAS_DELTA=delta is not None, HAS_BIAS=bias is not None, IS_RMS=is_rms,
            BLOCK=block, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(residual, weight, bias, mean, rstd)
        ctx.is_rms, ctx.shape = is_rms, shape
        ctx.dtypes = (x.dtype, None if delta is None else delta.dtype)
        ctx.set_materialize_grads(False)
        y = y.view(shape)
        return y if delta is None else (y, residual.view(shape))

    @staticmethod
    def backward(ctx, dy, dres=None):
        residual, weight, bias, mean, rstd = ctx.saved_tensors
        rows, width = residual.shape
        if dy is None:  # only the stream was used downstream
            dy = torch.zeros(ctx.shape, dtype=residual.dtype, device=residual.device)
        dy2 = dy.reshape(-1, width).contiguous()
        dres2 = dy2 if dres is None else dres.reshape(-1, width).contiguous()
        dx = torch.empty_like(residual)
        programs = reduction_programs(rows, residual.device)
        dw = torch.empty((programs, width), dtype=torch.float32, device=residual.device)
        db = dw if bias is None else torch.empty_like(dw)
        block, warps = _launch_options(width)
        _add_norm_bwd[(programs,)](
            dy2, dres2, residual, weight, mean, rstd, dx, dw, db,
            rows, width,
            HAS_DRES=dres is not None, HAS_BIAS=bias is not None, IS_RMS=ctx.is_rms,
            BLOCK=block, num_warps=warps,
        )  # fmt: skip
        dx = dx.view(ctx.shape)
        x_dtype, delta_dtype = ctx.dtypes
        grad_bias = None if bias is None else db.sum(0).to(bias.dtype)
        return (
            dx.to(x_dtype),
            None if delta_dtype is None else dx.to(delta_dtype),
            dw.sum(0).to(weight.dtype),
            grad_bias,
            None,
            None,
        )


def _add_norm(x, delta, weight, bias, eps, is_rms):
    out = _AddNorm.apply(x, delta, weight, bias, eps, is_rms)
    return (out, x) if delta is None else out


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.add_rms_norm`: (normed, new residual stream)."""
    if not runs_triton(x):
        return reference.add_rms_norm(x, delta, weight, eps)
    return _add_norm(x, delta, weight, None, eps, True)


def add_layer_norm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.add_layer_norm`: (normed, new residual stream)."""
    if not runs_triton(x):
        return reference.add_layer_norm(x, delta, weight, bias, eps)
    return _add_norm(x, delta, weight, bias, eps, False)
