"""Masked-LM pre-training on genomes, evaluated on held-out regions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from data import DNATokenizer, Genome, MLMBatches, Region
from rmt.cli import write_json
from rmt.evaluate import evaluate, unigram_log_probs
from rmt.loss import label_counts, scored_tokens
from rmt.runner import MemoryRunner
from rmt.tasks import StepLoss, Task, TaskBatch


class MLMTask(Task):
    """MLM on genome windows; every evaluation also scores the memory-reset ablation
    (`memory_gain`, see rmt.evaluate) unless `memory_gain=False`."""

    metrics = ("loss", "accuracy", "unigram_loss", "loss_memory_reset", "memory_gain")
    #: final metrics (eval.json's `final`) that rmt-train returns, as `eval_<name>`
    headline = ("loss", "accuracy", "unigram_loss", "loss_memory_reset", "memory_gain",
                "memory_gain_se")  # fmt: skip

    def __init__(
        self,
        genome: Genome,
        tokenizer: DNATokenizer,
        heldout: list[Region],
        *,
        segment_tokens: int,
        loss_on: str,
        mask_prob: float,
        rc_prob: float,
        seed: int,
        eval_batch_size: int,
        eval_max_tokens: int | None,
        device: torch.device,
        amp: torch.dtype | None,
        memory_gain: bool = True,
    ) -> None:
        super().__init__()
        self.heldout, self.device, self.amp = heldout, device, amp
        self.segment_tokens, self.loss_on = segment_tokens, loss_on
        self.eval_batch_size, self.eval_max_tokens = eval_batch_size, eval_max_tokens
        self.memory_gain = memory_gain
        self.batches = MLMBatches(
            genome, tokenizer, mask_prob=mask_prob, rc_prob=rc_prob, seed=seed
        )
        self.eval_batches = MLMBatches(
            genome, tokenizer, mask_prob=mask_prob, bp_per_token=self.batches.bp_per_token
        )
        self.unigram = unigram_log_probs(tokenizer, genome) if heldout else None

    def sample(self, step: int, indices: Sequence[int], segments: int) -> TaskBatch:
        keys = [(step, i) for i in indices]
        batch = self.batches.sample_keys(keys, segments * self.segment_tokens)
        scored = scored_tokens(label_counts(batch.labels, self.segment_tokens), self.loss_on)
        return TaskBatch(batch.input_ids, batch.attention_mask, batch.labels, int(scored))

    def loss(self, runner: MemoryRunner, batch: TaskBatch) -> StepLoss:
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            out = runner(batch.input_ids, batch.attention_mask, batch.labels)
        scored = scored_tokens(out.segment_counts, runner.loss_on)
        return StepLoss(out.loss * scored, out.segment_sums, out.segment_counts)

    def evaluate(self, runner: MemoryRunner, segments: int) -> dict:
        if not self.heldout:
            return {}
        return evaluate(
            runner, self.eval_batches, self.heldout, segments, self.eval_batch_size,
            self.eval_max_tokens, self.device, self.amp, self.unigram, self.memory_gain,
        )  # fmt: skip

    def report(
        self, runner: MemoryRunner, run_dir: Path, initial: dict | None, write: bool
    ) -> dict:
        if not self.heldout:
            return {}
        final = self.evaluate(runner, initial["segments"] if initial else 1)
        if write:
            write_json(
                run_dir / "eval.json",
                {"regions": [str(r) for r in self.heldout], "initial": initial, "final": final},
            )
        return {f"eval_{key}": final[key] for key in self.headline}
