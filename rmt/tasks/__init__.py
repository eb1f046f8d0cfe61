"""Training tasks: what a step's loss is, how a run is evaluated, what it reports.

`rmt-train` is one loop over any task (config group `task`):
- `mlm`: masked-LM pre-training on genomes (the default);
- `memorize`: the synthetic long-range task that proves memory carries information.

A task owns its data, any modules beyond the runner (a classifier, say), its
evaluation and its final report; the loop owns optimisation, curriculum, logging and
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepLoss:
    """One micro-batch: the loss to backpropagate and what to log about it."""

    loss: torch.Tensor
    tokens: int
    segment_losses: list[float] | None = None


class Task(nn.Module):
    """Base class: subclasses hold their extra trainable modules as submodules.

    Data parallelism: every rank draws the same *global* micro-batch (one RNG stream,
    so a run's data does not depend on the number of ranks) and trains on its slice,
    `rows(n)`. Losses are scaled by `global_share` so that averaging gradients over
    ranks gives exactly the gradient of the global batch's loss.
    """

    #: evaluation metric names this task reports (the threshold curriculum reads them)
    metrics: tuple[str, ...] = ()
    rank: int = 0
    world_size: int = 1

    def set_shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of n samples."""
        return slice(self.rank, n, self.world_size)

    def global_share(self, local: float, total: float) -> float:
        """Scale for a local mean loss (over `local` items) to sum to the global mean."""
        return local / max(total, 1) * self.world_size

    def step_loss(self, runner, batch_size: int, segments: int) -> StepLoss:
        raise NotImplementedError

    def evaluate(self, runner, segments: int) -> dict:
        raise NotImplementedError

    def report(self, runner, run_dir, initial: dict | None) -> dict:
        """Write the task's final results into the run directory; returns headline metrics."""
        raise NotImplementedError

    def data_state(self) -> dict:
        """RNG state of the training data stream (for exact resumption)."""
        return {}

    def load_data_state(self, state: dict) -> None:
        pass
