"""The memorize task: barcode planting, the memory-reset ablation, and a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from rmt.options import train_options
from rmt.tasks.memorize import MemorizeTask
from rmt.train import train

TINY = [
    "experiment=memorize",
    "data=lambda",
    "tokenizer.vocab_size=128",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "memory.memory_tokens=2",
    "memory.segment_tokens=16",
    "task.classes=4",
    "task.eval_samples=16",
    "task.report_samples=16",
    "task.report_segments=[1,2,4]",
    "curriculum.stages=[{segments: 1, steps: 2}, {segments: 2, steps: 2}]",
    "trainer.max_steps=4",
    "trainer.tokens_per_step=128",
    "trainer.eval_every=2",
    "trainer.progress=false",
]


def compose_config(overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def task_and_runner(lambda_genome, lambda_bpe):
    from rmt.train import make_runner

    runner = make_runner(train_options(compose_config(TINY)), lambda_bpe).eval()
    held = [lambda_genome.intervals[0]]
    task = MemorizeTask(
        runner,
        lambda_genome,
        lambda_bpe,
        held,
        seed=0,
        device=torch.device("cpu"),
        amp=None,
        classes=4,
    )
    return task, runner


def test_barcode_is_planted_inside_the_first_segment(task_and_runner, lambda_genome, lambda_bpe):
    task, _ = task_and_runner
    rng = np.random.default_rng(0)
    for _ in range(20):
        window = lambda_genome.sample_window(task._window_bp(4 * 16), rng)
        ids, label = task._sample(rng, window.seq, 16, 4 * 16)
        assert len(ids) == 4 * 16
        first = lambda_bpe.decode(ids[:16])
        # Token boundaries may shave a base or two off the barcode's ends, never its core.
        assert task.barcodes[label][3:-3] in first


def test_memory_reset_ablation_sees_only_the_last_segment(task_and_runner, lambda_genome):
    task, runner = task_and_runner
    rng = np.random.default_rng(1)
    seqs = [lambda_genome.sample_window(task._window_bp(32), rng).seq for _ in range(3)]
    batch = task._batch(rng, seqs, 16, 2)
    ids, mask = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        one_carried = task.logits(runner, ids[:, :16], mask[:, :16])
        one_reset = task.logits(runner, ids[:, :16], mask[:, :16], reset_memory=True)
        torch.testing.assert_close(one_carried, one_reset)
        other_first = ids.clone()
        other_first[:, :16] = ids[[1, 2, 0], :16]
        reset_a = task.logits(runner, ids, mask, reset_memory=True)
        reset_b = task.logits(runner, other_first, mask, reset_memory=True)
        torch.testing.assert_close(reset_a, reset_b)  # the first segment is forgotten
        carried_b = task.logits(runner, other_first, mask)
        assert (task.logits(runner, ids, mask) - carried_b).abs().max() > 1e-6


def test_memorize_experiment_trains_and_reports(tmp_path):
    result = train(train_options(compose_config(TINY)), tmp_path)
    report = json.loads((tmp_path / "memorize_eval.json").read_text())
    assert report["classes"] == 4 and report["chance"] == 0.25
    assert set(report["accuracy"]) == set(report["accuracy_memory_reset"]) == {"1", "2", "4"}
    assert all(0 <= v <= 1 for v in report["accuracy"].values())
    assert result["accuracy_1"] == report["accuracy"]["1"]
    assert (tmp_path / "checkpoints" / "latest").is_file()
