"""Fine-tuning on labelled sequences: sequence classification, regression, per-base classes.

The head is the runner's `task_head` (rmt.heads; rmt.finetune builds it), so that
checkpoints save and restore it with the model. Training rows are drawn from the train
examples by (seed, step, index); an example longer than the step's `segments` x
`segment_tokens` tokens gives a random window that long (its per-base labels go with it
through the token offsets; a sequence target is kept). Validation scores the whole valid
split every evaluation (sequences cropped to `eval_max_segments` segments), and the report
scores the test split once, with the model of `checkpoints/best`, in every memory mode
(rmt.api_memory): memory carried, reset per segment, and (sequence heads) the per-segment
predictions averaged: the baselines that memory has to beat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import DNATokenizer
from data.labelled import Example, LabelledData
from data.masking import IGNORE_INDEX
from rmt.api_memory import read
from rmt.best import best_checkpoint
from rmt.checkpoint import load_model
from rmt.cli import write_json
from rmt.finetune_metrics import score
from rmt.finetune_options import METRICS
from rmt.loss import label_counts, scored_tokens
from rmt.runner import MemoryRunner
from rmt.tasks import StepLoss, Task, TaskBatch
from rmt.token_bases import base_predictions, token_base_labels

log = logging.getLogger(__name__)


@dataclass
class Tokenized:
    """An example with its tokens and their [start, end) bp offsets."""

    example: Example
    ids: np.ndarray
    offsets: np.ndarray


#: one row of a batch: an example and the [start, stop) token window taken from it
Window = tuple[Tokenized, int, int]


class FinetuneTask(Task):
    """The task of rmt-finetune; `kind` is one of rmt.finetune_metrics.METRICS."""

    def __init__(
        self,
        kind: str,
        data: LabelledData,
        tokenizer: DNATokenizer,
        *,
        segment_tokens: int,
        loss_on: str,
        token_bases: int,
        seed: int,
        eval_max_segments: int | None,
        eval_batch_size: int,
        device: torch.device,
        amp: torch.dtype | None,
        kernels: str,
    ) -> None:
        super().__init__()
        self.kind, self.names = kind, data.classes or data.targets
        self.metrics = METRICS[kind]
        self.tokenizer, self.segment_tokens, self.loss_on = tokenizer, segment_tokens, loss_on
        self.token_bases, self.seed = token_bases, seed
        self.eval_max_segments, self.eval_batch_size = eval_max_segments, eval_batch_size
        self.device, self.amp, self.kernels = device, amp, kernels
        self.train_set = [self.tokenize(x) for x in data.train]
        self.valid_set = [self.tokenize(x) for x in data.valid]
        self.test_set = [self.tokenize(x) for x in data.test]

    def tokenize(self, example: Example) -> Tokenized:
        encoding = self.tokenizer.encode(example.sequence)
        return Tokenized(example, encoding.ids, encoding.offsets)

    @property
    def per_base(self) -> bool:
        return self.kind == "token_classification"

    # -- data ---------------------------------------------------------------------------
    def sample(self, step: int, indices: Sequence[int], segments: int) -> TaskBatch:
        limit = segments * self.segment_tokens
        return self.batch([self.window(np.random.default_rng([self.seed, step, i]), limit)
                           for i in indices])  # fmt: skip

    def window(self, rng: np.random.Generator, limit: int) -> Window:
        """A random train example; a random window of `limit` tokens when it is longer."""
        item = self.train_set[int(rng.integers(len(self.train_set)))]
        start = int(rng.integers(len(item.ids) - limit + 1)) if len(item.ids) > limit else 0
        return item, start, min(len(item.ids), start + limit)

    def batch(self, windows: list[Window]) -> TaskBatch:
        """Right-padded rows; labels are targets (b,) or (b, k), or per-base labels of each
        token (b, t, token_bases); one loss term per sample or per labelled base."""
        length = max(stop - start for _, start, stop in windows)
        ids = torch.full((len(windows), length), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (item, start, stop) in enumerate(windows):
            ids[i, : stop - start] = torch.as_tensor(item.ids[start:stop])
            mask[i, : stop - start] = True
        if not self.per_base:
            targets = [item.example.target for item, _, _ in windows]
            dtype = torch.long if self.kind == "sequence_classification" else torch.float32
            labels = torch.tensor(targets, dtype=dtype)
            return TaskBatch(ids, mask, labels, loss_count=len(windows))
        labels = torch.full((*ids.shape, self.token_bases), IGNORE_INDEX, dtype=torch.long)
        for i, (item, start, stop) in enumerate(windows):
            per_token = token_base_labels(
                item.offsets[start:stop], item.example.base_labels, self.token_bases
            )
            labels[i, : stop - start] = torch.as_tensor(per_token)
        counts = label_counts(labels, self.segment_tokens)
        return TaskBatch(ids, mask, labels, int(scored_tokens(counts, self.loss_on)))

    # -- model --------------------------------------------------------------------------
    def loss(self, runner: MemoryRunner, batch: TaskBatch) -> StepLoss:
        head = runner.task_head
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            if self.per_base:
                out = runner(batch.input_ids, batch.attention_mask, batch.labels, head=head)
                scored = scored_tokens(out.segment_counts, runner.loss_on)
                return StepLoss(out.loss * scored, out.segment_sums, out.segment_counts)
            out = runner(batch.input_ids, batch.attention_mask, final_head=head,
                         targets=batch.labels)  # fmt: skip
        return StepLoss(out.loss * out.final_count)

    @torch.no_grad()
    def predict(
        self, runner: MemoryRunner, items: list[Tokenized], memory: str = "carried"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(truth, predictions) of `items` read in memory mode `memory`: class indices and
        probabilities (n, C) or targets and values (n, k), per sequence or per labelled
        base (token tasks)."""
        crop = self.eval_max_segments
        limit = None if crop is None else crop * self.segment_tokens
        ordered = sorted(items, key=lambda item: len(item.ids), reverse=True)
        truth, predicted = [], []
        for first in range(0, len(ordered), self.eval_batch_size):
            chunk = ordered[first : first + self.eval_batch_size]
            windows = [(item, 0, len(item.ids) if limit is None else min(limit, len(item.ids)))
                       for item in chunk]  # fmt: skip
            batch = self.batch(windows).to(self.device)
            head = runner.task_head
            with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                final = None if self.per_base else head
                read_out = read(runner, batch.input_ids, batch.attention_mask, memory, final)
                outputs = head(read_out.hidden) if self.per_base else read_out.final_outputs
            outputs = outputs.double().cpu()  # probabilities that sum to 1 (log loss)
            if self.per_base:
                self.collect_bases(windows, outputs.softmax(-1).numpy(), truth, predicted)
            else:
                predicted.append(outputs.softmax(-1) if self.kind == "sequence_classification"
                                 else outputs)  # fmt: skip
                truth.append(batch.labels.cpu())
        if self.per_base:
            return np.concatenate(truth), np.concatenate(predicted)
        return torch.cat(truth).numpy(), torch.cat(predicted).numpy()

    def collect_bases(self, windows: list[Window], probs: np.ndarray, truth, predicted) -> None:
        """Per-base probabilities of each window's labelled, covered bases."""
        for i, (item, start, stop) in enumerate(windows):
            sequence_bp = len(item.example.sequence)
            per_base = base_predictions(item.offsets[start:stop], probs[i, : stop - start],
                                        sequence_bp)  # fmt: skip
            keep = (item.example.base_labels != IGNORE_INDEX) & ~np.isnan(per_base[:, 0])
            truth.append(item.example.base_labels[keep])
            predicted.append(per_base[keep])

    def scores(self, runner: MemoryRunner, items: list[Tokenized], memory: str = "carried"):
        """The metrics (rmt.finetune_metrics) of `items` in memory mode `memory`."""
        was_training = runner.training
        runner.eval()
        try:
            truth, predicted = self.predict(runner, items, memory)
        finally:
            runner.train(was_training)
        return score(self.kind, truth, predicted, self.names)

    def evaluate(self, runner: MemoryRunner, segments: int) -> dict:
        """The valid split's metrics, memory carried ({} without a valid split). Whole
        sequences (up to eval.max_segments), whatever the curriculum trains on now."""
        if not self.valid_set:
            return {}
        return self.scores(runner, self.valid_set)

    def report(
        self, runner: MemoryRunner, run_dir: Path, initial: dict | None, write: bool
    ) -> dict:
        """test.json: the best checkpoint's test metrics in every memory mode; the
        memory-carried ones (scalars) are returned as `test_<name>`."""
        if not self.test_set:
            log.warning("no test split (data.test, data.split_column or data.test_records): "
                        "test.json is not written")  # fmt: skip
            return {}
        model, best = self.best_model(runner, run_dir)
        modes = ("carried", "reset") if self.per_base else ("carried", "reset", "segment_average")
        results = {mode: self.scores(model, self.test_set, mode) for mode in modes}
        if write:
            write_json(run_dir / "test.json", {
                "task": self.kind, "names": self.names, "examples": len(self.test_set),
                "segment_tokens": self.segment_tokens, "memory_tokens": model.memory_tokens,
                "eval_max_segments": self.eval_max_segments, "best": best, "memory": results,
            })  # fmt: skip
        carried = results["carried"]
        return {f"test_{k}": v for k, v in carried.items() if isinstance(v, int | float)}

    def best_model(self, runner: MemoryRunner, run_dir: Path) -> tuple[MemoryRunner, dict | None]:
        """The model of checkpoints/best and what picked it; the final model without one."""
        best = best_checkpoint(run_dir)
        if not best.is_dir():
            log.warning("%s does not exist: the test split scores the final model", best)
            return runner, None
        model, _ = load_model(best, self.device, self.kernels)
        entry = json.loads((best / "config.json").read_text()).get("best")
        return model, {"checkpoint": str(best.relative_to(run_dir)), **(entry or {})}
