"""Segment-count schedules: how many segments each training step uses.

A schedule is a list of stages, each `{segments, steps}`, kept as plain data so it
can live in a Hydra config and in a checkpoint. Only the step counter is state: the
stage at any step is derived from it, so resuming at step s lands in the same stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    segments: int
    steps: int

    def __post_init__(self) -> None:
        if self.segments < 1 or self.steps < 1:
            raise ValueError(f"curriculum stage {self}: segments and steps must both be >= 1")


class Schedule:
    """Stages run in order; after the last one, its segment count continues."""

    def __init__(self, stages: Sequence[Stage | Mapping]) -> None:
        if not stages:
            raise ValueError("curriculum.stages is empty: give at least one {segments, steps}")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    @property
    def max_segments(self) -> int:
        return max(stage.segments for stage in self.stages)

    def stage_index(self, step: int) -> int:
        """Index of the stage that training step `step` (0-based) belongs to."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.steps
            if step < end:
                return index
        return len(self.stages) - 1

    def segments_at(self, step: int) -> int:
        return self.stages[self.stage_index(step)].segments


def fixed(stages: Sequence[Mapping]) -> Schedule:
    """An explicit list of stages."""
    return Schedule(stages)


def doubling(max_segments: int, steps_per_stage: int, start: int = 1) -> Schedule:
    """start, 2*start, 4*start, ... up to max_segments, `steps_per_stage` steps each."""
    if start < 1 or max_segments < start:
        raise ValueError(
            f"doubling curriculum needs 1 <= start ({start}) <= max_segments ({max_segments})"
        )
    counts = []
    while start < max_segments:
        counts.append(start)
        start *= 2
    counts.append(max_segments)
    return Schedule([Stage(n, steps_per_stage) for n in counts])


POLICIES = {"fixed": fixed, "doubling": doubling}


def build_schedule(config: Mapping) -> Schedule:
    """A schedule from a `curriculum` config: `policy` plus that policy's arguments."""
    config = dict(config)
    policy = config.pop("policy", None)
    if policy not in POLICIES:
        raise ValueError(f"curriculum.policy={policy!r}; choose one of {sorted(POLICIES)}")
    try:
        return POLICIES[policy](**config)
    except TypeError as err:
        raise ValueError(f"curriculum (policy={policy}): {err}") from None
