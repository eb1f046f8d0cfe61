"""torch.compile for the memory runner: the encoder's per-segment call, compiled once.

The runner encodes a long sequence as many calls of `encoder.forward_with_memory` on
segments of one shape, so that call is what to compile: one graph serves every segment
of a stream (the loop over segments, memory handling and losses stay eager Python).
Shapes are static (`dynamic=False`: the fastest kernels, no shape guards to re-check),
so a segment shorter than `segment_tokens` (a sequence's tail) would compile a graph of
its own per length; those run eagerly instead, and recompilation never happens per
segment. Batch size and mask-or-none give at most a few graphs per run.

Inductor needs a C++ compiler on the CPU (and Triton on CUDA); where compiling fails
the runner logs why once and stays eager, so `compile: true` never stops a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


class CompiledSegments:
    """`encoder.forward_with_memory`, compiled for full-length segments, eager otherwise."""

    def __init__(self, eager: Callable, segment_tokens: int) -> None:
        self.eager = eager
        self.segment_tokens = segment_tokens
        self.compiled: Callable | None = torch.compile(eager, dynamic=False)

    def __call__(self, memory: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None):
        if self.compiled is None or input_ids.shape[1] != self.segment_tokens:
            return self.eager(memory, input_ids, mask)
        if mask is not None and bool(mask.all()):  # nothing padded: the graph without a mask
            mask = None
        # Segments are views of the whole sequence, strided by its length: contiguous
        # copies (a few KB) keep one graph for every sequence length.
        memory, input_ids = memory.contiguous(), input_ids.contiguous()
        mask = None if mask is None else mask.contiguous()
        try:
            return self.compiled(memory, input_ids, mask)
        except Exception as error:  # any compiler failure: stay eager
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            log.warning(
                "torch.compile failed (%s: %s); running eagerly: set compile=false to "
                "skip compiling", type(error).__name__, first_line[:300]
            )
            self.compiled = None
            return self.eager(memory, input_ids, mask)


def compile_runner(runner: nn.Module, enabled: bool = True) -> nn.Module:
    """Compile `runner`'s per-segment encoder call in place (a no-op when not `enabled`).

    Weights, state dicts and checkpoints are untouched: only the call is replaced, on
    this instance. Dropout draws from torch's own generator (inductor's
    `fallback_random`), so memory replay's recomputation repeats the forward's draws.
    """
    if not enabled or isinstance(runner.encoder.forward_with_memory, CompiledSegments):
        return runner
    torch._inductor.config.fallback_random = True
    eager = runner.encoder.forward_with_memory
    runner.encoder.forward_with_memory = CompiledSegments(eager, runner.segment_tokens)
    return runner


def is_compiled(runner: nn.Module) -> bool:
    """Whether `compile_runner` compiled this runner (and compiling has not failed)."""
    call = runner.encoder.forward_with_memory
    return isinstance(call, CompiledSegments) and call.compiled is not None


__all__ = ["CompiledSegments", "compile_runner", "is_compiled"]
