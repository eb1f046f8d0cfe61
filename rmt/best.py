"""The best checkpoint of a run by a validation metric: `checkpoints/best/`.

A run that names a metric (rmt-finetune's `best_metric`) keeps the model of its best
evaluation so far there, rewritten atomically (`rmt.checkpoint.save_checkpoint`) by
`rmt.state.Checkpointer.observe` whenever the metric improves. The best value is read
back from that checkpoint's own config.json (its `best` entry), so the weights and the
value they scored never disagree, whatever step a resumed run starts from.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from rmt.checkpoint import CheckpointError, verify_checkpoint

log = logging.getLogger(__name__)

BEST = "best"  # checkpoints/best, and its config.json entry


def best_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps the model of its best evaluation (it may not exist yet)."""
    return Path(run_dir) / "checkpoints" / BEST


class BestCheckpoint:
    """Which evaluation metric picks the best checkpoint, and the best value so far.

    `metric` is a key of the task's evaluation results; larger is better unless
    `higher_is_better` is False. The first evaluation is the best so far whatever its
    value; after it, only a strictly better, defined value improves (None and NaN never
    do).
    """

    def __init__(self, metric: str, higher_is_better: bool = True) -> None:
        self.metric, self.higher_is_better = metric, higher_is_better
        self.value: float | None = None
        self.step: int | None = None

    def improves(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if self.step is None:
            return True
        if value is None or math.isnan(value):
            return False
        if self.value is None or math.isnan(self.value):
            return True
        return value > self.value if self.higher_is_better else value < self.value

    def record(self, step: int, metrics: dict) -> None:
        self.step, self.value = step, metrics.get(self.metric)

    def entry(self) -> dict:
        """What the best checkpoint's config.json says about itself (`best`)."""
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load(self, directory: Path) -> None:
        """The best so far from an existing best checkpoint; nothing when there is none,
        it is damaged, or it was picked by another metric (the next evaluation replaces
        it then)."""
        if not directory.is_dir():
            return
        try:
            entry = verify_checkpoint(directory).get(BEST) or {}
        except CheckpointError as err:
            log.warning("ignoring the best checkpoint: %s", err.problem)
            return
        if entry.get("metric") != self.metric:
            log.warning("%s was picked by %s, not %s: the next evaluation replaces it",
                        directory, entry.get("metric"), self.metric)  # fmt: skip
            return
        self.step, self.value = entry["step"], entry["value"]
