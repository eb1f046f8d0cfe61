"""Fused-kernel seam for the encoder.

Every op the encoder's hot path uses has a pure-torch reference in `kernels.reference`.
`get_ops(backend)` returns the implementation the encoder calls, so Triton kernels can
slot in beside their references without the model code changing. The memory runner
never looks here: it only sees the encoder.

`backend` comes from the top-level config key `kernels`:
- `torch`: the references (any device);
- `triton`: fused Triton kernels (not implemented yet: asking for them is an error);
- `auto`: Triton on CUDA when it imports, torch otherwise.
"""

from __future__ import annotations

from types import SimpleNamespace

from kernels import reference

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(name: str) -> str:
    """Turn a configured backend name into the one that will run (`torch` or `triton`)."""
    if name not in BACKENDS:
        raise ValueError(f"kernels={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        raise ValueError(
            "kernels=triton: no Triton kernels ship in this version yet; "
            "use kernels=torch (or kernels=auto, which falls back to torch)"
        )
    return "torch"


def get_ops(name: str) -> SimpleNamespace:
    """The op table for a backend: rms_norm, layer_norm, swiglu, geglu, apply_rotary."""
    resolve_backend(name)
    return SimpleNamespace(
        rms_norm=reference.rms_norm,
        layer_norm=reference.layer_norm,
        swiglu=reference.swiglu,
        geglu=reference.geglu,
        apply_rotary=reference.apply_rotary,
    )


__all__ = ["BACKENDS", "get_ops", "reference", "resolve_backend"]
