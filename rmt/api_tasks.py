"""Fine-tuned models in the API: sequence classification / regression, per-base classes.

Each reads the task head `rmt-finetune` attached to the runner (`runner.task_head`, saved
with the checkpoint) and refuses a model without one, saying how to make one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import DNATokenizer, clean_sequence, reverse_complement
from rmt.api_base import Batch, PretrainedModel, to_numpy
from rmt.api_memory import MEMORY_MODES, outputs_by_segment, read
from rmt.heads import SequenceHead, TokenClassificationHead
from rmt.runner import MemoryRunner
from rmt.token_bases import base_predictions


@dataclass
class Classes:
    """Per sequence: `logits` and `probabilities` (b, C), the `predicted` class index (b,)
    and its name in `labels` (the class names the model was fine-tuned with)."""

    logits: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    labels: list[str]


@dataclass
class Values:
    """Per sequence: `values` (b, k) in the targets' original units."""

    values: np.ndarray


class _SequenceModel(PretrainedModel):
    """A sequence head read at each sequence's last segment (the runner's final head)."""

    memory_modes = MEMORY_MODES
    kind = ""
    task = ""

    def __init__(
        self,
        runner: MemoryRunner,
        tokenizer: DNATokenizer,
        memory: str = "carried",
        source: str = "this model",
    ) -> None:
        super().__init__(runner, tokenizer, memory, source)
        self.head = self.task_head(SequenceHead, self.task, self.kind)
        self.names = self.head.names or [str(i) for i in range(self.head.num_outputs)]

    def outputs(self, batch: Batch) -> torch.Tensor:
        """(b, k) head outputs in this model's memory mode."""
        ids, mask = batch.input_ids, batch.attention_mask
        return read(self.runner, ids, mask, self.memory, final_head=self.head).final_outputs

    @torch.no_grad()
    def outputs_by_segment(self, batch: Batch) -> np.ndarray:
        """(b, n, k) head outputs after each segment (`rmt.api_memory.outputs_by_segment`):
        how the prediction changes as the model reads more of each sequence."""
        ids, mask = batch.input_ids, batch.attention_mask
        return to_numpy(outputs_by_segment(self.runner, ids, mask, self.head, self.memory))


class SequenceClassification(_SequenceModel):
    """Class probabilities per sequence (`Classes`); `names`: the class names.

    memory="segment_average" averages the logits of every segment run alone.
    """

    kind, task = "classification", "sequence_classification"

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Classes:
        logits = self.outputs(batch).float()
        predicted = logits.argmax(-1).cpu().numpy()
        return Classes(
            logits=to_numpy(logits),
            probabilities=to_numpy(logits.softmax(-1)),
            predicted=predicted,
            labels=[self.names[i] for i in predicted],
        )


class SequenceRegression(_SequenceModel):
    """Predicted targets per sequence, in their original units (`Values`); `names`: the
    target names. memory="segment_average" averages every segment's prediction."""

    kind, task = "regression", "sequence_regression"

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Values:
        return Values(values=to_numpy(self.outputs(batch)))


@dataclass
class BaseClasses:
    """Per sequence i: `probabilities[i]` (bp of i, C) per-base class probabilities and
    `predicted[i]` (bp of i,) their argmax (-1 for a base no token covers)."""

    probabilities: list[np.ndarray]
    predicted: list[np.ndarray]


class TokenClassification(PretrainedModel):
    """Per-base class probabilities from the per-base logits of each BPE token.

    Memory carries only leftward context. both_strands=True also reads every sequence's
    reverse complement, which gives each base its right context, and averages the two
    per-base probabilities (classes must mean the same on both strands, as exon / intron
    / intergenic do). `names`: the class names.
    """

    def __init__(
        self,
        runner: MemoryRunner,
        tokenizer: DNATokenizer,
        memory: str = "carried",
        both_strands: bool = False,
        source: str = "this model",
    ) -> None:
        super().__init__(runner, tokenizer, memory, source)
        self.head = self.task_head(TokenClassificationHead, "token_classification")
        self.names = self.head.names or [str(i) for i in range(self.head.num_classes)]
        self.both_strands = both_strands

    def strand_probabilities(self, batch: Batch) -> list[np.ndarray]:
        """(bp, C) per-base probabilities of each sequence, read on its own strand only."""
        hidden = read(self.runner, batch.input_ids, batch.attention_mask, self.memory).hidden
        probabilities = to_numpy(self.head(hidden).float().softmax(-1))
        return [
            base_predictions(offsets, p[: len(offsets)], len(seq))
            for p, offsets, seq in zip(probabilities, batch.offsets, batch.sequences, strict=True)
        ]

    @torch.no_grad()
    def __call__(self, batch: Batch) -> BaseClasses:
        probabilities = self.strand_probabilities(batch)
        if self.both_strands:
            reverse = [reverse_complement(clean_sequence(seq)) for seq in batch.sequences]
            backward = self.strand_probabilities(self.collate(reverse))
            probabilities = [
                _average(f, b[::-1]) for f, b in zip(probabilities, backward, strict=True)
            ]
        predicted = [
            np.where(np.isnan(p).any(1), -1, np.nan_to_num(p).argmax(1)) for p in probabilities
        ]
        return BaseClasses(probabilities, predicted)


def _average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of two strands' per-base values; where one strand has none (NaN), the other."""
    return np.where(np.isnan(a), b, np.where(np.isnan(b), a, (a + b) / 2))
