"""rmt-train: training of a recurrent-memory DNA encoder (a Hydra app).

    rmt-train                                   # tiny model, bundled E. coli, 1 -> 2 -> 4 segments
    rmt-train model=small memory.memory_tokens=16 trainer.max_steps=2000
    rmt-train -m memory.memory_tokens=4,8,16       # one run directory per job
    rmt-train experiment=memorize               # the long-range memorize task
    rmt-train task=clm model.causal=true        # next-base prediction (then rmt-generate)
    rmt-train model.hf=/path/to/gena-lm         # continue a local Hugging Face encoder

options -> `build` (the run's parts) -> `rmt.loop.TrainLoop` (plan, data ahead,
optimise, log, evaluate, save). The run directory gets `metrics.jsonl` and
`tensorboard/` (one record per logged step, evaluation and curriculum transition),
`checkpoints/` (safetensors + config + tokenizer + trainer state) and the task's report
(`eval.json` for MLM). Rerunning into an existing run directory resumes from its latest
checkpoint. The run directory is locked while a run writes into it (`rmt.lock`): a second
rmt-train into it stops at once, naming the first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from curriculum import Curriculum, build_curriculum
from data.tokenizers import DNATokenizer
from rmt.best import BestCheckpoint
from rmt.checkpoint import build_runner
from rmt.cli import autocast_dtype, user_errors
from rmt.compile import compile_runner
from rmt.data_config import heldout_regions, make_genome, make_tokenizer
from rmt.encoder import EncoderConfig
from rmt.hf_runner import hf_runner
from rmt.install import CONFIG_PATH
from rmt.lock import RunLock
from rmt.loop import TrainLoop
from rmt.metrics import MetricsSink
from rmt.option_errors import option_section
from rmt.options import MemoryOptions, TrainerOptions, TrainOptions, train_options
from rmt.runner import MemoryRunner
from rmt.state import Checkpointer, TorchRNG, TrainState, Values
from rmt.strategy import (
    DeepSpeedStrategy,
    LocalStrategy,
    TrainModule,
    World,
    barrier,
    init_world,
    make_strategy,
)
from rmt.sweep_summary import run_job
from rmt.tasks import Task

log = logging.getLogger(__name__)


def make_runner(cfg: TrainOptions, tokenizer: DNATokenizer) -> MemoryRunner:
    """This project's encoder in the configured shape, or the HF encoder in `model.hf`."""
    model, memory = cfg.model, asdict(cfg.memory)
    if model.hf is None:
        shape = {**model.encoder_fields(), "vocab_size": tokenizer.vocab_size}
        return build_runner(EncoderConfig.from_dict(shape), memory, kernels=cfg.kernels)
    log.info("continuing from the Hugging Face encoder in %s (model.hf)", model.hf)
    with option_section("memory", MemoryOptions):  # a segment too long for its positions
        return hf_runner(
            model.hf, tokenizer, memory, model.layout, model.attn_implementation,
            model.trust_remote_code, kernels=cfg.kernels,
        )  # fmt: skip


def check_causal(cfg: TrainOptions) -> None:
    """Refuse a task the model's attention does not fit: next-base prediction needs a
    causal model, and masked-LM a bidirectional one (its masked tokens need the context
    on both sides)."""
    name, model = cfg.task.name, cfg.model
    if model.hf is not None and (name == "clm" or model.causal):
        raise ValueError(
            f"task={name} with model.causal={model.causal} needs this project's causal "
            f"encoder, and model.hf={model.hf} is a bidirectional Hugging Face encoder: drop "
            "model.hf (and set model.causal=true for task=clm)"
        )
    if name == "clm" and not model.causal:
        raise ValueError(
            "task=clm (next-base prediction) needs a causal model, and model.causal=false: "
            "set model.causal=true"
        )
    if name == "mlm" and model.causal:
        raise ValueError(
            "model.causal=true cannot learn task=mlm (a token would not see the context "
            "after it): use task=clm, or drop model.causal"
        )


def make_task(
    cfg: TrainOptions, runner: MemoryRunner, tokenizer, genome, heldout, device, amp
) -> Task:
    """The configured task (`task.name`), built from the shared data objects."""
    t, name = cfg.trainer, cfg.task.name
    if name == "clm":
        from rmt.tasks.clm import CLMTask

        return CLMTask(
            genome, tokenizer, heldout, markov_orders=cfg.task.markov_orders,
            segment_tokens=runner.segment_tokens, loss_on=runner.loss_on,
            rc_prob=cfg.data.rc_prob, seed=cfg.seed, eval_batch_size=t.eval_batch_size,
            eval_max_tokens=t.eval_max_tokens, device=device, amp=amp, memory_gain=t.memory_gain,
        )  # fmt: skip
    if name == "mlm":
        from rmt.tasks.mlm import MLMTask

        return MLMTask(
            genome, tokenizer, heldout, segment_tokens=runner.segment_tokens,
            loss_on=runner.loss_on, mask_prob=cfg.data.mask_prob, rc_prob=cfg.data.rc_prob,
            seed=cfg.seed, eval_batch_size=t.eval_batch_size, eval_max_tokens=t.eval_max_tokens,
            device=device, amp=amp, memory_gain=t.memory_gain,
        )  # fmt: skip
    if name == "memorize":
        from rmt.tasks.memorize import MemorizeTask

        options = {k: v for k, v in asdict(cfg.task).items() if k != "name"}
        return MemorizeTask(
            runner, genome, tokenizer, heldout, seed=cfg.seed, device=device, amp=amp, **options
        )
    raise ValueError(f"task.name={name!r}; choose mlm, clm or memorize")


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], t: TrainerOptions, max_steps: int):
    """AdamW (no decay on norms, biases and memory) with linear warm-up and cosine decay."""
    decay = [p for n, p in params if p.ndim >= 2 and not n.endswith("runner.memory.weight")]
    no_decay = [p for n, p in params if p.ndim < 2 or n.endswith("runner.memory.weight")]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=tuple(t.betas),
    )

    def lr_factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, max_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything a training run is made of, built once from the options (`build`)."""

    run_dir: Path
    trainer: TrainerOptions
    world: World
    runner: MemoryRunner
    task: Task
    curriculum: Curriculum
    strategy: LocalStrategy | DeepSpeedStrategy
    max_steps: int | None  # None: the curriculum's end
    values: Values
    checkpointer: Checkpointer
    sink: MetricsSink


def shared_tokenizer(cfg: TrainOptions, genome, run_dir: Path, world: World) -> DNATokenizer:
    """Rank 0 trains (or loads) the tokenizer into the run directory; the others load it."""
    hf, trained = cfg.model.hf, run_dir / "tokenizer.json"
    if world.is_main and cfg.tokenizer.path is None and hf is None and not trained.is_file():
        log.info("training a %d-token BPE on the training sequence (tokenizer.path=null; "
                 "once per run) ...", cfg.tokenizer.vocab_size)  # fmt: skip
    tokenizer = make_tokenizer(cfg.tokenizer, genome, run_dir, hf) if world.is_main else None
    barrier(world)
    return make_tokenizer(cfg.tokenizer, genome, run_dir, hf) if tokenizer is None else tokenizer


def start_run(seed: int, t: TrainerOptions, run_dir: Path) -> tuple[World, torch.dtype | None]:
    """Seed (the same initialisation on every rank), threads, the process group, the
    autocast dtype, the run directory: how every training app starts."""
    seed_everything(seed)
    if t.threads:
        torch.set_num_threads(t.threads)
    world = init_world(t.device)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return world, autocast_dtype(t.precision, world.device)


def build(cfg: TrainOptions, run_dir: Path) -> Run:
    """The run's parts, restored from the run directory's latest checkpoint if it has one."""
    t = cfg.trainer
    check_causal(cfg)
    world, amp = start_run(cfg.seed, t, run_dir)
    started = time.perf_counter()
    log.info("reading %s (a first run decompresses and indexes it) ...", ", ".join(cfg.data.fasta))
    heldout = heldout_regions(cfg.data)
    genome = make_genome(cfg.data, heldout)
    tokenizer = shared_tokenizer(cfg, genome, run_dir, world)
    log.info("data and tokenizer ready (%.1f s)", time.perf_counter() - started)
    runner = make_runner(cfg, tokenizer).to(world.device)
    task = make_task(cfg, runner, tokenizer, genome, heldout, world.device, amp).to(world.device)
    curriculum = build_curriculum(asdict(cfg.curriculum), seed=cfg.seed)
    return assemble(run_dir, t, world, runner, task, tokenizer, curriculum, asdict(cfg))


def assemble(
    run_dir: Path, t: TrainerOptions, world: World, runner: MemoryRunner, task: Task,
    tokenizer: DNATokenizer, curriculum: Curriculum, config: dict,
    best: BestCheckpoint | None = None,
) -> Run:  # fmt: skip
    """A run around a built runner and task (shared by rmt-train and rmt-finetune):
    optimizer over the trainable parameters (frozen ones are left out), strategy, state
    registry, checkpoints (`best`: also keep the best by a validation metric), metrics;
    restored from the run directory's latest checkpoint if it has one."""
    module = TrainModule(compile_runner(runner, t.compile), task)
    planned = t.max_steps or curriculum.total_steps
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    optimizer, lr_schedule = make_optimizer(trainable, t, planned)
    strategy = make_strategy(module, optimizer, lr_schedule, t, world)
    values = Values(initial_eval=None, skipped_steps=0)
    state = TrainState(strategy=strategy, curriculum=curriculum, rng=TorchRNG(), run=values)
    checkpointer = Checkpointer(
        run_dir, state, strategy, runner, tokenizer, world, t.keep_checkpoints, config, best
    )
    restored = checkpointer.restore() if t.resume else None
    sink = MetricsSink(
        run_dir, enabled=world.is_main, tensorboard=t.tensorboard, wandb=t.wandb,
        config=config, resume_step=curriculum.step if restored else None,
    )  # fmt: skip
    return Run(
        run_dir, t, world, runner, task, curriculum, strategy, t.max_steps, values,
        checkpointer, sink,
    )  # fmt: skip


def run_lock(run_dir: Path, program: str = "rmt-train") -> contextlib.AbstractContextManager:
    """The run directory's lock, taken by the launcher's rank 0 (the only writer of most
    files; the other ranks of the same run must not be refused)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return RunLock(run_dir, program)


def train(cfg: TrainOptions, run_dir: str | Path, *, lock: bool = True) -> dict:
    """Train as configured, writing everything into `run_dir`; returns the final metrics.

    `lock=False` when the caller holds the run directory's lock already (`main`).
    """
    return run_to_end(Path(run_dir), "rmt-train", lambda: build(cfg, Path(run_dir)), lock)


def run_to_end(run_dir: Path, program: str, make_run: Callable[[], Run], lock: bool) -> dict:
    """Build the run (under the run directory's lock unless the caller holds it) and
    train it to the end; the final metrics. rmt-train's and rmt-finetune's one loop."""
    with run_lock(run_dir, program) if lock else contextlib.nullcontext():
        run = make_run()
        try:
            return TrainLoop(run).run_to_end()
        finally:
            run.sink.close()


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict | float:
    """The Hydra task: returns the final metrics, or `objective`'s value for a sweeper."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("run directory: %s", run_dir)
    # The lock first: a refused second process must not even write status.json there.
    with user_errors("rmt-train"), run_lock(run_dir):
        # train_options stays inside the job, so a bad value is recorded in status.json too.
        job = lambda: train(train_options(cfg), run_dir, lock=False)  # noqa: E731
        result = run_job(job, run_dir, "rmt-train")
        if result is None:  # a failed job of a multirun: recorded, and the sweep goes on
            return float("nan") if cfg.objective is not None else None
        if cfg.objective is not None:
            if cfg.objective not in result:
                raise ValueError(
                    f"objective={cfg.objective!r} is not a final metric: {sorted(result)}"
                )
            return result[cfg.objective]
        return result


if __name__ == "__main__":
    from rmt.entry import run_app  # config mistakes: one line, exit 2, as rmt-train

    run_app(main, "rmt-train")
