"""rmt-train: training of a recurrent-memory DNA encoder (a Hydra app).

    rmt-train                                   # tiny model, bundled E. coli, 1 -> 2 -> 4 segments
    rmt-train model=small memory.memory_tokens=16 trainer.max_steps=2000
    rmt-train -m memory.memory_tokens=4,8,16       # one run directory per job
    rmt-train experiment=memorize               # the long-range memorize task

The run directory gets `metrics.jsonl` (one line per logged step, evaluation and
curriculum transition), `checkpoints/` (safetensors + config + tokenizer + trainer
state) and the task's report (`eval.json` for MLM). Rerunning into an existing run
directory resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from curriculum import build_curriculum, step_plan
from data.tokenizers import DNATokenizer
from rmt.checkpoint import (
    build_runner,
    resolve_checkpoint,
    save_checkpoint,
    write_latest,
)
from rmt.cli import MetricsLog, autocast_dtype, pick_device, user_errors, write_json
from rmt.data_config import heldout_regions, make_genome, make_tokenizer
from rmt.encoder import EncoderConfig
from rmt.install import CONFIG_PATH
from rmt.runner import MemoryRunner
from rmt.strategy import (
    TrainModule,
    World,
    all_reduce_mean,
    barrier,
    init_world,
    local_device,
    make_strategy,
)
from rmt.sweep_summary import STATUS_FILE
from rmt.tasks import Task

log = logging.getLogger(__name__)


def make_runner(cfg: DictConfig, tokenizer: DNATokenizer) -> MemoryRunner:
    model = OmegaConf.to_container(cfg.model)
    encoder_config = EncoderConfig.from_dict({**model, "vocab_size": tokenizer.vocab_size})
    m = cfg.memory
    return build_runner(
        encoder_config,
        {
            "memory_tokens": m.memory_tokens,
            "segment_tokens": m.segment_tokens,
            "bptt_depth": m.bptt_depth,
            "backprop": m.backprop,
            "loss_on": m.loss_on,
        },
        kernels=cfg.kernels,
    )


def make_task(
    cfg: DictConfig, runner: MemoryRunner, tokenizer, genome, heldout, device, amp
) -> Task:
    """The configured task (`task.name`), built from the shared data objects."""
    t, name = cfg.trainer, cfg.task.name
    if name == "mlm":
        from rmt.tasks.mlm import MLMTask

        return MLMTask(
            genome, tokenizer, heldout, mask_prob=cfg.data.mask_prob, rc_prob=cfg.data.rc_prob,
            seed=cfg.seed, eval_batch_size=t.eval_batch_size, eval_max_tokens=t.eval_max_tokens,
            device=device, amp=amp,
        )  # fmt: skip
    if name == "memorize":
        from rmt.tasks.memorize import MemorizeTask

        options = {k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "name"}
        return MemorizeTask(
            runner, genome, tokenizer, heldout, seed=cfg.seed, device=device, amp=amp, **options
        )
    raise ValueError(f"task.name={name!r}; choose mlm or memorize")


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], t: DictConfig, max_steps: int):
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


def micro_batches(segments: int, segment_tokens: int, t: DictConfig, world: World) -> list[int]:
    """Global micro-batch sizes of one optimizer step: a constant token budget, or a fixed
    batch. Each micro-batch is shared by all ranks, so it needs a sample per rank."""
    if t.tokens_per_step is None:
        plan = [t.batch_size]
    else:
        plan = step_plan(segments, segment_tokens, t.tokens_per_step, t.micro_batch_tokens)
    if min(plan) < world.world_size:
        raise ValueError(
            f"a micro-batch of {min(plan)} samples at {segments} segments cannot feed "
            f"{world.world_size} ranks: raise trainer.tokens_per_step (or trainer.batch_size)"
        )
    return plan


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing everything into `run_dir`; returns the final metrics."""
    run_dir = Path(run_dir)
    t = cfg.trainer
    seed_everything(cfg.seed)  # the same model initialisation on every rank
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    world = init_world(device)
    device = local_device(t.device, world)
    amp = autocast_dtype(t.precision, device)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    heldout = heldout_regions(cfg.data)
    genome = make_genome(cfg.data, heldout)
    if world.is_main:
        tokenizer = make_tokenizer(cfg.tokenizer, genome, run_dir)
    barrier(world)  # other ranks load the tokenizer rank 0 trained
    if not world.is_main:
        tokenizer = make_tokenizer(cfg.tokenizer, genome, run_dir)
    runner = make_runner(cfg, tokenizer).to(device)
    task = make_task(cfg, runner, tokenizer, genome, heldout, device, amp).to(device)
    task.set_shard(world.rank, world.world_size)
    module = TrainModule(runner, task)
    curriculum = build_curriculum(OmegaConf.to_container(cfg.curriculum), seed=cfg.seed)
    max_steps = t.max_steps or curriculum.total_steps
    optimizer, lr_schedule = make_optimizer(list(module.named_parameters()), t, max_steps)
    strategy = make_strategy(module, optimizer, lr_schedule, t, world)

    checkpoints = run_dir / "checkpoints"
    initial_eval = None
    if t.resume and (checkpoints / "latest").is_file():
        latest = resolve_checkpoint(run_dir)
        state = torch.load(latest / "trainer_state.pt", weights_only=False)
        strategy.load(state, latest)
        curriculum.load_state_dict(state["curriculum"])
        task.load_data_state(state["data"])
        torch.set_rng_state(state["torch_rng"])
        initial_eval = state["initial_eval"]

    metrics = MetricsLog(run_dir / "metrics.jsonl") if world.is_main else None

    def record(entry: dict) -> None:
        if metrics is not None:
            metrics.write(entry)

    if initial_eval is None:
        initial_eval = task.evaluate(runner, curriculum.max_segments) or None
        if initial_eval:
            record({"step": 0, "split": "eval", **initial_eval})

    def save() -> None:
        name = f"step-{curriculum.step:08d}"
        with strategy.gathered():
            if world.is_main:
                trainer_state = {
                    "step": curriculum.step,
                    **strategy.state_dict(),
                    "curriculum": curriculum.state_dict(),
                    "task": task.state_dict(),
                    "data": task.data_state(),
                    "torch_rng": torch.get_rng_state(),
                    "initial_eval": initial_eval,
                    "config": OmegaConf.to_container(cfg, resolve=True),
                }
                meta = {"step": curriculum.step}
                save_checkpoint(checkpoints / name, runner, tokenizer, trainer_state, meta)
        barrier(world)
        strategy.save_sharded(checkpoints / name)
        barrier(world)
        if world.is_main:  # `latest` moves only once every rank's part is written
            write_latest(checkpoints, name, t.keep_checkpoints)

    runner.train()
    progress = tqdm(
        total=max_steps, initial=curriculum.step, disable=not (t.progress and world.is_main)
    )
    while curriculum.step < max_steps and not curriculum.done:
        segments = curriculum.sample_segments()
        plan = micro_batches(segments, runner.segment_tokens, t, world)
        start = time.perf_counter()
        loss, tokens, seg_losses = 0.0, 0, None
        for i, size in enumerate(plan):
            weight = size / sum(plan)
            part = strategy.micro_step(size, segments, weight, last=i == len(plan) - 1)
            loss += part.loss.item() * weight / world.world_size
            tokens += part.tokens
            if part.segment_losses is not None:
                share = np.asarray(part.segment_losses) * weight
                seg_losses = share if seg_losses is None else seg_losses + share
        grad_norm = strategy.step()
        elapsed = time.perf_counter() - start
        loss = all_reduce_mean(loss, world) * world.world_size
        tokens = round(all_reduce_mean(tokens, world) * world.world_size)
        stage = curriculum.stage
        transitions = [curriculum.step_done()]
        step = curriculum.step
        progress.update(1)
        progress.set_postfix(
            loss=f"{loss:.3f}", segments=segments, tok_s=f"{tokens / elapsed:,.0f}"
        )
        if step % t.log_every == 0 or step == max_steps:
            record({
                "step": step, "split": "train", "stage": stage, "segments": segments,
                "samples": sum(plan), "micro_batches": len(plan), "loss": loss,
                "segment_losses": None if seg_losses is None else seg_losses.tolist(),
                "tokens": tokens, "tokens_per_s": tokens / elapsed, "step_time_s": elapsed,
                "lr": strategy.lr, "grad_norm": grad_norm,
            })  # fmt: skip
        if step % t.eval_every == 0 and step < max_steps and not curriculum.done:
            result = task.evaluate(runner, curriculum.segments)
            record({"step": step, "split": "eval", **result})
            transitions.append(curriculum.observe(result))
        for transition in filter(None, transitions):
            record({"split": "curriculum", **transition})
            log.info("curriculum: %s", transition)
        if step % t.save_every == 0 or step == max_steps or curriculum.done:
            save()
    progress.close()

    result = {"steps": curriculum.step, **task.report(runner, run_dir, initial_eval)}
    record({"step": curriculum.step, "split": "final", **result})
    if metrics is not None:
        metrics.close()
    log.info("finished %d steps; results in %s: %s", curriculum.step, run_dir, result)
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict | float:
    """The Hydra task: returns the final metrics, or `objective`'s value for a sweeper."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors("rmt-train"):
        try:
            result = train(cfg, run_dir)
        except BaseException as err:
            write_json(
                run_dir / STATUS_FILE, {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            )
            raise
        write_json(run_dir / STATUS_FILE, {"status": "finished", **result})
        if cfg.objective is not None:
            if cfg.objective not in result:
                raise ValueError(
                    f"objective={cfg.objective!r} is not a final metric: {sorted(result)}"
                )
            return result[cfg.objective]
        return result


if __name__ == "__main__":
    main()
