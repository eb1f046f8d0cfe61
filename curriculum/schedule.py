"""Segment-count curricula: how many segments each training step uses.

Stages are plain data (`{segments, steps}`), so they live in Hydra configs and in
checkpoints. A `Curriculum` walks them with one of three policies:

- `fixed`: an explicit list of stages, each run for its `steps`;
- `doubling`: 1, 2, 4, ... up to `max_segments`, `steps_per_stage` each;
- `threshold`: advance when an evaluation metric reaches `target`; a stage's `steps`
  is its cap, so a stuck stage cannot run forever.

Mixed lengths: with probability `mix_fraction` a step draws a random shorter segment
count (uniform over 1 .. current-1), so a model does not forget short inputs.
All state (step, stage, step within stage, the mixing RNG, history) round-trips
through `state_dict`, so a resumed run continues at the same stage and step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

POLICIES = ("fixed", "doubling", "threshold")


@dataclass(frozen=True)
class Stage:
    segments: int
    steps: int

    def __post_init__(self) -> None:
        if self.segments < 1 or self.steps < 1:
            raise ValueError(
                f"stages entry {{segments: {self.segments}, steps: {self.steps}}}: segments "
                "and steps must both be >= 1"
            )


def doubling_stages(max_segments: int, steps_per_stage: int, start: int = 1) -> list[Stage]:
    """start, 2*start, 4*start, ... up to max_segments, `steps_per_stage` steps each."""
    if start < 1 or max_segments < start:
        raise ValueError(
            f"policy='doubling' needs 1 <= start={start} <= max_segments={max_segments}"
        )
    counts = []
    while start < max_segments:
        counts.append(start)
        start *= 2
    counts.append(max_segments)
    return [Stage(n, steps_per_stage) for n in counts]


def _as_stage(stage: Stage | Mapping) -> Stage:
    """A `stages` entry as a Stage: a mapping needs exactly `segments` and `steps`."""
    if isinstance(stage, Stage):
        return stage
    if set(stage) != {"segments", "steps"}:
        raise ValueError(f"stages entry {dict(stage)} needs exactly the keys segments and steps")
    return Stage(**stage)


class Curriculum:
    """Which segment count each step uses, and when to move to the next stage."""

    def __init__(
        self,
        stages: Sequence[Stage | Mapping],
        policy: str = "fixed",
        metric: str | None = None,
        target: float | None = None,
        higher_is_better: bool = True,
        mix_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}; choose one of {', '.join(POLICIES)}")
        if not stages:
            raise ValueError("stages=[] is empty: give at least one {segments, steps}")
        if policy == "threshold" and (metric is None or target is None):
            raise ValueError(
                f"policy='threshold' needs `metric` and `target`; got metric={metric!r}, "
                f"target={target!r}"
            )
        if not 0.0 <= mix_fraction <= 1.0:
            raise ValueError(f"mix_fraction={mix_fraction} must be in [0, 1]")
        self.stages = [_as_stage(s) for s in stages]
        self.policy, self.metric, self.target = policy, metric, target
        self.higher_is_better, self.mix_fraction = higher_is_better, mix_fraction
        self.rng = random.Random(seed)
        self.step = self.stage = self.stage_step = 0
        self.history: list[dict] = []

    # -- reading ----------------------------------------------------------------------
    @property
    def segments(self) -> int:
        """The current stage's segment count (what evaluation and window sizing use)."""
        return self.stages[self.stage].segments

    @property
    def max_segments(self) -> int:
        return max(stage.segments for stage in self.stages)

    @property
    def total_steps(self) -> int:
        """Steps when every stage runs its full `steps` (for threshold: the caps)."""
        return sum(stage.steps for stage in self.stages)

    @property
    def done(self) -> bool:
        return self.stage == len(self.stages) - 1 and self.stage_step >= self.stages[-1].steps

    def sample_segments(self) -> int:
        """This step's segment count: the stage's, or with `mix_fraction` a shorter one."""
        current = self.segments
        if current > 1 and self.mix_fraction > 0 and self.rng.random() < self.mix_fraction:
            return self.rng.randint(1, current - 1)
        return current

    # -- advancing --------------------------------------------------------------------
    def step_done(self) -> dict | None:
        """Count one optimizer step; returns the stage transition it caused, if any."""
        self.step += 1
        self.stage_step += 1
        if self.stage_step >= self.stages[self.stage].steps and not self.done:
            return self._advance("cap" if self.policy == "threshold" else "steps")
        return None

    def observe(self, metrics: Mapping[str, float]) -> dict | None:
        """Feed evaluation metrics; the threshold policy advances when the target is met."""
        if self.policy != "threshold" or self.stage == len(self.stages) - 1:
            return None
        if self.metric not in metrics:
            raise ValueError(
                f"metric={self.metric!r} is not an evaluation metric; available: {sorted(metrics)}"
            )
        value = metrics[self.metric]
        if value is None:  # not measurable at this length (memory gain at one segment)
            return None
        met = value >= self.target if self.higher_is_better else value <= self.target
        return self._advance("target", {self.metric: value}) if met else None

    def _advance(self, reason: str, extra: Mapping | None = None) -> dict:
        event = {
            "step": self.step,
            "from_stage": self.stage,
            "to_stage": self.stage + 1,
            "segments": self.stages[self.stage + 1].segments,
            "reason": reason,
            **(extra or {}),
        }
        self.stage += 1
        self.stage_step = 0
        self.history.append(event)
        return event

    # -- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "stage": self.stage,
            "stage_step": self.stage_step,
            "history": list(self.history),
            "rng": self.rng.getstate(),
            "stages": [asdict(s) for s in self.stages],
        }

    def load_state_dict(self, state: Mapping) -> None:
        if [Stage(**s) for s in state["stages"]] != self.stages:
            raise ValueError(
                "the checkpoint's curriculum stages differ from the configured ones; "
                "resume with the same curriculum config or start a new run directory"
            )
        self.step, self.stage, self.stage_step = state["step"], state["stage"], state["stage_step"]
        self.history = list(state["history"])
        self.rng.setstate(state["rng"])


def build_curriculum(config: Mapping, seed: int = 0) -> Curriculum:
    """A Curriculum from the `curriculum` config group."""
    config = dict(config)
    policy = config.pop("policy", "fixed")
    if policy == "doubling":
        keys = ("max_segments", "steps_per_stage", "start")
        args = {k: config.pop(k) for k in keys if k in config}
        try:
            config["stages"] = doubling_stages(**args)
        except TypeError as err:
            raise ValueError(f"policy='doubling': {err}") from None
    try:
        return Curriculum(policy=policy, seed=seed, **config)
    except TypeError as err:
        raise ValueError(f"policy={policy!r}: {err}") from None


def step_plan(
    segments: int, segment_tokens: int, tokens_per_step: int, micro_batch_tokens: int
) -> list[int]:
    """Micro-batch sizes (samples) of one optimizer step at a fixed token budget.

    Samples per step = tokens_per_step / (segments x segment_tokens), so every stage sees
    the same number of tokens per update; they are split into gradient-accumulation
    micro-batches of at most `micro_batch_tokens` tokens (at least one sample each).
    """
    sample_tokens = segments * segment_tokens
    samples = max(1, round(tokens_per_step / sample_tokens))
    per_micro = max(1, micro_batch_tokens // sample_tokens)
    chunks = math.ceil(samples / per_micro)
    base, extra = divmod(samples, chunks)
    return [base + (i < extra) for i in range(chunks)]
