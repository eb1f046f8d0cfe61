"""The memorize task: proof that the recurrent memory carries information.

One of `classes` random barcodes (`barcode_bp` long) is planted at a random position in
the first half of the first segment of a window cut from a real genome. After N
segments the class is predicted from the final memory alone (a linear classifier on the
mean memory vector). Nothing after the first segment says which barcode it was, so
beyond one segment every correct answer is the memory's work; with the memory reset
between segments (the ablation) accuracy falls to chance, 1/classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data import DNATokenizer, Genome, Region
from data.batches import MLMBatches
from rmt.cli import write_json
from rmt.runner import MemoryRunner
from rmt.tasks import StepLoss, Task, TaskBatch


class MemorizeTask(Task):
    metrics = ("accuracy", "loss")

    def __init__(
        self,
        runner: MemoryRunner,
        genome: Genome,
        tokenizer: DNATokenizer,
        heldout: list[Region],
        *,
        seed: int,
        device: torch.device,
        amp: torch.dtype | None,
        classes: int = 16,
        barcode_bp: int = 24,
        eval_samples: int = 256,
        report_samples: int = 512,
        report_segments: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if not heldout:
            raise ValueError(
                "task=memorize evaluates on held-out sequence: set data.eval_fraction > 0"
            )
        self.classifier = nn.Linear(runner.encoder.config.d_model, classes)
        self.genome, self.tokenizer, self.heldout = genome, tokenizer, heldout
        self.device, self.amp, self.seed = device, amp, seed
        self.classes, self.barcode_bp = classes, barcode_bp
        self.eval_samples, self.report_samples = eval_samples, report_samples
        self.report_segments = list(report_segments)
        bases = np.array(list("ACGT"))
        barcode_rng = np.random.default_rng(seed + 7919)
        self.barcodes = ["".join(barcode_rng.choice(bases, barcode_bp)) for _ in range(classes)]
        self.bp_per_token = MLMBatches(genome, tokenizer, seed=seed).bp_per_token
        self.segment_tokens = runner.segment_tokens

    # -- data ---------------------------------------------------------------------------
    def _sample(self, rng: np.random.Generator, seq: str, segment_tokens: int, num_tokens: int):
        """Plant a random barcode in the first half of the first segment; tokenize."""
        label = int(rng.integers(self.classes))
        first_half_bp = max(1, int(segment_tokens * self.bp_per_token / 2) - self.barcode_bp)
        pos = int(rng.integers(first_half_bp))
        seq = seq[:pos] + self.barcodes[label] + seq[pos + self.barcode_bp :]
        ids = self.tokenizer.encode(seq).ids[:num_tokens]
        return ids, label

    def _window_bp(self, num_tokens: int) -> int:
        return int(num_tokens * self.bp_per_token * 1.3) + self.barcode_bp

    def _pad(self, rows: list[tuple[np.ndarray, int]], num_tokens: int) -> TaskBatch:
        """(ids, label) rows as one right-padded CPU batch; one loss term per sample."""
        ids = torch.full((len(rows), num_tokens), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (row, _) in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row)
            mask[i, : len(row)] = True
        labels = torch.tensor([label for _, label in rows], dtype=torch.long)
        return TaskBatch(ids, mask, labels, loss_count=len(rows))

    def _batch(
        self, rng: np.random.Generator, sequences: list[str], segment_tokens: int, segments: int
    ) -> TaskBatch:
        """Barcoded samples of `sequences`, all planted from one generator."""
        num_tokens = segments * segment_tokens
        rows = [self._sample(rng, seq, segment_tokens, num_tokens) for seq in sequences]
        return self._pad(rows, num_tokens)

    def sample(self, step: int, indices: Sequence[int], segments: int) -> TaskBatch:
        """Training samples: window, strand and barcode each from (seed, step, index)."""
        num_tokens = segments * self.segment_tokens
        length = self._window_bp(num_tokens)
        rows = []
        for index in indices:
            rng = np.random.default_rng([self.seed, step, index])
            seq = self.genome.sample_window(length, rng, rc_prob=0.5).seq
            rows.append(self._sample(rng, seq, self.segment_tokens, num_tokens))
        return self._pad(rows, num_tokens)

    def _heldout_sequences(self, rng: np.random.Generator, count: int, length: int) -> list[str]:
        """Windows from the held-out regions (never trained on), deterministic given rng."""
        out = []
        for _ in range(count):
            region = self.heldout[int(rng.integers(len(self.heldout)))]
            start = region.start + int(rng.integers(max(1, len(region) - length)))
            out.append(self.genome.fetch(region.chrom, start, min(region.end, start + length)))
        return out

    # -- model --------------------------------------------------------------------------
    def logits(self, runner: MemoryRunner, ids, mask, reset_memory: bool = False) -> torch.Tensor:
        """Class logits from the memory after the last segment.

        `reset_memory` is the ablation: every segment starts from the learned initial
        memory, so the final memory has seen the last segment only.
        """
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            if reset_memory:
                initial = runner.init_memory(ids.shape[0])
                memory = initial
                for seg_ids, seg_mask in zip(
                    ids.split(runner.segment_tokens, 1),
                    mask.split(runner.segment_tokens, 1),
                    strict=True,
                ):
                    _, memory = runner.step(seg_ids, initial, seg_mask)
            else:
                memory = runner(ids, mask).memory
            return self.classifier(memory.float().mean(1))

    def loss(self, runner: MemoryRunner, batch: TaskBatch) -> StepLoss:
        logits = self.logits(runner, batch.input_ids, batch.attention_mask)
        return StepLoss(F.cross_entropy(logits, batch.labels, reduction="sum"))

    @torch.no_grad()
    def accuracy(
        self, runner: MemoryRunner, segments: int, samples: int, reset_memory: bool = False
    ) -> dict:
        """Accuracy and loss on a fixed held-out set (same windows and barcodes every call)."""
        was_training = runner.training
        runner.eval()
        rng = np.random.default_rng(self.seed + 104729)
        sequences = self._heldout_sequences(
            rng, samples, self._window_bp(segments * runner.segment_tokens)
        )
        correct, loss = 0, 0.0
        for start in range(0, samples, 64):
            batch = self._batch(
                rng, sequences[start : start + 64], runner.segment_tokens, segments
            ).to(self.device)
            logits = self.logits(runner, batch.input_ids, batch.attention_mask, reset_memory)
            correct += int((logits.argmax(-1) == batch.labels).sum())
            loss += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
        runner.train(was_training)
        return {"accuracy": correct / samples, "loss": loss / samples, "segments": segments}

    def evaluate(self, runner: MemoryRunner, segments: int) -> dict:
        return self.accuracy(runner, segments, self.eval_samples)

    def report(
        self, runner: MemoryRunner, run_dir: Path, initial: dict | None, write: bool
    ) -> dict:
        n = self.report_samples
        result = {
            "classes": self.classes,
            "chance": 1 / self.classes,
            "barcode_bp": self.barcode_bp,
            "samples": n,
            "segment_tokens": runner.segment_tokens,
            "memory_tokens": runner.memory_tokens,
            "accuracy": {
                str(s): self.accuracy(runner, s, n)["accuracy"] for s in self.report_segments
            },
            "accuracy_memory_reset": {
                str(s): self.accuracy(runner, s, n, reset_memory=True)["accuracy"]
                for s in self.report_segments
            },
        }
        if write:
            write_json(run_dir / "memorize_eval.json", result)
            plot_memorize(result, run_dir / "memorize_eval.png")
        return {f"accuracy_{k}": v for k, v in result["accuracy"].items()}


def plot_memorize(result: dict, path: Path) -> None:
    """Accuracy vs segments, with and without memory, against chance (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    segments = [int(k) for k in result["accuracy"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(segments, list(result["accuracy"].values()), "o-", label="memory carried")
    ax.plot(segments, list(result["accuracy_memory_reset"].values()), "s--", label="memory reset")
    ax.axhline(result["chance"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xscale="log", xlabel="segments", ylabel="accuracy", ylim=(0, 1.02))
    ax.set_xticks(segments, [str(s) for s in segments])
    ax.set_title(
        f"memorize: {result['classes']} barcodes, {result['segment_tokens']}-token segments"
    )
    ax.legend(loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["MemorizeTask", "plot_memorize"]
