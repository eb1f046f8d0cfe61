"""Masked-LM pre-training on genomes, evaluated on held-out regions."""

from __future__ import annotations

from pathlib import Path

import torch

from data import DNATokenizer, Genome, MLMBatches, Region
from rmt.cli import write_json
from rmt.evaluate import evaluate, unigram_log_probs
from rmt.runner import MemoryRunner
from rmt.tasks import StepLoss, Task


class MLMTask(Task):
    metrics = ("loss", "accuracy")

    def __init__(
        self,
        genome: Genome,
        tokenizer: DNATokenizer,
        heldout: list[Region],
        *,
        mask_prob: float,
        rc_prob: float,
        seed: int,
        eval_batch_size: int,
        eval_max_tokens: int | None,
        device: torch.device,
        amp: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.heldout, self.device, self.amp = heldout, device, amp
        self.eval_batch_size, self.eval_max_tokens = eval_batch_size, eval_max_tokens
        self.batches = MLMBatches(
            genome, tokenizer, mask_prob=mask_prob, rc_prob=rc_prob, seed=seed
        )
        self.eval_batches = MLMBatches(
            genome, tokenizer, mask_prob=mask_prob, bp_per_token=self.batches.bp_per_token
        )
        self.unigram = unigram_log_probs(tokenizer, genome) if heldout else None

    def step_loss(self, runner: MemoryRunner, batch_size: int, segments: int) -> StepLoss:
        batch = self.batches.sample(batch_size, segments * runner.segment_tokens)
        rows = self.rows(batch_size)
        ids, mask, labels = (
            x[rows].to(self.device) for x in (batch.input_ids, batch.attention_mask, batch.labels)
        )
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            out = runner(ids, mask, labels)
        share = self.global_share(
            float(out.segment_counts.sum()), float((batch.labels != -100).sum())
        )
        return StepLoss(out.loss * share, int(mask.sum()), out.segment_losses.tolist())

    def evaluate(self, runner: MemoryRunner, segments: int) -> dict:
        if not self.heldout:
            return {}
        return evaluate(
            runner, self.eval_batches, self.heldout, segments, self.eval_batch_size,
            self.eval_max_tokens, self.device, self.amp, self.unigram,
        )  # fmt: skip

    def report(self, runner: MemoryRunner, run_dir: Path, initial: dict | None) -> dict:
        if not self.heldout:
            return {}
        final = self.evaluate(runner, initial["segments"] if initial else 1)
        if self.rank == 0:  # every rank evaluates (ZeRO-3 needs them all); one writes
            write_json(
                run_dir / "eval.json",
                {"regions": [str(r) for r in self.heldout], "initial": initial, "final": final},
            )
        return {"eval_loss": final["loss"], "eval_accuracy": final["accuracy"]}

    def data_state(self) -> dict:
        return self.batches.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.batches.load_state_dict(state)
