"""Fused linear + cross-entropy for the MLM loss, in chunks of rows (Triton).

At a 32k vocabulary the logits of a segment dwarf everything else the encoder keeps:
8 x 528 tokens x 32768 x 4 bytes is 550 MB, twice over with their gradient. As in
Liger's FusedLinearCrossEntropy, the rows are processed in chunks: one chunk's logits
are computed with a matmul, a Triton kernel turns them in place into the loss and
the logits' gradient (softmax - one_hot, an online-softmax pass then a gradient pass),
and two more matmuls turn that into this chunk's gradients for the input, the weight
and the bias. All gradients are computed in the forward; the backward only scales
them by the incoming gradient. Peak memory holds one chunk of logits, not all of them.

Summed over rows (`reduction="sum"`), labels of -100 ignored, softmax in fp32.
Reference: `kernels.reference.linear_cross_entropy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import reference
from kernels.device import runs_triton


@triton.jit
def _cross_entropy(
    logits_ptr, row_stride, labels_ptr, loss_ptr, vocab, ignore_index,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    ptr = logits_ptr + row * row_stride
    label = tl.load(labels_ptr + row)
    cols = tl.arange(0, BLOCK)
    if label == ignore_index:
        if WRITE_GRAD:
            for start in range(0, vocab, BLOCK):
                tl.store(ptr + start + cols, 0.0, mask=start + cols < vocab)
        tl.store(loss_ptr + row, 0.0)
        return
    # Pass 1: running max and sum of exponentials (online softmax) -> logsumexp.
    m = float("-inf")
    d = 0.0
    for start in range(0, vocab, BLOCK):
        x = tl.load(ptr + start + cols, mask=start + cols < vocab, other=float("-inf"))
        x = x.to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    loss = lse - tl.load(ptr + label).to(tl.float32)
    # Pass 2: overwrite the logits with d loss / d logits = softmax - one_hot(label).
    if WRITE_GRAD:
        for start in range(0, vocab, BLOCK):
            idx = start + cols
            x = tl.load(ptr + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
            grad = tl.exp(x - lse)
            grad = tl.where(idx == label, grad - 1.0, grad)
            tl.store(ptr + idx, grad.to(logits_ptr.dtype.element_ty), mask=idx < vocab)
    tl.store(loss_ptr + row, loss)


def default_chunk_rows(rows: int, vocab: int, width: int) -> int:
    """Liger's rule: a chunk's logits about as large as the input rows; at least 64 rows
    so the matmuls stay efficient."""
    return max(64, triton.next_power_of_2(triton.cdiv(rows, triton.cdiv(vocab, width))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, labels, with_grad, chunk_rows):
        rows, vocab = x.shape[0], weight.shape[0]
        x, labels = x.contiguous(), labels.contiguous()
        losses = torch.empty(rows, dtype=torch.float32, device=x.device)
        if with_grad:
            grad_x = torch.empty_like(x)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device)
            grad_b = None
            if bias is not None:
                grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device)
        block = min(4096, triton.next_power_of_2(vocab))
        for start in range(0, rows, chunk_rows):
            xc = x[start : start + chunk_rows]
            logits = F.linear(xc, weight, bias)
            _cross_entropy[(xc.shape[0],)](
                logits, logits.stride(0), labels[start : start + chunk_rows],
                losses[start : start + chunk_rows], vocab, reference.IGNORE_INDEX,
                WRITE_GRAD=with_grad, BLOCK=block, num_warps=8,
            )  # fmt: skip
            if with_grad:  # `logits` now holds their gradient
                torch.mm(logits, weight, out=grad_x[start : start + chunk_rows])
                if grad_w.dtype == logits.dtype:
                    grad_w.addmm_(logits.t(), xc)
                else:  # accumulate narrow chunks in fp32
                    grad_w.add_(logits.t() @ xc)
                if grad_b is not None:
                    grad_b.add_(logits.sum(0, dtype=torch.float32))
        if with_grad:
            ctx.save_for_backward(
                grad_x,
                grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype),
            )
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        # Out of place: the runner's backward may run this node more than once.
        return (
            grad_x * grad_loss.to(grad_x.dtype),
            grad_w * grad_loss.to(grad_w.dtype),
            None if grad_b is None else grad_b * grad_loss.to(grad_b.dtype),
            None,
            None,
            None,
        )


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Triton `reference.linear_cross_entropy`, never holding more than one chunk of logits.

    Under autocast the matmuls run in the autocast dtype, as `F.linear` would.
    `chunk_rows` overrides `default_chunk_rows` (tests use it to cross chunk borders).
    """
    if not runs_triton(x):
        return reference.linear_cross_entropy(x, weight, bias, labels)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )
    chunk = chunk_rows or default_chunk_rows(x.shape[0], weight.shape[0], x.shape[1])
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(
            x.to(dtype),
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            labels,
            with_grad,
            chunk,
        )
