"""Give freed CPU heap pages back to the operating system (glibc's `malloc_trim`).

A backward sweep allocates and frees each segment's activations and gradients; on the
CPU, glibc serves them from its heap, and the few long-lived tensors allocated between
them keep the heap's freed pages resident. Peak memory then creeps up with the number
of segments although the live tensors do not. Trimming every few segments
(`rmt.runner_sweep.TRIM_EVERY`) returns those pages for a small share of step time; the
effect is measured by `rmt-bench bench_experiment=backprop_memory` and `rmt-bench`
(`rmt_replay`). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


def release_free_heap() -> None:
    """Return the C heap's free pages to the OS, where the C library can."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
