"""The training loop: plan a step, get its batches, optimise, log, evaluate, save.

The curriculum gives each step's segment count, and the token budget its micro-batch
sizes (`StepPlan`). The task builds this rank's rows of every micro-batch on the CPU
(`Task.sample`); a background worker (`rmt.prefetch`) builds the next step's while the
model computes, keyed by the plan it was built for, so a plan changed by an evaluation
never gets a stale batch. The step's loss is one mean over the global batch: the loss
terms are counted before the forward (one all-reduce per step), and every micro-batch
backpropagates its loss sum over that count.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from curriculum import step_plan
from rmt.prefetch import Prefetcher
from rmt.strategy import World, all_reduce_sum
from rmt.tasks import StepLoss, TaskBatch

if TYPE_CHECKING:
    from rmt.train import Run

log = logging.getLogger(__name__)


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

    # -- planning and data ----------------------------------------------------------
    def plan(self, step: int, segments: int) -> StepPlan:
        sizes = micro_batches(segments, self.run.runner.segment_tokens, self.t, self.world)
        return StepPlan(step, segments, sizes)

    def forecast(self) -> StepPlan | None:
        """The next step's plan as the curriculum stands (an evaluation may change it)."""
        ahead = copy.deepcopy(self.curriculum)
        ahead.step_done()
        if ahead.step >= self.run.max_steps or ahead.done:
            return None
        return self.plan(ahead.step, ahead.sample_segments())

    def prepare(self, plan: StepPlan) -> list[TaskBatch]:
        """This rank's batches of a step, on the CPU (pinned when training on a GPU)."""
        segments, rows = plan.segments, plan.rows(self.world)
        batches = [self.task.sample(plan.step, indices, segments) for indices in rows]
        if self.world.device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        return batches

    # -- the loop -------------------------------------------------------------------
    def run_to_end(self) -> dict:
        run, c = self.run, self.curriculum
        if run.values["initial_eval"] is None:
            run.values["initial_eval"] = self.task.evaluate(run.runner, c.max_segments) or None
            if run.values["initial_eval"]:
                run.sink.write({"step": 0, "split": "eval", **run.values["initial_eval"]})
        run.runner.train()
        show = self.t.progress and self.world.is_main
        with (
            Prefetcher(self.prepare) as prefetch,
            tqdm(total=run.max_steps, initial=c.step, disable=not show) as progress,
        ):
            while c.step < run.max_steps and not c.done:
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
        totals, grad_norm = self.optimize(batches)
        elapsed = time.perf_counter() - start
        stage, transitions = c.stage, [c.step_done()]
        record = {
            "step": c.step, "split": "train", "stage": stage, "segments": plan.segments,
            "samples": sum(plan.sizes), "micro_batches": len(plan.sizes), **totals,
            "tokens_per_s": totals["tokens"] / elapsed, "step_time_s": elapsed,
            "data_wait_s": wait, "lr": self.strategy.lr, "grad_norm": grad_norm,
        }  # fmt: skip
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.3f}", segments=plan.segments,
                             tok_s=f"{record['tokens_per_s']:,.0f}")  # fmt: skip
        last = c.step == self.run.max_steps
        if c.step % t.log_every == 0 or last:
            self.run.sink.write(record)
        if c.step % t.eval_every == 0 and not last and not c.done:
            result = self.task.evaluate(self.run.runner, c.segments)
            self.run.sink.write({"step": c.step, "split": "eval", **result})
            transitions.append(c.observe(result))
        for transition in filter(None, transitions):
            self.run.sink.write({"split": "curriculum", **transition})
            log.info("curriculum: %s", transition)
        if c.step % t.save_every == 0 or last or c.done:
            self.run.checkpointer.save(c.step)

    def optimize(self, batches: list[TaskBatch]) -> tuple[dict, float]:
        """One optimizer step over the micro-batches; the global batch's loss and tokens."""
        world = self.world
        local = torch.tensor([[b.loss_count, b.tokens] for b in batches], dtype=torch.float64)
        total, tokens = all_reduce_sum(local.sum(0), world).tolist()
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
