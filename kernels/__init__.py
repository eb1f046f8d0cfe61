"""Fused-kernel seam for the encoder and the MLM loss.

Every op the hot path uses has a pure-torch reference in `kernels.reference`, and a
Triton kernel (forward and backward, an autograd.Function) in a module of its own:
`add_norm` (residual add + RMSNorm/LayerNorm), `glu` (SwiGLU, GeGLU), `rotary` (RoPE on
q and k), `cross_entropy` (chunked linear + cross-entropy), plus `attention`
(flash-attn when installed, else SDPA). `get_ops(backend)` returns one table or the
other, so the model code never changes; the memory runner never looks here.

`backend` comes from the top-level config key `kernels`:
- `torch`: the references (any device);
- `triton`: the Triton kernels; on CUDA, or on the CPU under Triton's interpreter
  (TRITON_INTERPRET=1, for tests);
- `auto`: Triton on CUDA when it imports, torch otherwise.

The Triton modules are imported only when the Triton table is asked for: TRITON_INTERPRET
is read when a kernel is defined, and torch-only installs need no Triton at all.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import SimpleNamespace

import torch

from kernels import reference
from kernels.device import interpreting

BACKENDS = ("auto", "torch", "triton")
# Every op of the table and the module of its Triton version (the torch one is in
# `kernels.reference` under the same name).
TRITON_MODULES = {
    "add_rms_norm": "add_norm",
    "add_layer_norm": "add_norm",
    "swiglu": "glu",
    "geglu": "glu",
    "apply_rotary": "rotary",
    "attention": "attention",
    "linear_cross_entropy": "cross_entropy",
}


@cache
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """Turn a configured backend name into the one that will run (`torch` or `triton`)."""
    if name not in BACKENDS:
        raise ValueError(f"kernels={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "triton" if torch.cuda.is_available() and _triton_imports() else "torch"
    if name == "triton" and not _triton_imports():
        raise ValueError(
            "kernels=triton: the triton package is not installed; "
            "pip install 'rmt-dna[triton]', or use kernels=torch"
        )
    if name == "triton" and not torch.cuda.is_available() and not interpreting():
        raise ValueError(
            "kernels=triton needs a CUDA GPU; on the CPU the kernels run only under "
            "Triton's interpreter (set TRITON_INTERPRET=1 before starting, slow, for "
            "tests): use kernels=torch or kernels=auto here"
        )
    return name


def get_ops(name: str) -> SimpleNamespace:
    """The op table for a backend: add_rms_norm, add_layer_norm, swiglu, geglu,
    apply_rotary, attention, linear_cross_entropy (signatures as in `kernels.reference`)."""
    if resolve_backend(name) == "torch":
        return SimpleNamespace(**{op: getattr(reference, op) for op in TRITON_MODULES})
    return SimpleNamespace(
        **{
            op: getattr(importlib.import_module(f"kernels.{module}"), op)
            for op, module in TRITON_MODULES.items()
        }
    )


__all__ = ["BACKENDS", "get_ops", "reference", "resolve_backend"]
