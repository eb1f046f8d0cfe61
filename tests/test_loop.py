"""The training loop's seams: loss reduction, prefetching, the state registry, the sink."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from data import IGNORE_INDEX, MLMBatches
from kernels.reference import IGNORE_INDEX as KERNEL_IGNORE_INDEX
from rmt.checkpoint import build_runner
from rmt.encoder import EncoderConfig
from rmt.evaluate import evaluate
from rmt.loss import label_counts, reduce_loss, scored_tokens
from rmt.metrics import MetricsSink, scalars
from rmt.prefetch import Prefetcher
from rmt.state import TrainState, Values

SEG = 16


def test_one_ignore_index():
    assert IGNORE_INDEX is KERNEL_IGNORE_INDEX == -100


@pytest.mark.parametrize("loss_on", ["all", "last"])
def test_reduce_loss_is_the_runners_loss(loss_on):
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2)
    runner = build_runner(config, {"memory_tokens": 2, "segment_tokens": SEG, "loss_on": loss_on})
    ids = torch.randint(5, 40, (3, 3 * SEG))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, IGNORE_INDEX)
    out = runner(ids, labels=labels, return_hidden=True)
    torch.testing.assert_close(reduce_loss(out.segment_sums, out.segment_counts, loss_on), out.loss)
    assert torch.equal(label_counts(labels, SEG), out.segment_counts)
    scored = labels if loss_on == "all" else labels[:, -SEG:]
    hidden = out.hidden if loss_on == "all" else out.hidden[:, -SEG:]
    want = F.cross_entropy(runner.head(hidden).flatten(0, 1), scored.flatten())
    torch.testing.assert_close(out.loss, want)
    assert int(scored_tokens(out.segment_counts, loss_on)) == int((scored != IGNORE_INDEX).sum())


def test_evaluation_reduces_like_the_training_loss(lambda_genome, lambda_bpe):
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=lambda_bpe.vocab_size, d_model=16, n_layers=1, n_heads=2)
    runner = build_runner(config, {"memory_tokens": 2, "segment_tokens": SEG})
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=0)
    region = [lambda_genome.intervals[0]]
    kwargs = {"segments": 3, "batch_size": 4, "max_tokens": 1024}
    every = evaluate(runner, batches, region, **kwargs)
    runner.loss_on = "last"
    last = evaluate(runner, batches, region, **kwargs)
    assert every["segment_losses"] == last["segment_losses"]  # the same tokens scored
    assert last["loss"] == pytest.approx(last["segment_losses"][-1], rel=1e-6)
    assert every["loss"] != pytest.approx(last["loss"], rel=1e-3)
    assert last["masked_tokens"] < every["masked_tokens"]


def test_prefetcher_hands_out_a_result_only_for_its_own_key():
    calls, threads = [], set()

    def prepare(key):
        calls.append(key)
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return ("batch", key)

    with Prefetcher(prepare) as prefetch:
        prefetch.submit(1)
        time.sleep(0.01)
        value, _ = prefetch.get(1)  # prepared in the background
        assert value == ("batch", 1)
        prefetch.submit(2)
        value, waited = prefetch.get(3)  # the plan changed: 2 is dropped, 3 made now
        assert value == ("batch", 3) and prefetch.misses == 1 and waited >= 0.05
        value, _ = prefetch.get(4)  # nothing pending
        assert value == ("batch", 4)
    assert any(name.startswith("rmt-prefetch") for name in threads)
    assert calls[0] == 1 and {3, 4} <= set(calls)


def test_prefetcher_raises_the_workers_error_in_the_caller():
    def prepare(key):
        raise ValueError(f"bad FASTA for {key}")

    with Prefetcher(prepare) as prefetch:
        prefetch.submit("a")
        with pytest.raises(ValueError, match="bad FASTA for a"):
            prefetch.get("a")


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def test_train_state_saves_and_restores_every_part(tmp_path):
    counter, values = Counter(), Values(initial_eval=None)
    state = TrainState(counter=counter, run=values)
    counter.n, values["initial_eval"] = 7, {"loss": 1.5}
    torch.save(state.state_dict(), tmp_path / "state.pt")
    fresh_counter, fresh_values = Counter(), Values(initial_eval=None)
    fresh = TrainState(counter=fresh_counter, run=fresh_values)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert fresh_counter.n == 7 and fresh_values["initial_eval"] == {"loss": 1.5}
    with pytest.raises(ValueError, match=r"old\.pt has no \['rng'\].*trainer\.resume=false"):
        TrainState(counter=Counter(), rng=Counter()).load_state_dict(
            {"counter": {"n": 1}}, tmp_path / "old.pt"
        )


def test_metrics_sink_writes_json_lines_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [
        {"step": 1, "split": "train", "loss": 2.5, "segment_losses": [2.0, 3.0], "lr": 1e-3},
        {"step": 2, "split": "eval", "loss": 2.25, "segments": 2},
        {"split": "curriculum", "step": 2, "to_stage": 1, "reason": "steps"},
    ]
    sink = MetricsSink(tmp_path, tensorboard=True)
    for record in records:
        sink.write(record)
    sink.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == set(scalars(records[0]) | scalars(records[1]) | scalars(records[2]))
    assert {"train/segment_losses/1", "eval/loss", "curriculum/to_stage"} <= tags
    (point,) = events.Scalars("train/segment_losses/1")
    assert (point.step, point.value) == (1, 3.0)


def test_metrics_sink_off_rank_zero_writes_nothing(tmp_path):
    sink = MetricsSink(tmp_path / "run", enabled=False, tensorboard=True)
    sink.write({"step": 1, "split": "train", "loss": 1.0})
    sink.close()
    assert not (tmp_path / "run").exists()
