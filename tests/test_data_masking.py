"""BERT masking: rates, 80/10/10 split, specials and padding untouched, determinism."""

from __future__ import annotations

import pytest
import torch

from data import mask_tokens

VOCAB = 64
SPECIALS = frozenset(range(5))
MASK_ID = 4


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(64, 2048) ids with [CLS]/[SEP] at the ends and the last quarter padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (64, 2048), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[:, 1536:] = False
    ids[:, 1536:] = 3
    return ids, attention


def run(ids, attention, seed: int = 0, **kwargs):
    return mask_tokens(
        ids,
        mask_id=MASK_ID,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        generator=torch.Generator().manual_seed(seed),
        attention_mask=attention,
        **kwargs,
    )


def test_rates_and_80_10_10_split() -> None:
    ids, attention = make_batch()
    masked, labels = run(ids, attention)
    maskable = attention & (ids >= 5)
    selected = labels != -100
    assert selected.sum() / maskable.sum() == pytest.approx(0.15, abs=0.005)
    n = selected.sum().item()
    to_mask = (masked == MASK_ID) & selected
    kept = (masked == ids) & selected
    replaced = selected & ~to_mask & ~kept
    assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.01)
    # a random replacement equals the original with prob 1/59, which then counts as kept
    assert replaced.sum().item() / n == pytest.approx(0.1 * 58 / 59, abs=0.01)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / 59, abs=0.01)


def test_labels_specials_padding_and_replacements() -> None:
    ids, attention = make_batch(1)
    masked, labels = run(ids, attention, seed=1)
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected]), "unselected tokens stay as they are"
    assert not selected[:, 0].any() and not selected[:, -1].any(), "[CLS]/[SEP] never masked"
    assert not selected[~attention].any(), "padding never masked"
    replaced = selected & (masked != MASK_ID) & (masked != ids)
    assert replaced.any()
    assert (masked[replaced] >= 5).all() and (masked[replaced] < VOCAB).all()


def test_deterministic_given_generator() -> None:
    ids, attention = make_batch()
    first = run(ids, attention, seed=5)
    second = run(ids, attention, seed=5)
    other = run(ids, attention, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[1], other[1])
    assert torch.equal(ids, make_batch()[0]), "the input is not modified in place"


def test_extreme_probabilities_and_small_vocab() -> None:
    ids, attention = make_batch()
    _, none = run(ids, attention, mask_prob=0.0)
    assert (none == -100).all()
    _, everything = run(ids, attention, mask_prob=1.0)
    assert torch.equal(everything != -100, attention & (ids >= 5))
    nucleotides = torch.randint(5, 10, (8, 4000), generator=torch.Generator().manual_seed(0))
    masked, labels = mask_tokens(
        nucleotides,
        mask_id=4,
        vocab_size=10,
        special_ids=SPECIALS,
        generator=torch.Generator().manual_seed(0),
        mask_prob=0.5,
    )
    changed = masked[(labels != -100) & (masked != 4)]
    assert changed.numel() and ((changed >= 5) & (changed <= 9)).all()


def test_input_checks() -> None:
    with pytest.raises(TypeError, match="LongTensor"):
        mask_tokens(
            torch.zeros(2, 3, dtype=torch.int32), mask_id=4, vocab_size=10, special_ids=SPECIALS
        )
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(
            torch.zeros(2, 3, dtype=torch.long),
            mask_id=4,
            vocab_size=10,
            special_ids=SPECIALS,
            mask_prob=1.5,
        )
