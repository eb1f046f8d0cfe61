"""Where a training run's records go: JSON lines, TensorBoard, and W&B when asked.

A record is a flat dict with a `split` (train, eval, curriculum, final) and a `step`.
`metrics.jsonl` gets every record whole (the format tests and sweep summaries read);
TensorBoard gets each number as the scalar `split/key` (a list of numbers, such as
`segment_losses`, as `split/key/i`); W&B gets the same scalars. Only rank 0 writes:
other ranks hold a sink that drops everything.

A resumed run continues from its checkpoint's step, so the records a killed run wrote
after that step are dropped first (`keep_through`): the file reads as one trajectory.
"""

from __future__ import annotations

import json
import logging
from numbers import Number
from pathlib import Path

from data.atomic import atomic_path
from rmt.cli import MetricsLog

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def keep_through(path: Path, step: int) -> int:
    """Rewrite `path` (atomically) with only the records of steps <= `step`; returns how
    many were dropped.

    Those are what a run killed after its last checkpoint wrote beyond it (it is about to
    write them again), an unreadable last line of a kill mid-write, and `final` records
    (the run writes its own). `step` -1: drop everything (no checkpoint to resume).
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = record.get("step", 0) <= step and record.get("split") != "final"
        except (ValueError, AttributeError, TypeError):
            keep = False
        kept += [line] if keep else []
        dropped += not keep
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d record(s) past step %d (the checkpoint resumed)",
                 path, dropped, step)  # fmt: skip
    return dropped


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers as `split/key` scalars (lists of numbers: `split/key/i`)."""
    split, out = record.get("split", "train"), {}
    for key, value in record.items():
        if isinstance(value, bool) or key == "step":
            continue
        if isinstance(value, Number):
            out[f"{split}/{key}"] = float(value)
        elif isinstance(value, list) and all(isinstance(v, Number) for v in value):
            out.update({f"{split}/{key}/{i}": float(v) for i, v in enumerate(value)})
    return out


class MetricsSink:
    """JSON lines always; TensorBoard event files and W&B as configured; rank 0 only.

    Args:
        run_dir: the run directory (`metrics.jsonl`, `tensorboard/`).
        enabled: False on every rank but 0: the sink then writes nothing.
        tensorboard: also write TensorBoard event files (skipped, with a log line, when
            the `tensorboard` package is missing).
        wandb: a W&B project name to log to (needs `wandb` installed), or None.
        config: the run's configuration, for W&B's run page.
        resume_step: the step the run resumes from (None: a fresh run); records past it
            in an existing `metrics.jsonl` are dropped (`keep_through`).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        wandb: str | None = None,
        config: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        if enabled:
            keep_through(run_dir / METRICS_FILE, -1 if resume_step is None else resume_step)
        self.jsonl = MetricsLog(run_dir / METRICS_FILE) if enabled else None
        board = enabled and tensorboard
        self.tensorboard = _tensorboard(run_dir / TENSORBOARD_DIR) if board else None
        self.wandb = _wandb(wandb, run_dir, config) if enabled and wandb else None

    def write(self, record: dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(record)
        step, values = record.get("step", 0), scalars(record)
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None and values:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        # On by default, so a plain install without it is normal: say so, quietly.
        log.info(
            "TensorBoard does not import (%s): metrics go to metrics.jsonl only "
            "(pip install 'rmt-dna[tensorboard]' for event files)",
            err,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _wandb(project: str, run_dir: Path, config: dict | None):
    try:
        import wandb
    except ImportError:
        raise ValueError(
            f"trainer.wandb={project!r} needs W&B: pip install wandb (or trainer.wandb=null)"
        ) from None
    return wandb.init(project=project, dir=str(run_dir), config=config)
