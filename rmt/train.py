"""rmt-train: training of a recurrent-memory DNA encoder (a Hydra app).

    rmt-train                                   # tiny model, bundled E. coli, 1 -> 2 -> 4 segments
    rmt-train model=small memory.num_tokens=16 trainer.max_steps=2000
    rmt-train -m memory.num_tokens=4,8,16       # one run directory per job
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
from safetensors.torch import load_model as load_weights
from tqdm import tqdm

from curriculum import build_curriculum, step_plan
from data.tokenizers import DNATokenizer
from rmt.checkpoint import build_runner, resolve_checkpoint, save_checkpoint, write_latest
from rmt.cli import MetricsLog, autocast_dtype, pick_device, user_errors
from rmt.data_config import heldout_regions, make_genome, make_tokenizer
from rmt.encoder import EncoderConfig
from rmt.runner import MemoryRunner
from rmt.tasks import Task

log = logging.getLogger(__name__)


def make_runner(cfg: DictConfig, tokenizer: DNATokenizer) -> MemoryRunner:
    model = OmegaConf.to_container(cfg.model)
    encoder_config = EncoderConfig.from_dict(
        {**model, "vocab_size": tokenizer.vocab_size, "kernels": cfg.kernels}
    )
    m = cfg.memory
    return build_runner(
        encoder_config,
        {
            "num_memory_tokens": m.num_tokens,
            "segment_tokens": m.segment_tokens,
            "bptt_depth": m.bptt_depth,
            "backprop": m.backprop,
            "loss_on": m.loss_on,
        },
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
    decay = [p for n, p in params if p.ndim >= 2 and n != "memory"]
    no_decay = [p for n, p in params if p.ndim < 2 or n == "memory"]
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


def micro_batches(segments: int, segment_tokens: int, t: DictConfig) -> list[int]:
    """Micro-batch sizes of one optimizer step: a constant token budget, or a fixed batch."""
    if t.tokens_per_step is None:
        return [t.batch_size]
    return step_plan(segments, segment_tokens, t.tokens_per_step, t.micro_batch_tokens)


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing everything into `run_dir`; returns the final metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    seed_everything(cfg.seed)
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    amp = autocast_dtype(t.precision, device)

    heldout = heldout_regions(cfg.data)
    genome = make_genome(cfg.data, heldout)
    tokenizer = make_tokenizer(cfg.tokenizer, genome, run_dir)
    runner = make_runner(cfg, tokenizer).to(device)
    task = make_task(cfg, runner, tokenizer, genome, heldout, device, amp).to(device)
    curriculum = build_curriculum(OmegaConf.to_container(cfg.curriculum), seed=cfg.seed)
    max_steps = t.max_steps or curriculum.total_steps
    params = [*runner.named_parameters(), *(("task." + n, p) for n, p in task.named_parameters())]
    optimizer, lr_schedule = make_optimizer(params, t, max_steps)

    checkpoints = run_dir / "checkpoints"
    initial_eval = None
    if t.resume and (checkpoints / "latest").is_file():
        latest = resolve_checkpoint(run_dir)
        state = torch.load(latest / "trainer_state.pt", weights_only=False)
        load_weights(runner, str(latest / "model.safetensors"), device=str(device))
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        curriculum.load_state_dict(state["curriculum"])
        task.load_data_state(state["data"])
        torch.set_rng_state(state["torch_rng"])
        initial_eval = state["initial_eval"]

    metrics = MetricsLog(run_dir / "metrics.jsonl")
    if initial_eval is None:
        initial_eval = task.evaluate(runner, curriculum.max_segments) or None
        if initial_eval:
            metrics.write({"step": 0, "split": "eval", **initial_eval})

    def save() -> None:
        name = f"step-{curriculum.step:08d}"
        trainer_state = {
            "step": curriculum.step,
            "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "curriculum": curriculum.state_dict(),
            "task": task.state_dict(),
            "data": task.data_state(),
            "torch_rng": torch.get_rng_state(),
            "initial_eval": initial_eval,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        save_checkpoint(
            checkpoints / name, runner, tokenizer, trainer_state, {"step": curriculum.step}
        )
        write_latest(checkpoints, name, t.keep_checkpoints)

    runner.train()
    all_params = [p for _, p in params]
    progress = tqdm(total=max_steps, initial=curriculum.step, disable=not t.progress, desc="train")
    while curriculum.step < max_steps and not curriculum.done:
        segments = curriculum.sample_segments()
        plan = micro_batches(segments, runner.segment_tokens, t)
        start = time.perf_counter()
        loss, tokens, seg_losses = 0.0, 0, np.zeros(segments)
        for size in plan:
            part = task.step_loss(runner, size, segments)
            (part.loss * (size / sum(plan))).backward()
            loss += part.loss.item() * size / sum(plan)
            tokens += part.tokens
            if part.segment_losses is not None:
                seg_losses += np.asarray(part.segment_losses) * size / sum(plan)
        grad_norm = torch.nn.utils.clip_grad_norm_(all_params, t.grad_clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        stage = curriculum.stage
        transitions = [curriculum.step_done()]
        step = curriculum.step
        progress.update(1)
        progress.set_postfix(
            loss=f"{loss:.3f}", segments=segments, tok_s=f"{tokens / elapsed:,.0f}"
        )
        if step % t.log_every == 0 or step == max_steps:
            metrics.write({
                "step": step, "split": "train", "stage": stage, "segments": segments,
                "samples": sum(plan), "micro_batches": len(plan), "loss": loss,
                "segment_losses": seg_losses.tolist(), "tokens": tokens,
                "tokens_per_s": tokens / elapsed, "step_time_s": elapsed,
                "lr": lr_schedule.get_last_lr()[0], "grad_norm": float(grad_norm),
            })  # fmt: skip
        if step % t.eval_every == 0 and step < max_steps and not curriculum.done:
            result = task.evaluate(runner, curriculum.segments)
            metrics.write({"step": step, "split": "eval", **result})
            transitions.append(curriculum.observe(result))
        for transition in filter(None, transitions):
            metrics.write({"split": "curriculum", **transition})
            log.info("curriculum: %s", transition)
        if step % t.save_every == 0 or step == max_steps or curriculum.done:
            save()
    progress.close()

    result = {"steps": curriculum.step, **task.report(runner, run_dir, initial_eval)}
    metrics.write({"step": curriculum.step, "split": "final", **result})
    metrics.close()
    log.info("finished %d steps; results in %s: %s", curriculum.step, run_dir, result)
    return result


@hydra.main(config_path="pkg://conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors("rmt-train"):
        return train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
