"""rmt-train: masked-LM training of a recurrent-memory DNA encoder (a Hydra app).

    rmt-train                                   # tiny model, bundled E. coli, 1 -> 2 -> 4 segments
    rmt-train model=small memory.num_tokens=16 trainer.max_steps=2000
    rmt-train -m memory.num_tokens=4,8,16       # one run directory per job

The run directory gets `metrics.jsonl` (one line per logged step and evaluation),
`checkpoints/` (safetensors + config + tokenizer + trainer state) and `eval.json`
(held-out MLM loss and accuracy before and after training). Rerunning into an
existing run directory resumes from its latest checkpoint.
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

from curriculum import Schedule, build_schedule
from data import MLMBatches
from data.tokenizers import DNATokenizer
from rmt.checkpoint import build_runner, resolve_checkpoint, save_checkpoint, write_latest
from rmt.cli import MetricsLog, autocast_dtype, pick_device, user_errors, write_json
from rmt.data_config import heldout_regions, make_genome, make_tokenizer
from rmt.encoder import EncoderConfig
from rmt.evaluate import evaluate, unigram_log_probs
from rmt.runner import MemoryRunner

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


def make_optimizer(runner: MemoryRunner, t: DictConfig, max_steps: int):
    """AdamW (no decay on norms, biases and memory) with linear warm-up and cosine decay."""
    decay = [p for n, p in runner.named_parameters() if p.ndim >= 2 and n != "memory"]
    no_decay = [p for n, p in runner.named_parameters() if p.ndim < 2 or n == "memory"]
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
    schedule: Schedule = build_schedule(OmegaConf.to_container(cfg.curriculum))
    max_steps = t.max_steps or schedule.total_steps
    optimizer, lr_schedule = make_optimizer(runner, t, max_steps)
    batches = MLMBatches(
        genome, tokenizer, mask_prob=cfg.data.mask_prob, rc_prob=cfg.data.rc_prob, seed=cfg.seed
    )
    eval_batches = MLMBatches(
        genome, tokenizer, mask_prob=cfg.data.mask_prob, bp_per_token=batches.bp_per_token
    )
    eval_segments = schedule.max_segments
    unigram = unigram_log_probs(tokenizer, genome) if heldout else None

    def run_eval() -> dict:
        return evaluate(
            runner,
            eval_batches,
            heldout,
            eval_segments,
            t.eval_batch_size,
            t.eval_max_tokens,
            device,
            amp,
            unigram,
        )

    checkpoints = run_dir / "checkpoints"
    step, initial_eval = 0, None
    if t.resume and (checkpoints / "latest").is_file():
        latest = resolve_checkpoint(run_dir)
        state = torch.load(latest / "trainer_state.pt", weights_only=False)
        load_weights(runner, str(latest / "model.safetensors"), device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        step, initial_eval = state["step"], state["initial_eval"]

    metrics = MetricsLog(run_dir / "metrics.jsonl")
    if initial_eval is None and heldout:
        initial_eval = run_eval()
        metrics.write({"step": 0, "split": "eval", **initial_eval})

    def save() -> None:
        name = f"step-{step:08d}"
        trainer_state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "batches": batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "initial_eval": initial_eval,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        save_checkpoint(checkpoints / name, runner, tokenizer, trainer_state, {"step": step})
        write_latest(checkpoints, name, t.keep_checkpoints)

    runner.train()
    last_eval = None
    progress = tqdm(
        total=max_steps, initial=step, disable=not t.progress, desc="train", unit="step"
    )
    while step < max_steps:
        stage = schedule.stage_index(step)
        segments = schedule.stages[stage].segments
        batch = batches.sample(t.batch_size, segments * runner.segment_tokens)
        ids, mask, labels = (
            x.to(device) for x in (batch.input_ids, batch.attention_mask, batch.labels)
        )
        start = time.perf_counter()
        with torch.autocast(device.type, amp, enabled=amp is not None):
            out = runner(ids, mask, labels)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(runner.parameters(), t.grad_clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        step += 1
        loss = out.loss.item()
        tokens_per_s = float(mask.sum()) / elapsed
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", segments=segments, tok_s=f"{tokens_per_s:,.0f}")
        if step % t.log_every == 0 or step == max_steps:
            metrics.write(
                {
                    "step": step,
                    "split": "train",
                    "stage": stage,
                    "segments": segments,
                    "loss": loss,
                    "segment_losses": out.segment_losses.tolist(),
                    "tokens_per_s": tokens_per_s,
                    "step_time_s": elapsed,
                    "lr": lr_schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                }
            )
        if heldout and (step % t.eval_every == 0 or step == max_steps):
            last_eval = (step, run_eval())
            metrics.write({"step": step, "split": "eval", **last_eval[1]})
        if step % t.save_every == 0 or step == max_steps:
            save()
    progress.close()

    result = {"steps": step}
    if heldout:
        final_eval = last_eval[1] if last_eval and last_eval[0] == step else run_eval()
        result.update({"eval_loss": final_eval["loss"], "eval_accuracy": final_eval["accuracy"]})
        write_json(
            run_dir / "eval.json",
            {
                "regions": [str(r) for r in heldout],
                "initial": initial_eval,
                "final": final_eval,
            },
        )
    metrics.close()
    log.info("finished %d steps; results in %s: %s", step, run_dir, result)
    return result


@hydra.main(config_path="pkg://conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors("rmt-train"):
        return train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
