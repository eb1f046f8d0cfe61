"""Typed options of rmt-finetune (conf/finetune.yaml), registered with Hydra on import.

Field names are the YAML keys, as for rmt-train (rmt/options.py), whose trainer and
curriculum schemas are reused as they are; `data` is the data package's own
`DatasetOptions`. The model's shape, memory size and tokenizer come from the pre-trained
checkpoint, so `memory` only holds what fine-tuning may change (null: as pre-trained);
`checkpoint` may also be a bare Hugging Face encoder directory, wrapped as `hf` says.

    options = finetune_options(cfg)   # in rmt-finetune's main(), once
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from data.labelled.options import DatasetOptions
from kernels import BACKENDS
from rmt.heads import HEADS, POOLS
from rmt.option_errors import at_least, check, to_options
from rmt.option_groups import HFOptions
from rmt.options import CURRICULA, TrainerOptions
from rmt.runner import BACKPROP_MODES

#: the scalar metrics of each task kind (rmt.finetune_metrics), what `best_metric` may name
METRICS = {
    "sequence_classification": ("loss", "accuracy", "mcc", "f1_macro", "auroc", "auprc"),
    "sequence_regression": ("pearson", "spearman", "r2", "mse"),
    "token_classification": ("loss", "accuracy", "mcc", "f1_macro"),
}
#: metrics where smaller is better (every other one: larger is better)
LOWER_IS_BETTER = frozenset({"loss", "mse"})
KINDS = tuple(METRICS)
#: the metric that picks the best checkpoint when `best_metric` is null
DEFAULT_BEST = {
    "sequence_classification": "mcc",
    "sequence_regression": "pearson",
    "token_classification": "f1_macro",
}
#: none | encoder: the encoder's weights | all_but_memory_head: every weight but the
#: learned memory and the task head (the same set as `encoder` while the runner has no
#: other weights of its own) | all: every weight but the task head's (a probe)
FREEZE = ("none", "encoder", "all_but_memory_head", "all")


@dataclass
class FinetuneTaskOptions:
    """What to fine-tune for, and the task head put on the runner (`runner.task_head`)."""

    kind: str = MISSING
    # Sequence heads read the final memory (memory), the mean of the last segment's
    # hidden states (mean), or both concatenated; token heads ignore it.
    pool: str = MISSING
    # The head's network: mlp (LayerNorm, dense, GELU, projection) or linear (one
    # projection of the pooled vector or token state: with freeze=all, a linear probe).
    head: str = MISSING

    def __post_init__(self) -> None:
        check(self.kind in KINDS, "task.kind", self.kind,
              f"is not a fine-tuning task; choose one of {', '.join(KINDS)}")  # fmt: skip
        check(self.pool in POOLS, "task.pool", self.pool,
              f"is not a pooling; choose one of {', '.join(POOLS)}")  # fmt: skip
        check(self.head in HEADS, "task.head", self.head,
              f"is not a task head; choose one of {', '.join(HEADS)}")  # fmt: skip


@dataclass
class FinetuneMemoryOptions:
    """What fine-tuning may change of the pre-trained runner's memory; null keeps it.

    A bare Hugging Face encoder (`checkpoint` = its directory) was pre-trained without
    memory, so there null means: `memory_tokens` as rmt-train's default
    (conf/memory/default.yaml), `segment_tokens` the longest segment its positions hold
    beside the memory and special tokens, the rest the runner's defaults.
    """

    memory_tokens: int | None = MISSING
    backprop: str | None = MISSING
    bptt_depth: int | None = MISSING
    segment_tokens: int | None = MISSING

    def __post_init__(self) -> None:
        at_least("memory.memory_tokens", self.memory_tokens, 0)
        modes = ", ".join(BACKPROP_MODES)
        check(self.backprop is None or self.backprop in BACKPROP_MODES, "memory.backprop",
              self.backprop, f"is not a mode; choose one of {modes}")  # fmt: skip
        check(self.bptt_depth is None or self.bptt_depth >= -1, "memory.bptt_depth",
              self.bptt_depth, "must be -1 (full BPTT) or a depth k >= 0")  # fmt: skip
        at_least("memory.segment_tokens", self.segment_tokens, 1)


@dataclass
class EvalOptions:
    """Validation and test evaluation."""

    # Longer valid/test sequences are cropped to their first max_segments segments
    # (null: whole sequences, however long).
    max_segments: int | None = MISSING

    def __post_init__(self) -> None:
        at_least("eval.max_segments", self.max_segments, 1)


@dataclass
class FinetuneOptions:
    """conf/finetune.yaml: everything rmt-finetune reads."""

    checkpoint: str = MISSING
    task: Any = MISSING  # a FinetuneTaskOptions, chosen by the task group (task=<kind>)
    best_metric: str | None = MISSING
    freeze: str = MISSING
    seed: int = MISSING
    kernels: str = MISSING
    data: DatasetOptions = MISSING
    memory: FinetuneMemoryOptions = MISSING
    hf: HFOptions = MISSING  # how a bare Hugging Face encoder directory is wrapped
    eval: EvalOptions = MISSING
    curriculum: Any = MISSING  # one of rmt-train's CURRICULA schemas
    trainer: TrainerOptions = MISSING

    def __post_init__(self) -> None:
        if not isinstance(self.task, FinetuneTaskOptions):
            raise ValueError(
                f"task={self.task.name} is an rmt-train task; rmt-finetune's are task="
                f"{' | '.join(KINDS)} (conf/task/)"
            )
        kind, metrics = self.task.kind, METRICS[self.task.kind]
        check(self.best_metric is None or self.best_metric in metrics, "best_metric",
              self.best_metric, f"is not a {kind} metric; choose one of "
              f"{', '.join(metrics)} (or null: {DEFAULT_BEST[kind]})")  # fmt: skip
        check(self.freeze in FREEZE, "freeze", self.freeze,
              f"is not a choice; choose one of {', '.join(FREEZE)}")  # fmt: skip
        at_least("seed", self.seed, 0)
        check(self.kernels in BACKENDS, "kernels", self.kernels,
              f"is not a backend; choose one of {', '.join(BACKENDS)}")  # fmt: skip
        if not isinstance(self.curriculum, tuple(CURRICULA.values())):
            raise ValueError(
                "curriculum has no schema: a file in conf/curriculum/ must list "
                f"/schema/curriculum/<name>@_here_ first in its defaults ({', '.join(CURRICULA)})"
            )

    @property
    def metric(self) -> str:
        """The validation metric that picks the best checkpoint."""
        return self.best_metric or DEFAULT_BEST[self.task.kind]

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


def finetune_options(cfg: DictConfig) -> FinetuneOptions:
    """rmt-finetune's composed config as options; a bad value is a one-line ValueError."""
    return to_options(cfg, FinetuneOptions, "finetune_schema")


ConfigStore.instance().store(name="finetune_schema", node=FinetuneOptions)
# conf/task/<kind>.yaml (the `task` group rmt-train's tasks live in too) list this first.
ConfigStore.instance().store(group="schema/task", name="finetune", node=FinetuneTaskOptions)
