"""Typed options of rmt-train and rmt-tokenizer, registered with Hydra on import.

Field names are the YAML keys, so `options.trainer.lr` is `trainer.lr` on the command
line, and engine code gets these objects, never a DictConfig. conf/train.yaml and
conf/tokenizer.yaml list their schema (`train_schema`, `tokenizer_schema`) first in
their defaults; task and curriculum files list their own (`/schema/task/mlm@_here_`),
because their keys differ per option. `hydra.*` is Hydra's own node, outside the schema,
so launchers and sweepers are unaffected.

    options = train_options(cfg)            # in the app's main(), once
    with option_section("data", DataOptions):
        genome = Genome(...)                # a library error, in config keys
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from kernels import BACKENDS
from rmt.option_errors import at_least, check, option_section, to_options
from rmt.option_groups import (
    CLMTaskOptions,
    DataOptions,
    DoublingCurriculumOptions,
    FixedCurriculumOptions,
    MemorizeTaskOptions,
    MemoryOptions,
    MLMTaskOptions,
    ModelOptions,
    ThresholdCurriculumOptions,
    TokenizerOptions,
)

# The group schemas are re-exported: engine code imports every options type from here.
__all__ = ["BPEOptions", "CLMTaskOptions", "DataOptions", "DoublingCurriculumOptions",
           "FixedCurriculumOptions", "MLMTaskOptions", "MemorizeTaskOptions", "MemoryOptions",
           "ModelOptions", "ThresholdCurriculumOptions", "TokenizerAppOptions", "TokenizerOptions",
           "TrainOptions", "TrainerOptions", "option_section", "tokenizer_options",
           "train_options"]  # fmt: skip

PRECISIONS = ("auto", "fp32", "bf16")
ON_NONFINITE = ("stop", "skip")
STRATEGIES = ("single", "ddp", "deepspeed")
TASKS = {"mlm": MLMTaskOptions, "clm": CLMTaskOptions, "memorize": MemorizeTaskOptions}
CURRICULA = {
    "fixed": FixedCurriculumOptions,
    "doubling": DoublingCurriculumOptions,
    "threshold": ThresholdCurriculumOptions,
}


@dataclass
class TrainerOptions:
    """Optimisation, schedule, logging and checkpoints (conf/trainer/)."""

    strategy: str = MISSING
    zero_stage: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    threads: int | None = MISSING
    max_steps: int | None = MISSING
    tokens_per_step: int | None = MISSING
    micro_batch_tokens: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    min_lr_ratio: float = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    grad_clip: float = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_max_tokens: int | None = MISSING
    eval_batch_size: int = MISSING
    save_every: int = MISSING
    keep_checkpoints: int = MISSING
    resume: bool = MISSING
    progress: bool = MISSING
    tensorboard: bool = True
    wandb: str | None = None
    on_nonfinite: str = MISSING
    max_skipped_steps: int = MISSING
    # Score every evaluation again with the memory reset per segment (rmt.evaluate).
    memory_gain: bool = True
    compile: bool = False  # torch.compile the per-segment encoder call (rmt.compile)

    def __post_init__(self) -> None:
        self._check_strategy()
        self._check_nonfinite()
        check(self.max_steps is None or self.max_steps >= 1, "trainer.max_steps", self.max_steps,
              "must be >= 1 (that many steps), or null (the curriculum's total)")  # fmt: skip
        for key in ("threads", "tokens_per_step", "micro_batch_tokens",
                    "batch_size", "log_every", "eval_every", "eval_max_tokens",
                    "eval_batch_size", "save_every", "keep_checkpoints"):  # fmt: skip
            at_least(f"trainer.{key}", getattr(self, key), 1)
        for key in ("warmup_steps", "weight_decay"):
            at_least(f"trainer.{key}", getattr(self, key), 0)
        for key in ("lr", "grad_clip"):
            check(getattr(self, key) > 0, f"trainer.{key}", getattr(self, key), "must be > 0")
        check(0 <= self.min_lr_ratio <= 1, "trainer.min_lr_ratio", self.min_lr_ratio,
              "must be in [0, 1]")  # fmt: skip
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "trainer.betas",
              self.betas, "must be two numbers in [0, 1), e.g. [0.9, 0.98]")  # fmt: skip

    def _check_nonfinite(self) -> None:
        check(self.on_nonfinite in ON_NONFINITE, "trainer.on_nonfinite", self.on_nonfinite,
              f"is not a policy; choose one of {', '.join(ON_NONFINITE)}")  # fmt: skip
        at_least("trainer.max_skipped_steps", self.max_skipped_steps, 0)
        check(self.on_nonfinite == "stop" or self.strategy != "deepspeed", "trainer.on_nonfinite",
              self.on_nonfinite, "needs trainer.strategy single or ddp (DeepSpeed applies every "
              "update): use trainer.on_nonfinite=stop")  # fmt: skip

    def _check_strategy(self) -> None:
        check(self.strategy in STRATEGIES, "trainer.strategy", self.strategy,
              f"is not a strategy; choose one of {', '.join(STRATEGIES)}")  # fmt: skip
        stages = (1, 2, 3) if self.strategy == "deepspeed" else (0,)
        check(self.zero_stage in stages, "trainer.zero_stage", self.zero_stage,
              f"does not fit trainer.strategy={self.strategy} (it takes {stages}); for ZeRO "
              "use trainer=deepspeed_zero1, deepspeed_zero2 or deepspeed_zero3")  # fmt: skip
        check(not (self.compile and self.strategy == "deepspeed"), "trainer.compile",
              self.compile, "is not supported with trainer.strategy=deepspeed (its engine "
              "wraps the model's forward itself): use trainer.compile=false")  # fmt: skip
        check(self.precision in PRECISIONS, "trainer.precision", self.precision,
              f"is not a precision; choose one of {', '.join(PRECISIONS)}")  # fmt: skip
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                check(False, "trainer.device", self.device, "is not a device; use auto, cpu, "
                      "cuda or cuda:N")  # fmt: skip


@dataclass
class TrainOptions:
    """conf/train.yaml: everything rmt-train reads."""

    seed: int = MISSING
    objective: str | None = MISSING
    kernels: str = MISSING
    tokenizer: TokenizerOptions = MISSING
    task: Any = MISSING  # one of TASKS' schemas, chosen by the task group
    model: ModelOptions = MISSING
    memory: MemoryOptions = MISSING
    data: DataOptions = MISSING
    curriculum: Any = MISSING  # one of CURRICULA's schemas
    trainer: TrainerOptions = MISSING

    def __post_init__(self) -> None:
        at_least("seed", self.seed, 0)
        check(self.kernels in BACKENDS, "kernels", self.kernels,
              f"is not a backend; choose one of {', '.join(BACKENDS)}")  # fmt: skip
        kind = getattr(self.task, "kind", None)
        if kind is not None:  # conf/task/ also holds rmt-finetune's tasks
            raise ValueError(
                f"task={kind} is a fine-tuning task: run it with rmt-finetune; rmt-train's "
                f"tasks are {', '.join(TASKS)}"
            )
        for section, schemas in (("task", TASKS), ("curriculum", CURRICULA)):
            if not isinstance(getattr(self, section), tuple(schemas.values())):
                raise ValueError(
                    f"{section} has no schema: a file in conf/{section}/ must list "
                    f"/schema/{section}/<name>@_here_ first in its defaults ({', '.join(schemas)})"
                )


@dataclass
class BPEOptions:
    """rmt-tokenizer's `tokenizer` node: what to train and where to write it."""

    vocab_size: int = MISSING
    out: str = MISSING
    max_bp: int | None = MISSING

    def __post_init__(self) -> None:
        at_least("tokenizer.vocab_size", self.vocab_size, 1)
        at_least("tokenizer.max_bp", self.max_bp, 1)


@dataclass
class TokenizerAppOptions:
    """conf/tokenizer.yaml: everything rmt-tokenizer reads."""

    data: DataOptions = MISSING
    tokenizer: BPEOptions = MISSING


def train_options(cfg: DictConfig) -> TrainOptions:
    """rmt-train's composed config as options; a bad value is a one-line ValueError."""
    return to_options(cfg, TrainOptions, "train_schema")


def tokenizer_options(cfg: DictConfig) -> TokenizerAppOptions:
    """rmt-tokenizer's composed config as options."""
    return to_options(cfg, TokenizerAppOptions, "tokenizer_schema")


def _register() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainOptions)
    store.store(name="tokenizer_schema", node=TokenizerAppOptions)
    for name, schema in TASKS.items():
        store.store(group="schema/task", name=name, node=schema)
    for name, schema in CURRICULA.items():
        store.store(group="schema/curriculum", name=name, node=schema)


_register()
