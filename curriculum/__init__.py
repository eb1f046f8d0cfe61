"""Curricula that grow the number of segments per training sample.

Imports nothing of the model or data code: a schedule maps a training step to a
segment count and is plain, checkpointable data.
"""

from curriculum.schedule import POLICIES, Schedule, Stage, build_schedule, doubling, fixed

__all__ = ["POLICIES", "Schedule", "Stage", "build_schedule", "doubling", "fixed"]
