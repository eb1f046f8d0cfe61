"""The Python API (rmt.api) against manual runner passes, on real lambda DNA and BPE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data import BPETokenizer, Genome, reverse_complement
from rmt import EncoderConfig, MemoryRunner, build_runner, save_checkpoint
from rmt.api import (
    Embed,
    SequenceClassification,
    SequenceRegression,
    TokenClassification,
)
from rmt.api_base import Batch
from rmt.checkpoint import write_latest
from rmt.heads import SequenceHead, TokenClassificationHead
from rmt.token_bases import base_predictions, max_token_bases

D, SEG = 32, 8
LENGTHS = (300, 20, 130)  # bp: many segments, one segment, a few


@pytest.fixture(scope="module")
def sequences(lambda_genome: Genome) -> list[str]:
    starts = (1_000, 9_000, 30_000)
    pairs = zip(starts, LENGTHS, strict=True)
    return [lambda_genome.fetch("NC_001416.1", s, s + n) for s, n in pairs]


def saved_model(path: Path, tokenizer: BPETokenizer, head: torch.nn.Module | None) -> Path:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, d_model=D, n_layers=2, n_heads=2)
    runner = build_runner(config, {"memory_tokens": 4, "segment_tokens": SEG}, kernels="torch")
    if head is not None:
        torch.nn.init.normal_(head.mlp[3].weight)  # outputs that differ between inputs
        runner.task_head = head
    return save_checkpoint(path, runner, tokenizer)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lambda_bpe: BPETokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    regression = SequenceHead(D, 2, kind="regression", pool="both", names=["a", "b"])
    regression.set_normalization(torch.tensor([100.0, -3.0]), torch.tensor([20.0, 0.5]))
    heads = {
        "pretrained": None,
        "classification": SequenceHead(D, 3, pool="both", names=["x", "y", "z"]),
        "regression": regression,
        "token": TokenClassificationHead(D, 3, max_token_bases(lambda_bpe)),
    }
    return {kind: saved_model(root / kind, lambda_bpe, head) for kind, head in heads.items()}


def ids_of(model, seq: str) -> torch.Tensor:
    return torch.from_numpy(model.tokenizer.encode(seq).ids)[None]


def stepped(runner: MemoryRunner, ids: torch.Tensor, reset: bool = False):
    """Segment by segment through runner.step: per-segment (input memory, hidden, memory)."""
    memory, steps = runner.init_memory(1), []
    for segment in ids.split(SEG, dim=1):
        start = runner.init_memory(1) if reset else memory
        out, memory = runner.step(segment, start)
        steps.append((out.hidden, memory))
    return steps


@torch.no_grad()
def test_embeddings_equal_a_manual_pass_and_each_sequence_alone(runs, sequences) -> None:
    embed = Embed.from_pretrained(runs["pretrained"], tokens=True, bases=True)
    got = embed.predict(sequences, batch_size=2)
    for i, seq in enumerate(sequences):
        steps = stepped(embed.runner, ids_of(embed, seq))
        hidden = torch.cat([h for h, _ in steps], 1)[0].numpy()
        np.testing.assert_allclose(got.tokens[i], hidden, atol=1e-5)
        np.testing.assert_allclose(got.sequence[i], hidden.mean(0), atol=1e-5)
        np.testing.assert_allclose(got.memory[i], steps[-1][1][0].mean(0).numpy(), atol=1e-5)
        means = [h[0].mean(0).numpy() for h, _ in steps]
        np.testing.assert_allclose(got.segments[i], np.stack(means), atol=1e-5)
        offsets = embed.tokenizer.encode(seq).offsets
        token = np.repeat(np.arange(len(offsets)), offsets[:, 1] - offsets[:, 0])
        np.testing.assert_allclose(got.bases[i], hidden[token], atol=1e-5)
    assert len(got.segments[0]) > 4 and len(got.segments[1]) == 1


@torch.no_grad()
def test_classification_equals_stepping_the_segments_by_hand(runs, sequences) -> None:
    model = SequenceClassification.from_pretrained(runs["classification"])
    got = model.predict(sequences, batch_size=2)
    head = model.runner.task_head
    for i, seq in enumerate(sequences):
        hidden, memory = stepped(model.runner, ids_of(model, seq))[-1]
        logits = head(memory, hidden)[0].numpy()
        np.testing.assert_allclose(got.logits[i], logits, atol=1e-5)
        np.testing.assert_allclose(got.probabilities[i].sum(), 1.0, atol=1e-6)
        assert got.labels[i] == ["x", "y", "z"][int(logits.argmax())] == got.labels[i]
    assert len(set(got.logits[:, 0].round(4))) == 3  # the inputs are told apart


@torch.no_grad()
def test_memory_modes_reset_and_segment_average(runs, sequences) -> None:
    carried = SequenceRegression.from_pretrained(runs["regression"]).predict(sequences)
    reset = SequenceRegression.from_pretrained(runs["regression"], memory="reset")
    average = SequenceRegression.from_pretrained(runs["regression"], memory="segment_average")
    got_reset, got_average = reset.predict(sequences), average.predict(sequences, batch_size=2)
    head = reset.runner.task_head
    for i, seq in enumerate(sequences):
        alone = [head(m, h)[0].numpy() for h, m in stepped(reset.runner, ids_of(reset, seq), True)]
        np.testing.assert_allclose(got_reset.values[i], alone[-1], atol=1e-4)
        np.testing.assert_allclose(got_average.values[i], np.mean(alone, 0), atol=1e-4)
    np.testing.assert_allclose(carried.values[1], got_reset.values[1], atol=1e-4)  # 1 segment
    assert not np.allclose(carried.values[0], got_reset.values[0], atol=1e-3)  # memory counts
    assert np.abs(carried.values[:, 0] - 100).max() > 1  # original units, not normalised


@torch.no_grad()
@pytest.mark.parametrize("memory", ["carried", "reset", "segment_average"])
def test_outputs_by_segment_are_the_predictions_at_every_context_length(
    runs, sequences, memory
) -> None:
    model = SequenceRegression.from_pretrained(runs["regression"], memory=memory)
    got = model.outputs_by_segment(model.collate(sequences))
    for i, seq in enumerate(sequences):
        ids = ids_of(model, seq)
        n = -(-ids.shape[1] // SEG)
        for j in (0, n // 2, n - 1):  # the model given the first j + 1 segments only
            prefix = ids[:, : (j + 1) * SEG]
            batch = Batch(prefix, torch.ones_like(prefix, dtype=torch.bool), [], [])
            expected = model.outputs(batch)[0].numpy()
            np.testing.assert_allclose(got[i, j], expected, rtol=1e-4, atol=1e-4)
        assert np.isnan(got[i, n:]).all()


def manual_base_probabilities(model: TokenClassification, seq: str) -> np.ndarray:
    hidden = torch.cat([h for h, _ in stepped(model.runner, ids_of(model, seq))], 1)
    probabilities = model.runner.task_head(hidden)[0].softmax(-1).numpy()
    return base_predictions(model.tokenizer.encode(seq).offsets, probabilities, len(seq))


@torch.no_grad()
def test_token_classification_per_base_and_both_strands(runs, sequences) -> None:
    one = TokenClassification.from_pretrained(runs["token"]).predict(sequences, batch_size=2)
    both = TokenClassification.from_pretrained(runs["token"], both_strands=True)
    got = both.predict(sequences, batch_size=2)
    for i, seq in enumerate(sequences):
        assert seq != reverse_complement(seq)
        forward = manual_base_probabilities(both, seq)
        np.testing.assert_allclose(one.probabilities[i], forward, atol=1e-5)
        backward = manual_base_probabilities(both, reverse_complement(seq))[::-1]
        np.testing.assert_allclose(got.probabilities[i], (forward + backward) / 2, atol=1e-5)
        assert got.probabilities[i].shape == (len(seq), 3)
        np.testing.assert_array_equal(got.predicted[i], got.probabilities[i].argmax(1))
    assert not np.allclose(one.probabilities[0], got.probabilities[0], atol=1e-3)


def test_a_model_without_the_right_head_says_how_to_make_one(runs) -> None:
    fix = "fine-tune one first: rmt-finetune task=sequence_classification checkpoint="
    with pytest.raises(ValueError, match=f"without a task head; {fix}"):
        SequenceClassification.from_pretrained(runs["pretrained"])
    with pytest.raises(ValueError, match="not a sequence_classification head"):
        SequenceClassification.from_pretrained(runs["regression"])
    with pytest.raises(ValueError, match="not a token_classification head"):
        TokenClassification.from_pretrained(runs["classification"])
    with pytest.raises(ValueError, match=r"memory='segment_average'; choose one of"):
        TokenClassification.from_pretrained(runs["token"], memory="segment_average")
    with pytest.raises(ValueError, match="sequence 1 of the batch is empty"):
        Embed.from_pretrained(runs["pretrained"]).collate(["ACGT", ""])


@torch.no_grad()
def test_a_fine_tuning_run_gives_its_best_checkpoint(tmp_path: Path, lambda_bpe, sequences) -> None:
    run = tmp_path / "run"
    for name, seed in (("step-00000002", 1), ("best", 2)):
        torch.manual_seed(seed)  # heads that differ
        saved_model(run / "checkpoints" / name, lambda_bpe, SequenceHead(D, 3))
    write_latest(run / "checkpoints", "step-00000002", keep=1)
    want = SequenceClassification.from_pretrained(run / "checkpoints" / "best")
    other = SequenceClassification.from_pretrained(run / "checkpoints" / "step-00000002")
    got = SequenceClassification.from_pretrained(run).predict(sequences[:1]).logits
    np.testing.assert_array_equal(got, want.predict(sequences[:1]).logits)
    assert not np.allclose(got, other.predict(sequences[:1]).logits)
