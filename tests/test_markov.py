"""The order-k Markov baseline (rmt.markov): counts, back-off scoring, sampling, saving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rmt.markov import MarkovModel, kmer_codes, kmer_spectra

BASES = "ACGT"


def order2_chain(seed: int = 7) -> np.ndarray:
    """A random order-2 chain: P[context code (16), next base (4)], rows from a Dirichlet."""
    return np.random.default_rng(seed).dirichlet(np.full(4, 0.5), size=16)


def sample_chain(P: np.ndarray, length: int, seed: int) -> str:
    """A plain loop drawing from the order-2 chain ``P`` (independent of MarkovModel)."""
    rng, cdf = np.random.default_rng(seed), np.cumsum(P, axis=1)
    out = list(rng.integers(0, 4, size=2))
    for u in rng.random(length - 2):
        row = cdf[out[-2] * 4 + out[-1]]
        out.append(min(int(np.searchsorted(row, u, side="right")), 3))
    return "".join(BASES[b] for b in out)


def entropy_rate(P: np.ndarray) -> float:
    """Bits per base of the chain: stationary distribution of its contexts times each
    context's next-base entropy. The context chain moves (a, b) -> (b, c) with P[ab, c]."""
    T = np.zeros((16, 16))
    for ab in range(16):
        for c in range(4):
            T[ab, (ab % 4) * 4 + c] = P[ab, c]
    values, vectors = np.linalg.eig(T.T)
    pi = np.real(vectors[:, np.argmin(abs(values - 1))])
    pi /= pi.sum()
    return float(-(pi[:, None] * P * np.log2(P)).sum())


def test_counts_and_probabilities_of_a_hand_made_sequence():
    model = MarkovModel(1).fit(["ACGTAC", "gtnA"])  # lower case counts; N breaks windows
    np.testing.assert_array_equal(model.counts[0], [[3, 2, 2, 2]])  # A C G T A C | G T A
    bigrams = np.zeros((4, 4), dtype=int)
    for pair in ("AC", "CG", "GT", "TA", "AC", "GT"):  # not "TN", "NA", nor "CG" across records
        bigrams[BASES.index(pair[0]), BASES.index(pair[1])] += 1
    np.testing.assert_array_equal(model.counts[1], bigrams)
    assert model.p("C", "A") == pytest.approx((2 + 1) / (2 + 4))
    assert model.p("G", "GTC") == pytest.approx((1 + 1) / (1 + 4))  # only the last base counts
    assert model.p("A") == pytest.approx((3 + 1) / (9 + 4))  # order 0: composition
    np.testing.assert_allclose(model.probabilities().sum(axis=1), 1.0)
    smooth = MarkovModel(1, pseudocount=0.5).fit("ACGTAC")
    assert smooth.p("C", "A") == pytest.approx((2 + 0.5) / (2 + 2))


def test_a_sequence_shorter_than_the_order_adds_no_order_k_counts():
    model = MarkovModel(3).fit(["ACG", "NNACGNNT"])
    assert model.counts[3].sum() == 0
    assert model.counts[2].sum() == 2  # "ACG" twice
    assert model.counts[0].sum() == 7


def test_kmer_helpers_never_span_records_or_n():
    assert kmer_codes(["AC", "GT", "ANC"], 2).tolist() == [1, 11]  # AC, GT
    spectra = kmer_spectra("ACGNT", 2)
    assert [s.sum() for s in spectra] == [4, 2]
    assert spectra[1][BASES.index("C") * 4 + BASES.index("G")] == 1


def test_order0_bits_of_uniform_random_sequence_is_two():
    rng = np.random.default_rng(0)
    train, test = ("".join(rng.choice(list(BASES), 200_000)) for _ in range(2))
    bits = MarkovModel(0).fit(train).bits_per_base(test)
    # The sampling sd of -log2 p is ~0 here; the fit's error costs ~ 3 / (2 n ln 2) bits.
    assert bits == pytest.approx(2.0, abs=0.002)


@pytest.mark.parametrize("order", [4, 5, 7])
def test_a_periodic_sequence_costs_almost_nothing_once_the_order_reaches_the_period(order):
    model = MarkovModel(order).fit("ACGGT" * 2000)
    bits = model.bits_per_base("GTACG" * 200)
    # Each seen transition has p = (c + 1) / (c + 4) with c ~ 2000 (~0.002 bits); the
    # first `order` bases back off to lower orders, which know the period less well.
    assert bits < 0.02
    assert MarkovModel(1).fit("ACGGT" * 2000).bits_per_base("GTACG" * 200) > 0.3


def test_refitting_a_known_order2_chain_recovers_it_and_its_entropy_rate():
    P = order2_chain()
    n = 200_000
    model = MarkovModel(2).fit(sample_chain(P, n, seed=1))
    per_context = model.counts[2].sum(axis=1, keepdims=True)
    sd = np.sqrt(P * (1 - P) / per_context)
    # 5 sd of the multinomial estimate, plus the pseudocounts' pull toward 1/4.
    assert (abs(model.probabilities() - P) < 5 * sd + 4 / per_context).all()
    held_out = model.bits_per_base(sample_chain(P, n, seed=2))
    # Standard error of the mean -log2 p over n bases is ~0.003; the fit's bias smaller.
    assert held_out == pytest.approx(entropy_rate(P), abs=0.01)
    assert held_out < 1.9  # the chain is far from uniform: it must be learnt, not guessed


def test_backoff_scores_every_acgt_base_with_the_longest_context_it_has():
    model = MarkovModel(3).fit("ACGTTGCAACGTAGGCTA" * 20)
    seq = "ACGTNACG"  # N: not scored, and the next base starts over at order 0
    terms = [
        model.p("A"),
        model.p("C", "A"),
        model.p("G", "AC"),
        model.p("T", "ACG"),
        model.p("A"),
        model.p("C", "A"),
        model.p("G", "AC"),
    ]
    expected = -sum(math.log2(p) for p in terms) / len(terms)
    assert model.bits_per_base(seq) == pytest.approx(expected)
    # Two records are scored as two sequences, each starting at order 0.
    assert model.bits_per_base(["ACGT", "ACG"]) == pytest.approx(
        -sum(math.log2(p) for p in terms[:4] + terms[4:]) / 7
    )


def test_seeded_sampling_is_deterministic_and_follows_the_prompt():
    model = MarkovModel(2).fit(sample_chain(order2_chain(), 20_000, seed=3))
    first = model.sample(5_000, np.random.default_rng(11))
    assert first == model.sample(5_000, np.random.default_rng(11))
    assert first != model.sample(5_000, np.random.default_rng(12))
    assert len(first) == 5_000 and set(first) <= set(BASES)
    cycle = MarkovModel(2, pseudocount=1e-9).fit("ACGT" * 500)
    assert cycle.sample(8, np.random.default_rng(0), prompt="ttNAC") == "GTACGTAC"
    assert cycle.sample(0, np.random.default_rng(0)) == ""


def test_samples_keep_the_fitted_statistics():
    P = order2_chain()
    model = MarkovModel(2).fit(sample_chain(P, 100_000, seed=4))
    refit = MarkovModel(2).fit(model.sample(100_000, np.random.default_rng(5)))
    assert abs(refit.probabilities() - model.probabilities()).max() < 0.05


def test_to_dict_round_trips_through_json():
    model = MarkovModel(3, pseudocount=0.25).fit("ACGTTGCAACGTAGGCTAN" * 10)
    again = MarkovModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert (again.order, again.pseudocount) == (3, 0.25)
    for a, b in zip(again.counts, model.counts, strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.bits_per_base("ACGTAGG") == model.bits_per_base("ACGTAGG")


def test_bad_arguments_and_saved_dicts_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"order=-1: give a whole number >= 0"):
        MarkovModel(-1)
    with pytest.raises(ValueError, match=r"order=12 needs 4\*\*13 counts.*at most 11"):
        MarkovModel(12)
    with pytest.raises(ValueError, match=r"pseudocount=0: give a number > 0"):
        MarkovModel(1, pseudocount=0)
    with pytest.raises(ValueError, match="call fit"):
        MarkovModel(1).bits_per_base("ACGT")
    with pytest.raises(ValueError, match="no base to score"):
        MarkovModel(1).fit("ACGT").bits_per_base("NNNN")
    saved = MarkovModel(1).fit("ACGT").to_dict()
    with pytest.raises(ValueError, match=r"'counts'\[1\] must be 16 counts"):
        MarkovModel.from_dict({**saved, "counts": [saved["counts"][0], [1, 2]]})
    with pytest.raises(ValueError, match=r"lacks key.*pseudocount"):
        MarkovModel.from_dict({k: v for k, v in saved.items() if k != "pseudocount"})
    with pytest.raises(ValueError, match="not a saved MarkovModel"):
        MarkovModel.from_dict({"order": 1})
