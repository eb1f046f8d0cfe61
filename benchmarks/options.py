"""Typed options of rmt-bench: one dataclass per node of conf/bench.yaml, fields = keys.

`BenchOptions` is registered in Hydra's ConfigStore as `bench_schema`, which bench.yaml
lists first in its defaults, so a misspelt key or a wrong type fails when Hydra composes
the config; `rmt-bench`'s `main()` converts it once (`OmegaConf.to_object`) and the
harness takes these objects, never a DictConfig. `__post_init__` rejects values the
harness could not measure, naming the key and the fix (`rmt.option_errors.check`).

The `model` node stays a plain mapping here: its keys are `rmt.EncoderConfig`'s, which
checks them itself (with `model.` in its messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from benchmarks.points import DEFAULT_METHODS, METHODS, OPTIMIZERS
from kernels import BACKENDS
from rmt.option_errors import check

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, value, f"is not one of: {', '.join(choices)}")


@dataclass
class Segments:
    """Segment counts per kind of method (conf/bench.yaml `segments`)."""

    infer: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    train: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])

    def __post_init__(self) -> None:
        for name in ("infer", "train"):
            counts = list(getattr(self, name))
            ok = bool(counts) and min(counts) >= 1
            check(ok, f"segments.{name}", counts, "must list segment counts, each >= 1")


@dataclass
class BenchOptions:
    """conf/bench.yaml: what rmt-bench measures, at which sizes, and when it stops."""

    model: Any = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    segments: Segments = field(default_factory=Segments)
    batch_size: int = 4
    segment_tokens: int = 128
    memory_tokens: int = 8
    bptt_depth: int = 4
    vocab_size: int = 32000
    label_fraction: float = 0.15
    optimizer: str = "adamw"
    toy_warmup: bool = False
    warmup: int = 1
    repeats: int = 3
    min_time_s: float = 2.0
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    seed: int = 0
    kernels: str = "auto"
    compile: bool = False
    max_gb: float = 16.0
    max_point_s: float = 300.0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: {unknown} unknown; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError(f"methods=[]: name at least one of {', '.join(METHODS)}")
        for key in ("batch_size", "segment_tokens", "repeats", "vocab_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        for key in ("memory_tokens", "bptt_depth", "warmup", "min_time_s"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        for key in ("max_gb", "max_point_s"):
            check(getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        threads = self.threads
        check(threads is None or threads >= 1, "threads", threads, "must be >= 1 (or null)")
        fraction = self.label_fraction
        check(0 < fraction <= 1, "label_fraction", fraction, "must be in (0, 1]")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("kernels", self.kernels, BACKENDS)


ConfigStore.instance().store(name="bench_schema", node=BenchOptions)
