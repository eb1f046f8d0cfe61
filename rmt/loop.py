"""The training loop: plan a step, get its batches, optimise, log, evaluate, save.

The curriculum gives each step's segment count, and the token budget its micro-batch
sizes (`StepPlan`). The task builds this rank's rows of every micro-batch on the CPU
(`Task.sample`); a background worker (`rmt.prefetch`) builds the next step's while the
model computes, keyed by the plan it was built for, so a plan changed by an evaluation
never gets a stale batch. The step's loss is one mean over the global batch: the loss
terms are counted before the forward (one all-reduce per step), and every micro-batch
backpropagates its loss sum over that count.

A step whose loss or gradient norm is not finite (training diverged) gets no update; by
`trainer.on_nonfinite` the run then stops with a one-line error (`TrainingDiverged`), or
goes on without that step, up to `trainer.max_skipped_steps` such steps. Either way no
checkpoint holds non-finite weights and the last good one is kept.

After each evaluation the checkpointer may keep the model as `checkpoints/best`
(`rmt.state.BestCheckpoint`, when the run names a validation metric).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from curriculum import step_plan
from rmt.moe import moe_metrics, reset_moe_stats
from rmt.prefetch import Prefetcher
from rmt.strategy import World, all_reduce_sum
from rmt.tasks import StepLoss, TaskBatch

if TYPE_CHECKING:
    from rmt.train import Run

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """A non-finite loss or gradient norm ended the run (the user's settings: exit 2)."""


class NothingToLearn(ValueError):
    """A step without a single scored token: its loss would be 0 whatever the model does."""


@dataclass(frozen=True)
class StepPlan:
    """What a step trains on: its number, segments per sample, global micro-batch sizes."""

    step: int
    segments: int
    sizes: tuple[int, ...]

    def rows(self, world: World) -> list[range]:
        """This rank's global sample indices in each micro-batch (every world_size-th)."""
        offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        return [
            range(o + world.rank, o + n, world.world_size)
            for o, n in zip(offsets, self.sizes, strict=True)
        ]


def micro_batches(segments: int, segment_tokens: int, t, world: World) -> tuple[int, ...]:
    """Global micro-batch sizes of one optimizer step: a constant token budget, or a fixed
    batch. Each micro-batch is shared by all ranks, so it needs a sample per rank."""
    if t.tokens_per_step is None:
        sizes = [t.batch_size]
    else:
        sizes = step_plan(segments, segment_tokens, t.tokens_per_step, t.micro_batch_tokens)
    if min(sizes) < world.world_size:
        raise ValueError(
            f"a micro-batch of {min(sizes)} samples at {segments} segments cannot feed "
            f"{world.world_size} ranks: raise trainer.tokens_per_step (or trainer.batch_size)"
        )
    return tuple(sizes)


class TrainLoop:
    """Runs a built run (`rmt.train.Run`) to its last step (`run_to_end`)."""

    def __init__(self, run: Run) -> None:
        self.run, self.t, self.world = run, run.trainer, run.world
        self.curriculum, self.strategy, self.task = run.curriculum, run.strategy, run.task
        self.checked_labels = False  # the first step is checked for scored tokens

    # -- planning and data ----------------------------------------------------------
    def plan(self, step: int, segments: int) -> StepPlan:
        sizes = micro_batches(segments, self.run.runner.segment_tokens, self.t, self.world)
        return StepPlan(step, segments, sizes)

    def forecast(self) -> StepPlan | None:
        """The next step's plan as the curriculum stands (an evaluation may change it)."""
        ahead = copy.deepcopy(self.curriculum)
        ahead.step_done()
        if self.finished(ahead):
            return None
        return self.plan(ahead.step, ahead.sample_segments())

    def prepare(self, plan: StepPlan) -> list[TaskBatch]:
        """This rank's batches of a step, on the CPU (pinned when training on a GPU)."""
        segments, rows = plan.segments, plan.rows(self.world)
        batches = [self.task.sample(plan.step, indices, segments) for indices in rows]
        if self.world.device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        return batches

    def finished(self, c) -> bool:
        """Done after `trainer.max_steps` steps, or at the curriculum's end when it is null
        (with a number, the last stage goes on past the curriculum's total)."""
        return c.step >= self.run.max_steps if self.run.max_steps else c.done

    # -- the loop -------------------------------------------------------------------
    def run_to_end(self) -> dict:
        run, c = self.run, self.curriculum
        if run.values["initial_eval"] is None:
            log.info("evaluating the initial model at %d segments ...", c.max_segments)
            run.values["initial_eval"] = self.task.evaluate(run.runner, c.max_segments) or None
            if run.values["initial_eval"]:
                run.sink.write({"step": 0, "split": "eval", **run.values["initial_eval"]})
        run.runner.train()
        show, total = self.t.progress and self.world.is_main, run.max_steps or c.total_steps
        with (
            Prefetcher(self.prepare) as prefetch,
            tqdm(total=total, initial=c.step, disable=not show) as progress,
        ):
            while not self.finished(c):
                self.train_step(prefetch, progress)
        initial, write = run.values["initial_eval"], self.world.is_main
        result = {"steps": c.step, **self.task.report(run.runner, run.run_dir, initial, write)}
        run.sink.write({"step": c.step, "split": "final", **result})
        log.info("finished %d steps; results in %s: %s", c.step, run.run_dir, result)
        return result

    def train_step(self, prefetch: Prefetcher, progress: tqdm) -> None:
        c, t = self.curriculum, self.t
        plan = self.plan(c.step, c.sample_segments())
        start = time.perf_counter()
        batches, wait = prefetch.get(plan)
        prefetch.submit(self.forecast())
        reset_moe_stats(self.run.runner)  # expert loads of this step's forwards only
        totals, grad_norm = self.optimize(batches)
        elapsed = time.perf_counter() - start
        skipped = self.nonfinite(c.step + 1, totals["loss"], grad_norm)
        stage, transitions = c.stage, [c.step_done()]
        record = {
            "step": c.step, "split": "train", "stage": stage, "segments": plan.segments,
            "samples": sum(plan.sizes), "micro_batches": len(plan.sizes), **totals,
            "tokens_per_s": totals["tokens"] / elapsed, "step_time_s": elapsed,
            "data_wait_s": wait, "lr": self.strategy.lr, "grad_norm": grad_norm,
            **moe_metrics(self.run.runner), **({"skipped": True} if skipped else {}),
        }  # fmt: skip
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.3f}", segments=plan.segments,
                             tok_s=f"{record['tokens_per_s']:,.0f}")  # fmt: skip
        last = self.finished(c)
        if c.step % t.log_every == 0 or last or skipped:
            self.run.sink.write(record)
        if self.evaluates(c.step, last):
            result = self.task.evaluate(self.run.runner, c.segments)
            self.run.sink.write({"step": c.step, "split": "eval", **result})
            self.run.checkpointer.observe(c.step, result)
            transitions.append(None if c.done or last else c.observe(result))
        for transition in filter(None, transitions):
            self.run.sink.write({"split": "curriculum", **transition})
            log.info("curriculum: %s", transition)
        if c.step % t.save_every == 0 or last:
            self.run.checkpointer.save(c.step)

    def evaluates(self, step: int, last: bool) -> bool:
        """Every `trainer.eval_every` steps; the last step too when a best checkpoint is
        kept, so the final model competes (otherwise the task's report evaluates it)."""
        if last:
            return self.run.checkpointer.best is not None
        return step % self.t.eval_every == 0

    def nonfinite(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """True when step `step` diverged and is skipped; raises when the run must stop.

        The strategy has left the update out already (a non-finite gradient norm); a
        non-finite loss alone is caught here."""
        norm_ok = grad_norm is None or math.isfinite(grad_norm)
        if math.isfinite(loss) and norm_ok:
            return False
        values, t = self.run.values, self.t
        what = f"loss {loss:.4g}, gradient norm {grad_norm}"
        if t.on_nonfinite == "skip":
            values["skipped_steps"] = values["skipped_steps"] + 1
            if values["skipped_steps"] <= t.max_skipped_steps:
                log.warning("step %d skipped (%s): %d of trainer.max_skipped_steps=%d",
                            step, what, values["skipped_steps"], t.max_skipped_steps)  # fmt: skip
                return True
            what += f"; {values['skipped_steps'] - 1} steps skipped already"
        self.run.sink.write({"step": step, "split": "train", "loss": loss,
                             "grad_norm": grad_norm, "diverged": True})  # fmt: skip
        raise TrainingDiverged(
            f"training diverged at step {step} ({what}) with trainer.lr={t.lr:g}: lower "
            "trainer.lr (or raise trainer.warmup_steps) and start a new run directory, or "
            "set trainer.on_nonfinite=skip; no checkpoint was written from it, "
            f"{self.run.checkpointer.last_saved()}"
        )

    def optimize(self, batches: list[TaskBatch]) -> tuple[dict, float]:
        """One optimizer step over the micro-batches; the global batch's loss and tokens."""
        world = self.world
        local = torch.tensor([[b.loss_count, b.tokens] for b in batches], dtype=torch.float64)
        total, tokens = all_reduce_sum(local.sum(0), world).tolist()
        if total == 0 and not self.checked_labels:
            raise NothingToLearn(
                f"step {self.curriculum.step + 1} has no scored tokens ({int(tokens)} tokens, "
                "none labelled), so its loss is 0 whatever the model does: check "
                "data.mask_prob, that the tokenizer covers the data (unknown tokens are never "
                "scored) and memory.loss_on"
            )
        self.checked_labels = True
        scale = world.world_size / max(total, 1.0)
        parts = []
        for i, batch in enumerate(batches):
            part = self.strategy.micro_step(batch.to(world.device), scale, i == len(batches) - 1)
            parts.append(replace(part, loss_sum=part.loss_sum.detach()))
        grad_norm = self.strategy.step()
        return {**self.losses(parts, total), "tokens": int(tokens)}, grad_norm

    def losses(self, parts: list[StepLoss], total: float) -> dict:
        """The step's mean loss and per-segment losses over all ranks (one all-reduce)."""
        local = [torch.stack([p.loss_sum.double() for p in parts]).sum()[None]]
        segmented = parts[0].segment_sums is not None
        if segmented:
            local += [sum(p.segment_sums.double() for p in parts)]
            local += [sum(p.segment_counts.double() for p in parts)]
        summed = all_reduce_sum(torch.cat(local), self.world)
        result = {"loss": float(summed[0]) / max(total, 1.0), "segment_losses": None}
        if segmented:
            sums, counts = summed[1:].chunk(2)
            result["segment_losses"] = (sums / counts.clamp(min=1)).tolist()
        return result
