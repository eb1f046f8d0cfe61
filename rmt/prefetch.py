"""Batches prepared ahead: one background thread builds the next step's data.

Data preparation (FASTA reads, tokenization, masking) runs on the CPU and touches no
parameters, so it can overlap the model's compute: while step s runs, the worker builds
step s+1's batches. HF tokenizers and torch release the GIL, and pyfaidx reads under
a lock, so a thread is enough (and `prepare` may run in two threads at once).

Every job is keyed by what it was prepared for (the step's plan). `get` hands out a
prepared result only for an equal key; a result prepared for another plan (the
curriculum changed it after an evaluation) is dropped and the right one built. Since a
batch is a pure function of its key, runs stay deterministic however the thread is
scheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Prefetcher(Generic[K, V]):
    """`submit(key)` starts `prepare(key)` in the background; `get(key)` returns it."""

    def __init__(self, prepare: Callable[[K], V]) -> None:
        self.prepare = prepare
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmt-prefetch")
        self._pending: tuple[K, Future] | None = None
        #: jobs whose key did not match when asked for (their result was dropped)
        self.misses = 0

    def submit(self, key: K | None) -> None:
        """Start preparing `key` (None: nothing to prepare)."""
        if key is not None:
            self._pending = (key, self._pool.submit(self.prepare, key))

    def get(self, key: K) -> tuple[V, float]:
        """The result for `key`, and the seconds this call waited for it."""
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            value = pending[1].result()
        else:
            if pending is not None:  # prepared for another plan: drop it
                self.misses += 1
                pending[1].cancel()
            value = self.prepare(key)
        return value, time.perf_counter() - start

    def close(self) -> None:
        """Stop the worker (a job in progress finishes; its result is dropped)."""
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[K, V]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
