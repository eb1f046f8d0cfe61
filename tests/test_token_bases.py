"""Per-base labels <-> BPE tokens (rmt.token_bases) on real BPE tokens of phage lambda."""

from __future__ import annotations

import numpy as np
import pytest

from data import BPETokenizer, Genome, NucleotideTokenizer
from data.masking import IGNORE_INDEX
from rmt.token_bases import base_predictions, base_tokens, max_token_bases, token_base_labels

CLASSES = 3


@pytest.fixture(scope="module")
def pieces(lambda_genome: Genome) -> list[str]:
    """Stretches of lambda of mixed lengths, from 1 bp to 6 kb."""
    starts_lengths = [(0, 1), (100, 7), (5_000, 333), (20_000, 2_049), (30_000, 6_000)]
    return [lambda_genome.fetch("NC_001416.1", s, s + n) for s, n in starts_lengths]


def random_labels(length: int, seed: int, unlabelled: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, length)
    return np.where(rng.random(length) < unlabelled, IGNORE_INDEX, labels)


def one_hot_head(token_labels: np.ndarray) -> np.ndarray:
    """An identity head: logits = one-hot of each token base's label (IGNORE -> class C)."""
    classes = np.where(token_labels == IGNORE_INDEX, CLASSES, token_labels)
    return np.eye(CLASSES + 1, dtype=np.float32)[classes]


def test_max_token_bases_is_the_longest_token(lambda_bpe: BPETokenizer, pieces) -> None:
    longest = max_token_bases(lambda_bpe)
    spans = np.concatenate([np.diff(lambda_bpe.encode(p).offsets, axis=1)[:, 0] for p in pieces])
    assert 1 < spans.max() <= longest
    decoded = [lambda_bpe.decode([i]) for i in range(lambda_bpe.vocab_size)]
    assert longest == max(len(d) for d in decoded)
    assert max_token_bases(NucleotideTokenizer()) == 1


def test_labels_to_tokens_and_back_recover_every_base(lambda_bpe: BPETokenizer, pieces) -> None:
    limit = max_token_bases(lambda_bpe)
    for seed, piece in enumerate(pieces):
        offsets = lambda_bpe.encode(piece).offsets
        labels = random_labels(len(piece), seed)
        token_labels = token_base_labels(offsets, labels, limit)
        assert token_labels.shape == (len(offsets), limit) and token_labels.dtype == np.int64
        back = base_predictions(offsets, one_hot_head(token_labels), len(piece))
        assert back.shape == (len(piece), CLASSES + 1) and not np.isnan(back).any()
        recovered = back.argmax(-1)
        np.testing.assert_array_equal(
            np.where(recovered == CLASSES, IGNORE_INDEX, recovered), labels
        )


def test_token_labels_are_ignored_past_each_tokens_end(lambda_bpe: BPETokenizer, pieces) -> None:
    offsets = lambda_bpe.encode(pieces[3]).offsets
    limit = max_token_bases(lambda_bpe)
    labels = token_base_labels(offsets, np.zeros(len(pieces[3]), dtype=np.int64), limit)
    sizes = offsets[:, 1] - offsets[:, 0]
    np.testing.assert_array_equal((labels != IGNORE_INDEX).sum(1), sizes)
    assert (labels[np.arange(limit) >= sizes[:, None]] == IGNORE_INDEX).all()


def test_every_base_knows_its_token(lambda_bpe: BPETokenizer, pieces) -> None:
    piece = pieces[4]
    offsets = lambda_bpe.encode(piece).offsets
    token, within = base_tokens(offsets, len(piece))
    assert (token >= 0).all() and (np.diff(token) >= 0).all()
    np.testing.assert_array_equal(offsets[token, 0] + within, np.arange(len(piece)))
    spelled = [lambda_bpe.decode([i]) for i in lambda_bpe.encode(piece).ids]
    assert "".join(spelled[t][w] for t, w in zip(token, within, strict=True)) == piece.upper()


def test_bases_no_token_covers_get_nan() -> None:
    offsets = np.array([[0, 2], [4, 5]])
    logits = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    out = base_predictions(offsets, logits, 6)
    np.testing.assert_array_equal(out[[0, 1, 4]], logits[[0, 0, 1], [0, 1, 0]])
    assert np.isnan(out[[2, 3, 5]]).all()


def test_a_token_longer_than_the_limit_is_refused(lambda_bpe: BPETokenizer, pieces) -> None:
    offsets = lambda_bpe.encode(pieces[3]).offsets
    with pytest.raises(ValueError, match=r"more than max_token_bases=1; use max_token_bases"):
        token_base_labels(offsets, np.zeros(len(pieces[3]), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="outside the sequence of 10 bp"):
        token_base_labels(offsets, np.zeros(10, dtype=np.int64), max_token_bases(lambda_bpe))
