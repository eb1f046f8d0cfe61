"""Training tasks: what a step's data and loss are, how a run is evaluated, what it reports.

`rmt-train` is one loop over any task (config group `task`):
- `mlm`: masked-LM pre-training on genomes (the default);
- `memorize`: the synthetic long-range task that proves memory carries information.

A task owns its data (`sample` gives a CPU batch and touches no parameters, so the loop
can prepare it ahead, in a background thread), any modules beyond the runner (a
classifier, say), its evaluation and its final report; the loop owns optimisation,
curriculum, logging and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn


@dataclass
class TaskBatch:
    """One rank's rows of a micro-batch, built on the CPU.

    `labels` are the task's targets (per token for MLM, per sample for memorize), and
    `loss_count` is how many loss terms the batch adds to the step's denominator (scored
    tokens, or samples): the loop sums it over micro-batches and ranks, so the step's loss
    is one mean over the global batch whatever the number of ranks.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    loss_count: int

    @property
    def tokens(self) -> int:
        """Content (non-padding) tokens."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> TaskBatch:
        """The batch on `device` (asynchronous from pinned memory)."""
        return self._map(lambda x: x.to(device, non_blocking=True))

    def pin_memory(self) -> TaskBatch:
        """The batch in page-locked memory, so the copy to a GPU overlaps compute."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, move) -> TaskBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TaskBatch(**{k: move(v) if torch.is_tensor(v) else v for k, v in values.items()})


@dataclass
class StepLoss:
    """One micro-batch's loss, summed over its loss terms (the loop divides by the step's
    global count), and what to log about it: per-segment loss sums and counts (detached),
    when the task has them."""

    loss_sum: torch.Tensor
    segment_sums: torch.Tensor | None = None
    segment_counts: torch.Tensor | None = None


class Task(nn.Module):
    """Base class: subclasses hold their extra trainable modules as submodules.

    Data parallelism: sample `i` of step `s` is drawn from a generator seeded by
    (seed, s, i), so every rank builds only its own rows and a run's data does not
    depend on the number of ranks, nor on anything a checkpoint would have to save.
    """

    #: evaluation metric names this task reports (the threshold curriculum reads them)
    metrics: tuple[str, ...] = ()

    def sample(self, step: int, indices: Sequence[int], segments: int) -> TaskBatch:
        """Samples `indices` (global positions in step `step`'s batch), `segments` long."""
        raise NotImplementedError

    def loss(self, runner, batch: TaskBatch) -> StepLoss:
        raise NotImplementedError

    def evaluate(self, runner, segments: int) -> dict:
        raise NotImplementedError

    def report(self, runner, run_dir, initial: dict | None, write: bool) -> dict:
        """The task's final results (written into the run directory when `write`, which
        is rank 0's job: every rank evaluates, ZeRO-3 needs them all); headline metrics."""
        raise NotImplementedError
