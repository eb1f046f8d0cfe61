"""What one rmt-bench measurement is: a method at a number of segments, and its settings.

The method names are grouped by kind (inference or training) and by role (the RMT in
each backprop mode, the baselines it is compared with); `benchmarks.workloads` says what
each method runs. The default sweep leaves out the HF-encoder RMT (`HF_METHODS`): it
costs about what the BERT baseline costs again, and compares encoders, not methods; so
does lucidrains' RMT (`LUCI_METHODS`, `benchmarks.peers`): it needs a package of the
`bench` extra, and its LM head on every token makes its training points the costliest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rmt import EncoderConfig

RMT_TRAIN = {f"rmt_{mode}": mode for mode in ("full", "truncated", "replay", "checkpoint")}
HF_METHODS = ("hf_rmt_infer", "hf_rmt_train")  # the runner around a transformers BertModel
LUCI_METHODS = ("luci_infer", "luci_train", "luci_replay")  # lucidrains' RMT: benchmarks.peers
INFER_METHODS = (
    "rmt_infer", "naive_infer", "whole_infer", "bert_infer", "hf_rmt_infer", "luci_infer",
)  # fmt: skip
TRAIN_METHODS = (
    *RMT_TRAIN, "naive_train", "whole_train", "bert_train", "hf_rmt_train", "luci_train",
    "luci_replay",
)  # fmt: skip
METHODS = (*INFER_METHODS, *TRAIN_METHODS)
OPT_IN = (*HF_METHODS, *LUCI_METHODS)  # not in the default sweep
DEFAULT_METHODS = tuple(m for m in METHODS if m not in OPT_IN)  # conf/bench.yaml's
BASELINES = {
    "infer": tuple(m for m in INFER_METHODS if m != "rmt_infer"),
    "train": tuple(m for m in TRAIN_METHODS if m not in RMT_TRAIN),
}
OPTIMIZERS = ("adamw", "none")
# The toy model of `toy`: one step of it starts the runtime, and leaves ~nothing behind.
TOY_MODEL = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": None}


def kind(method: str) -> str:
    """`infer` or `train`."""
    return "infer" if method in INFER_METHODS else "train"


@dataclass(frozen=True)
class Point:
    """One measurement: a method at a number of segments, with everything it depends on."""

    method: str
    segments: int
    batch_size: int
    segment_tokens: int
    memory_tokens: int
    bptt_depth: int
    model: tuple  # EncoderConfig items (a tuple keeps the point hashable and picklable)
    kernels: str
    label_fraction: float
    device: str
    dtype: str
    threads: int | None
    warmup: int
    repeats: int
    min_time_s: float = 0.0
    seed: int = 0
    optimizer: str = "adamw"  # training steps: adamw | none (forward + backward only)
    toy_warmup: bool = False  # a `toy` step of the method before the point is built
    compile: bool = False  # torch.compile the encoder (the RMT's native encoder only)

    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(**dict(self.model))

    @property
    def content_tokens(self) -> int:
        return self.batch_size * self.segments * self.segment_tokens


def toy(point: Point) -> Point:
    """`point`'s method at a toy size, to run once before the point is built.

    One step starts what a process starts once (thread pools and their allocator arenas,
    lazily imported modules: ~20 MB on CPU), so the point's step peak does not count it;
    the toy's own tensors are freed before the point's baseline is read. Truncation gets
    k + 2 segments, so the toy takes the exact truncation sweep the point will take.
    """
    segments = point.bptt_depth + 2 if point.method == "rmt_truncated" else 2
    return replace(
        point,
        segments=max(2, segments),
        batch_size=1,
        segment_tokens=16,
        memory_tokens=2,
        model=tuple(sorted({**dict(point.model), **TOY_MODEL}.items())),
        toy_warmup=False,
    )
