"""Curricula that grow the number of segments per training sample.

Imports nothing of the model or data code: a curriculum maps training progress (and,
for the threshold policy, evaluation metrics) to a segment count, and is plain,
checkpointable data.
"""

from curriculum.schedule import (
    POLICIES,
    Curriculum,
    Stage,
    build_curriculum,
    doubling_stages,
    step_plan,
)

__all__ = ["POLICIES", "Curriculum", "Stage", "build_curriculum", "doubling_stages", "step_plan"]
