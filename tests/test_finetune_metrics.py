"""Fine-tuning metrics: small cases checked by hand, and the library's own functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from rmt.finetune_metrics import (
    classification_metrics,
    regression_metrics,
    score,
    token_metrics,
)
from rmt.finetune_options import METRICS


def binary_case() -> tuple[np.ndarray, np.ndarray]:
    """Truth 0 0 1 1; predicted 0 1 1 1 (P(class 1) = 0.1 0.6 0.7 0.9)."""
    p1 = np.array([0.1, 0.6, 0.7, 0.9])
    return np.array([0, 0, 1, 1]), np.stack([1 - p1, p1], 1)


def test_binary_classification_by_hand():
    y, probs = binary_case()
    m = classification_metrics(y, probs, ["neg", "pos"])
    assert m["samples"] == 4 and m["accuracy"] == 0.75
    # TP=2 TN=1 FP=1 FN=0: MCC = (2*1 - 1*0) / sqrt(3*2*2*1)
    assert m["mcc"] == pytest.approx(2 / math.sqrt(12))
    # pos: precision 2/3, recall 1 -> F1 0.8; neg: precision 1, recall 1/2 -> F1 2/3
    assert m["f1"] == pytest.approx({"neg": 2 / 3, "pos": 0.8})
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    # Both positives outscore both negatives: a perfect ranking.
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.9])))


def test_multiclass_ranking_is_the_librarys_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    onehot = np.eye(3)[y]
    assert m["auprc"] == pytest.approx(skm.average_precision_score(onehot, probs))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, probs.argmax(1)))
    assert m["loss"] == pytest.approx(skm.log_loss(y, probs))


def test_ranking_is_undefined_when_a_class_is_missing_from_the_truth():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(np.array([0, 1, 0]), probs, ["a", "b", "c"])
    assert m["auroc"] is None and m["auprc"] is None
    assert m["accuracy"] == 1.0 and m["f1"]["c"] == 0.0


def test_regression_by_hand_and_per_target():
    truth = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    pred = np.stack([2 * truth[:, 0] + 1, np.full(4, 0.5)], 1)  # linear; constant
    m = regression_metrics(truth, pred, ["x", "y"])
    x, y = m["per_target"]["x"], m["per_target"]["y"]
    assert x["pearson"] == pytest.approx(1.0) and x["spearman"] == pytest.approx(1.0)
    assert x["mse"] == pytest.approx(np.mean((truth[:, 0] + 1) ** 2))
    assert x["r2"] == pytest.approx(skm.r2_score(truth[:, 0], pred[:, 0]))
    # A constant prediction has no correlation: undefined, and so is the mean over targets.
    assert y["pearson"] is None and m["pearson"] is None
    assert y["mse"] == 0.25 and m["mse"] == pytest.approx((x["mse"] + 0.25) / 2)


def test_one_regression_target_matches_scipy():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=30)
    pred = truth + rng.normal(scale=0.5, size=30)
    m = regression_metrics(truth, pred, ["gc"])
    assert "per_target" not in m and m["samples"] == 30
    assert m["pearson"] == pytest.approx(stats.pearsonr(truth, pred).statistic)
    assert m["spearman"] == pytest.approx(stats.spearmanr(truth, pred).statistic)


def test_token_metrics_per_class_are_the_librarys():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    m = token_metrics(y, probs, ["exon", "intron", "flank"])
    pred = probs.argmax(1)
    f1 = skm.f1_score(y, pred, average=None)
    recall = skm.recall_score(y, pred, average=None)
    for i, name in enumerate(["exon", "intron", "flank"]):
        assert m["per_class"][name]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][name]["accuracy"] == pytest.approx(recall[i])
        assert m["per_class"][name]["support"] == int((y == i).sum())
    assert m["bases"] == 200 and m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


@pytest.mark.parametrize("kind", sorted(METRICS))
def test_every_metric_best_metric_may_name_is_reported(kind):
    y, probs = binary_case()
    if kind == "sequence_regression":
        result = score(kind, y.astype(float), probs[:, 1], ["target"])
    else:
        result = score(kind, y, probs, ["a", "b"])
    assert set(result) >= set(METRICS[kind])
