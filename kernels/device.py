"""Where the Triton kernels run, and how wide their reductions launch.

Kept apart from the kernels so that `kernels/__init__.py` can answer these questions
without importing Triton.
"""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1): slow, fp32 only, for tests."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def runs_triton(tensor: torch.Tensor) -> bool:
    """Whether a kernel can take this tensor: CUDA tensors, or any tensor when interpreting.

    The Triton op table falls back to the torch reference elsewhere, so a model built with
    `kernels=auto` on a GPU machine still runs when moved to the CPU.
    """
    return tensor.is_cuda or interpreting()


def reduction_programs(rows: int, device: torch.device) -> int:
    """Programs for a row loop ending in per-program partial sums (weight gradients).

    A few per SM keeps every SM busy while the final `partial.sum(0)` stays tiny; the
    interpreter runs programs one after another, so it gets few.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, 4 * sms))
    return max(1, min(rows, 4))
