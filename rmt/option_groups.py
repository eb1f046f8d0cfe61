"""The config groups' schemas: one dataclass per node, field names = the YAML keys.

Types are checked by Hydra while it composes; `__post_init__` checks ranges and choices,
reusing the libraries' own checks (the model, the curriculum) where they exist, their
messages qualified with the section (`option_section`). Defaults live in the YAML files
under conf/ (`MISSING` here), so each key has one home. rmt/options.py assembles these
into the apps' root options and registers them with Hydra.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import MISSING

from curriculum import build_curriculum
from rmt.encoder import EncoderConfig
from rmt.hf_encoder import LAYOUTS, check_hf_dir
from rmt.markov import MarkovModel
from rmt.option_errors import at_least, check, fraction, option_section
from rmt.runner import BACKPROP_MODES, LOSS_ON

#: ModelOptions' keys that wrap a Hugging Face encoder rather than shape this project's
HF_FIELDS = ("hf", "layout", "attn_implementation", "trust_remote_code")


def check_hf_path(key: str, path: str) -> None:
    """`key` names a local Hugging Face model directory, or one line naming the key."""
    try:
        check_hf_dir(Path(path))
    except ValueError as err:
        check(False, key, path, f"is not a Hugging Face encoder: {err}")


def check_layout(key: str, layout: str) -> None:
    check(layout in LAYOUTS, key, layout,
          f"is not a layout; choose one of {', '.join(LAYOUTS)}")  # fmt: skip


@dataclass
class HFOptions:
    """How a local Hugging Face encoder directory given as `checkpoint` is wrapped
    (rmt.hf_encoder): rmt-finetune's and rmt-infer's `hf` node. Ignored for this
    project's checkpoints, which record how they were wrapped."""

    layout: str = "cls_mem_sep"
    attn_implementation: str | None = None  # null: the model's default (sdpa, eager, ...)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_layout("hf.layout", self.layout)


@dataclass
class ModelOptions:
    """The encoder (conf/model/): `EncoderConfig`'s shape without the tokenizer's vocab,
    or, with `hf` set, a local Hugging Face encoder directory to continue from (GENA-LM,
    BERT, ...): then its own config gives the shape and the shape keys are ignored.

    The `HF_FIELDS` have defaults here rather than in conf/model/*.yaml, because
    rmt-bench composes those files too and hands them to `EncoderConfig` as they are.
    """

    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    d_ff: int | None = MISSING
    activation: str = MISSING
    norm: str = MISSING
    norm_eps: float = MISSING
    rope_base: float = MISSING
    dropout: float = MISSING
    init_std: float = MISSING
    hf: str | None = None  # a local HF model directory (config.json, weights, tokenizer.json)
    layout: str = "cls_mem_sep"  # where memory and [CLS]/[SEP] go (rmt.hf_encoder.LAYOUTS)
    attn_implementation: str | None = None  # the HF model's attention (sdpa, eager, ...)
    trust_remote_code: bool = False  # run the model code in `hf` (custom architectures)
    causal: bool = False  # a decoder: next-base prediction (task=clm), rmt-generate
    # Grouped-query attention and experts (rmt.encoder.EncoderConfig's fields and
    # defaults, so the model files that do not use them need not list them).
    n_kv_heads: int | None = None  # null: n_heads (multi-head attention)
    n_experts: int = 0  # 0: dense MLPs
    moe_top_k: int = 2
    moe_d_ff: int | None = None  # null: d_ff
    moe_capacity_factor: float | None = None  # null: dropless
    moe_aux_weight: float = 0.01
    moe_z_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.hf is not None:
            check_hf_path("model.hf", self.hf)
        check_layout("model.layout", self.layout)
        for key in ("d_model", "n_layers", "n_heads", "d_ff"):
            at_least(f"model.{key}", getattr(self, key), 1)
        for key in ("norm_eps", "rope_base", "init_std"):
            check(getattr(self, key) > 0, f"model.{key}", getattr(self, key), "must be > 0")
        fraction("model.dropout", self.dropout, closed=False)
        with option_section("model", self):
            EncoderConfig(**self.encoder_fields())  # choices and head split, in its words

    def encoder_fields(self) -> dict:
        """The shape keys: `EncoderConfig`'s fields (without `vocab_size`)."""
        return {k: v for k, v in asdict(self).items() if k not in HF_FIELDS}


@dataclass
class MemoryOptions:
    """The recurrent memory (conf/memory/): the runner's keyword arguments."""

    memory_tokens: int = MISSING
    segment_tokens: int = MISSING
    bptt_depth: int = MISSING
    backprop: str = MISSING
    loss_on: str = MISSING

    def __post_init__(self) -> None:
        at_least("memory.memory_tokens", self.memory_tokens, 0)
        at_least("memory.segment_tokens", self.segment_tokens, 1)
        check(self.bptt_depth >= -1, "memory.bptt_depth", self.bptt_depth,
              "must be -1 (full BPTT) or a depth k >= 0")  # fmt: skip
        check(self.backprop in BACKPROP_MODES, "memory.backprop", self.backprop,
              f"is not a mode; choose one of {', '.join(BACKPROP_MODES)}")  # fmt: skip
        check(self.loss_on in LOSS_ON, "memory.loss_on", self.loss_on,
              f"is not a choice; choose one of {', '.join(LOSS_ON)}")  # fmt: skip
        check(self.backprop != "truncated" or self.bptt_depth >= 0, "memory.backprop",
              self.backprop, "needs a depth: set memory.bptt_depth to k >= 0")  # fmt: skip


@dataclass
class DataOptions:
    """Genomes and sampling (conf/data/), shared by rmt-train and rmt-tokenizer."""

    fasta: list[str] = MISSING
    weights: list[float] | None = MISSING
    record_weights: dict[str, float] | None = MISSING
    eval_regions: list[str] | None = MISSING
    eval_fraction: float = MISSING
    exclude: list[str] = MISSING
    max_n_fraction: float = MISSING
    rc_prob: float = MISSING
    mask_prob: float = MISSING
    cache_dir: str | None = MISSING

    def __post_init__(self) -> None:
        fraction("data.eval_fraction", self.eval_fraction, closed=False)
        for key in ("max_n_fraction", "rc_prob"):
            fraction(f"data.{key}", getattr(self, key))
        check(0 < self.mask_prob < 1, "data.mask_prob", self.mask_prob, "must be in (0, 1)")


@dataclass
class TokenizerOptions:
    """rmt-train's tokenizer: a file, "nucleotide", or a BPE trained into the run."""

    path: str | None = MISSING
    vocab_size: int = MISSING
    max_bp: int | None = MISSING

    def __post_init__(self) -> None:
        at_least("tokenizer.vocab_size", self.vocab_size, 1)
        at_least("tokenizer.max_bp", self.max_bp, 1)


@dataclass
class MLMTaskOptions:
    """conf/task/mlm.yaml: masked-LM pre-training."""

    name: str = MISSING

    def __post_init__(self) -> None:
        check(self.name == "mlm", "task.name", self.name, "does not match task=mlm; use task=mlm")


@dataclass
class CLMTaskOptions:
    """conf/task/clm.yaml: next-base prediction with a causal model (model.causal=true)."""

    name: str = MISSING
    markov_orders: list[int] = MISSING

    def __post_init__(self) -> None:
        check(self.name == "clm", "task.name", self.name, "does not match task=clm; use task=clm")
        for order in self.markov_orders:
            try:
                MarkovModel(order)
            except ValueError as err:
                check(False, "task.markov_orders", self.markov_orders, f"cannot hold it: {err}")


@dataclass
class MemorizeTaskOptions:
    """conf/task/memorize.yaml: which planted barcode was in segment 1?"""

    name: str = MISSING
    classes: int = MISSING
    barcode_bp: int = MISSING
    eval_samples: int = MISSING
    report_samples: int = MISSING
    report_segments: list[int] = MISSING

    def __post_init__(self) -> None:
        check(self.name == "memorize", "task.name", self.name,
              "does not match task=memorize; use task=memorize")  # fmt: skip
        check(self.classes >= 2, "task.classes", self.classes, "must be >= 2")
        for key in ("barcode_bp", "eval_samples", "report_samples"):
            at_least(f"task.{key}", getattr(self, key), 1)
        segments = self.report_segments
        check(bool(segments) and min(segments) >= 1, "task.report_segments", segments,
              "must list segment counts >= 1")  # fmt: skip


@dataclass
class _CurriculumOptions:
    """Shared check of the three policies' schemas: the library builds it once, here."""

    def __post_init__(self) -> None:
        policy = self.policy  # type: ignore[attr-defined]
        check(policy == self.POLICY, "curriculum.policy", policy,  # type: ignore[attr-defined]
              "does not fit this schedule's keys: pick the schedule with curriculum=short "
              "(fixed), curriculum=doubling or curriculum=threshold")  # fmt: skip
        with option_section("curriculum", self):
            build_curriculum(asdict(self))


@dataclass
class FixedCurriculumOptions(_CurriculumOptions):
    """conf/curriculum/short.yaml: explicit stages, each run for its `steps`."""

    POLICY = "fixed"
    policy: str = MISSING
    stages: list[dict[str, int]] = MISSING
    mix_fraction: float = MISSING


@dataclass
class DoublingCurriculumOptions(_CurriculumOptions):
    """conf/curriculum/doubling.yaml: start, 2 start, ... up to max_segments."""

    POLICY = "doubling"
    policy: str = MISSING
    max_segments: int = MISSING
    steps_per_stage: int = MISSING
    start: int = MISSING
    mix_fraction: float = MISSING


@dataclass
class ThresholdCurriculumOptions(_CurriculumOptions):
    """conf/curriculum/threshold.yaml: advance when an evaluation metric reaches target."""

    POLICY = "threshold"
    policy: str = MISSING
    metric: str = MISSING
    target: float = MISSING
    higher_is_better: bool = MISSING
    stages: list[dict[str, int]] = MISSING
    mix_fraction: float = MISSING
