"""Curriculum policies, mixed lengths, the token budget and resumable state."""

from __future__ import annotations

import pytest

from curriculum import Curriculum, build_curriculum, doubling_stages, step_plan
from data import MLMBatches


def run(curriculum: Curriculum, steps: int) -> tuple[list[int], list[dict]]:
    segments, events = [], []
    for _ in range(steps):
        segments.append(curriculum.sample_segments())
        event = curriculum.step_done()
        if event:
            events.append(event)
    return segments, events


def test_fixed_schedule_advances_as_configured():
    c = build_curriculum(
        {"policy": "fixed", "stages": [{"segments": 1, "steps": 2}, {"segments": 4, "steps": 3}]}
    )
    segments, events = run(c, 5)
    assert segments == [1, 1, 4, 4, 4]
    assert [(e["step"], e["segments"], e["reason"]) for e in events] == [(2, 4, "steps")]
    assert c.done and c.total_steps == 5 and c.max_segments == 4


@pytest.mark.parametrize(
    ("max_segments", "start", "expected"),
    [(16, 1, [1, 2, 4, 8, 16]), (12, 1, [1, 2, 4, 8, 12]), (8, 2, [2, 4, 8]), (1, 1, [1])],
)
def test_doubling_reaches_max_segments(max_segments, start, expected):
    assert [s.segments for s in doubling_stages(max_segments, 10, start)] == expected
    c = build_curriculum(
        {"policy": "doubling", "max_segments": max_segments, "steps_per_stage": 2, "start": start}
    )
    segments, _ = run(c, 2 * len(expected))
    assert segments == [n for n in expected for _ in range(2)]


def threshold(**overrides) -> Curriculum:
    config = {
        "policy": "threshold",
        "metric": "accuracy",
        "target": 0.9,
        "stages": [
            {"segments": 1, "steps": 100},
            {"segments": 2, "steps": 3},
            {"segments": 4, "steps": 5},
        ],
        **overrides,
    }
    return build_curriculum(config)


def test_threshold_advances_on_target_and_at_the_cap():
    c = threshold()
    run(c, 10)
    assert c.observe({"accuracy": 0.5, "loss": 1.0}) is None and c.stage == 0
    event = c.observe({"accuracy": 0.95})
    assert event == {
        "step": 10,
        "from_stage": 0,
        "to_stage": 1,
        "segments": 2,
        "reason": "target",
        "accuracy": 0.95,
    }
    _, events = run(c, 3)  # stage 1 never meets its target: its cap moves it on
    assert [e["reason"] for e in events] == ["cap"] and c.segments == 4
    assert c.observe({"accuracy": 1.0}) is None  # the last stage has nowhere to go


def test_threshold_lower_is_better_and_config_errors():
    c = threshold(metric="loss", target=0.2, higher_is_better=False)
    assert c.observe({"loss": 0.3}) is None
    assert c.observe({"loss": 0.1})["reason"] == "target"
    with pytest.raises(ValueError, match="available: \\['loss'\\]"):
        threshold().observe({"loss": 1.0})
    # In the library's own parameter names; rmt-train qualifies them (curriculum.metric).
    with pytest.raises(ValueError, match=r"^policy='threshold' needs `metric` and `target`"):
        build_curriculum({"policy": "threshold", "stages": [{"segments": 1, "steps": 1}]})
    with pytest.raises(ValueError, match=r"^policy='cosine'; choose one of fixed, doubling"):
        build_curriculum({"policy": "cosine", "stages": [{"segments": 1, "steps": 1}]})
    with pytest.raises(ValueError, match=r"^stages entry \{segments: 0, steps: 1\}: segments"):
        build_curriculum({"policy": "fixed", "stages": [{"segments": 0, "steps": 1}]})
    with pytest.raises(ValueError, match=r"^stages entry \{'segment': 1\} needs exactly the keys"):
        build_curriculum({"policy": "fixed", "stages": [{"segment": 1}]})
    doubling = {"policy": "doubling", "max_segments": 2, "steps_per_stage": 1, "start": 4}
    with pytest.raises(
        ValueError, match=r"^policy=.doubling. needs 1 <= start=4 <= max_segments=2$"
    ):
        build_curriculum(doubling)
    with pytest.raises(ValueError, match=r"^mix_fraction=1\.5 must be in \[0, 1\]"):
        build_curriculum({"policy": "fixed", "stages": [{"segments": 1, "steps": 1}],
                          "mix_fraction": 1.5})  # fmt: skip


def test_mixed_lengths_stay_within_bounds_at_the_configured_rate():
    c = build_curriculum(
        {"policy": "fixed", "stages": [{"segments": 8, "steps": 4000}], "mix_fraction": 0.25},
        seed=3,
    )
    draws = [c.sample_segments() for _ in range(4000)]
    assert set(draws) <= set(range(1, 9)) and set(draws) > {8}
    shorter = sum(d < 8 for d in draws) / len(draws)
    assert shorter == pytest.approx(0.25, abs=0.03)
    one = build_curriculum(
        {"policy": "fixed", "stages": [{"segments": 1, "steps": 5}], "mix_fraction": 1.0}
    )
    assert {one.sample_segments() for _ in range(50)} == {1}


@pytest.mark.parametrize("segments", [1, 2, 3, 4, 8, 16])
def test_token_budget_is_preserved_across_stages(segments):
    plan = step_plan(segments, 128, tokens_per_step=16 * 128, micro_batch_tokens=4 * 128)
    assert sum(plan) * segments * 128 == pytest.approx(16 * 128, rel=0.34)
    if 16 % segments == 0:
        assert sum(plan) * segments * 128 == 16 * 128
    assert all(size * segments * 128 <= 4 * 128 or size == 1 for size in plan)
    assert max(plan) - min(plan) <= 1


def test_state_round_trip_continues_identically():
    config = {
        "policy": "fixed",
        "stages": [{"segments": 4, "steps": 5}, {"segments": 8, "steps": 5}],
        "mix_fraction": 0.5,
    }
    a = build_curriculum(config, seed=7)
    run(a, 3)
    b = build_curriculum(config, seed=99)
    b.load_state_dict(a.state_dict())
    assert run(a, 7) == run(b, 7)
    other = build_curriculum({**config, "stages": [{"segments": 2, "steps": 5}]})
    with pytest.raises(ValueError, match="curriculum stages differ"):
        other.load_state_dict(a.state_dict())


def test_window_length_follows_the_segment_count(lambda_genome, lambda_bpe):
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=0)
    for segments in (1, 4, 16):
        want = batches.window_bp(segments * 64)
        assert want == pytest.approx(segments * 64 * batches.bp_per_token * 1.3, abs=1)
        batch = batches.sample(2, segments * 64)
        assert batch.input_ids.shape == (2, segments * 64)
        assert all(w.end - w.start <= want for w in batch.windows)
    # Longer than the record: the whole record, padded.
    whole = batches.sample(1, 20_000)
    assert whole.windows[0].end - whole.windows[0].start == len(
        lambda_genome.fetch(*_whole(lambda_genome))
    )
    assert not whole.attention_mask[0, -1]


def _whole(genome):
    ((chrom, length),) = genome.lengths.items()
    return chrom, 0, length
