"""Metrics of fine-tuned models, all from scikit-learn and scipy (none written here).

Each function takes what the model gave for a split (class probabilities, or predicted
values) with the truth, and returns a JSON-able dict: scalar headline metrics at the top
level (what `best_metric` names) and per-class or per-target breakdowns below them.

- sequence classification: loss (log loss), accuracy, MCC, macro F1 and F1 per class,
  AUROC and AUPRC (binary: of the second class; more classes: macro one-vs-rest), the
  last two only when every class occurs in the truth (undefined otherwise: None);
- sequence regression: Pearson and Spearman correlation, R^2 and MSE (the mean over
  targets, and per target when there are several);
- token classification (on bases, unlabelled ones dropped by the caller): loss,
  accuracy, MCC, macro F1, and per class its F1, accuracy (the share of its bases
  predicted as it: the class's recall) and support.

The names of the scalar metrics of each kind (what `best_metric` may name) are listed
with the options, `rmt.finetune_options.METRICS`, so that composing a config does not
import scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize


def _common(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Loss, accuracy, MCC and macro F1 of class probabilities (n, C)."""
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(1)
    return {
        "loss": float(skm.log_loss(y_true, probs, labels=labels)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "mcc": float(skm.matthews_corrcoef(y_true, pred)),
        "f1_macro": float(skm.f1_score(y_true, pred, average="macro", zero_division=0)),
    }


def _ranking(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """AUROC and AUPRC, None where a class is missing from the truth (undefined)."""
    classes = probs.shape[1]
    if len(np.unique(y_true)) < classes:
        return {"auroc": None, "auprc": None}
    if classes == 2:
        score = probs[:, 1]
        return {
            "auroc": float(skm.roc_auc_score(y_true, score)),
            "auprc": float(skm.average_precision_score(y_true, score)),
        }
    labels = list(range(classes))
    onehot = label_binarize(y_true, classes=labels)
    return {
        "auroc": float(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels)),
        "auprc": float(skm.average_precision_score(onehot, probs, average="macro")),
    }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Sequence classification: `y_true` (n,) class indices, `probs` (n, C)."""
    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    f1 = skm.f1_score(
        y_true, probs.argmax(1), labels=list(range(len(classes))), average=None, zero_division=0
    )
    return {
        "samples": len(y_true),
        **_common(y_true, probs),
        **_ranking(y_true, probs),
        "f1": {name: float(v) for name, v in zip(classes, f1, strict=True)},
    }


def _correlation(function, truth: np.ndarray, pred: np.ndarray) -> float | None:
    """A scipy correlation; None where undefined (fewer than 2 samples, a constant input)."""
    if len(truth) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = float(function(truth, pred).statistic)
    return None if np.isnan(value) else value


def _one_target(truth: np.ndarray, pred: np.ndarray) -> dict:
    r2 = float(skm.r2_score(truth, pred)) if len(truth) >= 2 else None
    return {
        "pearson": _correlation(stats.pearsonr, truth, pred),
        "spearman": _correlation(stats.spearmanr, truth, pred),
        "r2": r2,
        "mse": float(skm.mean_squared_error(truth, pred)),
    }


def _mean(values: list[float | None]) -> float | None:
    """The mean of defined values; None when any is undefined."""
    return None if any(v is None for v in values) else float(np.mean(values))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, targets: list[str]) -> dict:
    """Sequence regression: `y_true` and `y_pred` (n, k), one column per target."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    per = {name: _one_target(y_true[:, i], y_pred[:, i]) for i, name in enumerate(targets)}
    result = {"samples": len(y_true)}
    keys = next(iter(per.values()))  # pearson, spearman, r2, mse
    result |= {key: _mean([p[key] for p in per.values()]) for key in keys}
    if len(targets) > 1:
        result["per_target"] = per
    return result


def token_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Token classification on bases: `y_true` (n,) labelled bases, `probs` (n, C)."""
    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    labels, pred = list(range(len(classes))), probs.argmax(1)
    _, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {"f1": float(f1[i]), "accuracy": float(recall[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {"bases": len(y_true), **_common(y_true, probs), "per_class": per_class}


def score(kind: str, truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """The metrics of task `kind` (a key of METRICS) from what `predict` gave."""
    functions = {
        "sequence_classification": classification_metrics,
        "sequence_regression": regression_metrics,
        "token_classification": token_metrics,
    }
    return functions[kind](truth, predicted, names)
