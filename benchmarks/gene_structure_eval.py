"""The gene-structure benchmark's test: per-base exon / intron F1 and accuracy at exon
boundaries on the 100 test loci, per model, memory mode, context and strand.

Each method reads every test row (a locus with unlabelled chromosome around it, cut to
the method's context) with `rmt.api.TokenClassification` and scores the locus's bases
only. Context is counted in segments' worth of bp (segment tokens x the tokenizer's mean
bp per token on the test loci), so `rmt_u4` starts reading about four segments before
the locus. Methods:

- `rmt_u0`, `rmt_u1`, `rmt_u4`: the memory model, memory carried through the whole read,
  from the locus start or 1 / 4 segments of upstream chromosome before it;
- `rmt_reset`: the same model with memory reset before every segment (each alone);
- `rmt_both_u0`, `rmt_both_u4`: memory carried, and a second pass on the reverse
  complement averaged in, which gives every base its right context (the same context on
  both sides);
- `nomemory`, `nomemory_both`: the model pre-trained and fine-tuned without memory
  tokens, every segment alone (on one strand, or both averaged).

Besides the headline metrics, the locus bases are binned by their position from the
locus start in segments' worth of bp (`by_position`): the same bases in every method, so
that at position p a carried method has read about p (+ its upstream) segments through
memory, a reset one only its own segment.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from benchmarks.gene_structure_data import CLASSES
from benchmarks.measure import environment
from data.labelled import DatasetOptions, load_dataset
from data.masking import IGNORE_INDEX
from rmt.api import TokenClassification
from rmt.cli import write_json

EXON, INTRON = CLASSES.index("exon"), CLASSES.index("intron")
BOUNDARY_BP = 10
# method -> (fine-tuned variant, memory mode, context in segments, both strands)
METHODS = {
    "rmt_u0": ("rmt", "carried", 0, False),
    "rmt_u1": ("rmt", "carried", 1, False),
    "rmt_u4": ("rmt", "carried", 4, False),
    "rmt_reset": ("rmt", "reset", 0, False),
    "rmt_both_u0": ("rmt", "carried", 0, True),
    "rmt_both_u4": ("rmt", "carried", 4, True),
    "nomemory": ("nomemory", "reset", 0, False),
    "nomemory_both": ("nomemory", "reset", 0, True),
}
# Upper edges of the bins of position in the locus, in segments (the last bin is open).
POSITION_BINS = (1, 2, 4, 8, 16, 32)
BATCH = 8


def boundary_bases(labels: np.ndarray, radius: int = BOUNDARY_BP) -> np.ndarray:
    """Bases within `radius` bp of an exon boundary (where exon meets another labelled
    class: splice sites, CDS start and end): the `radius` bases on each side of it."""
    exon, labelled = labels == EXON, labels != IGNORE_INDEX
    change = (exon[1:] != exon[:-1]) & labelled[1:] & labelled[:-1]
    cuts = np.flatnonzero(change) + 1  # the first base after each boundary
    marks = np.zeros(len(labels) + 1, dtype=np.int64)
    np.add.at(marks, np.maximum(cuts - radius, 0), 1)
    np.add.at(marks, np.minimum(cuts + radius, len(labels)), -1)
    return (np.cumsum(marks[:-1]) > 0) & labelled


def base_metrics(truth: np.ndarray, predicted: np.ndarray, boundary: np.ndarray) -> dict:
    """Exon and intron F1 over all bases, accuracy, and accuracy on the boundary bases
    (scikit-learn; a base the model left unpredicted, -1, counts as wrong)."""
    f1 = f1_score(truth, predicted, labels=[EXON, INTRON], average=None, zero_division=0)
    near = boundary.astype(bool)
    return {
        "exon_f1": float(f1[0]),
        "intron_f1": float(f1[1]),
        "accuracy": float(accuracy_score(truth, predicted)),
        "boundary_accuracy": float(accuracy_score(truth[near], predicted[near]))
        if near.any() else None,
        "bases": len(truth),
        "boundary_bases": int(near.sum()),
    }  # fmt: skip


def read_test_rows(csv: Path) -> list[tuple[str, np.ndarray]]:
    """(sequence, per-base labels) of each test row, read like rmt-finetune reads it."""
    data = load_dataset(DatasetOptions(train=str(csv), classes=CLASSES), "token_classification")
    return [(x.sequence, x.base_labels) for x in data.train]


def crop(sequence: str, labels: np.ndarray, left_bp: int, right_bp: int):
    """The row cut to `left_bp` of context before its locus and `right_bp` after it."""
    labelled = np.flatnonzero(labels != IGNORE_INDEX)
    first, last = int(labelled[0]), int(labelled[-1]) + 1
    if left_bp > first or right_bp > len(labels) - last:
        raise ValueError(
            f"a test row has {first} bp before its locus and {len(labels) - last} after, "
            f"fewer than the {left_bp} / {right_bp} bp asked for; prepare the data again "
            "with a larger --context-bp (delete <out>/data first)"
        )
    start, stop = first - left_bp, last + right_bp
    return sequence[start:stop], labels[start:stop]


def bp_per_token(model: TokenClassification, rows: list[tuple[str, np.ndarray]]) -> float:
    """The tokenizer's mean bp per token over the test loci (context excluded)."""
    loci = [crop(seq, labels, 0, 0)[0] for seq, labels in rows]
    return sum(map(len, loci)) / sum(len(model.tokenizer.encode(s)) for s in loci)


def predict(model: TokenClassification, sequences: list[str]) -> list[np.ndarray]:
    """Per-base predicted classes of every sequence, batched longest first (less padding)."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    predicted = model.predict([sequences[i] for i in order], batch_size=BATCH).predicted
    out: list[np.ndarray] = [np.empty(0)] * len(sequences)
    for i, p in zip(order, predicted, strict=True):
        out[i] = p
    return out


def position_bins(positions: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of bases by their 1-based position in the locus in segments: 1, 2, 3-4, ..."""
    bins, low = {}, 0
    for high in (*POSITION_BINS, None):
        inside = (positions > low) & (positions <= high if high else True)
        name = f">{low}" if high is None else str(high) if high == low + 1 else f"{low + 1}-{high}"
        if inside.any():
            bins[name] = inside
        low = high
    return bins


def score_method(
    model: TokenClassification,
    rows: list[tuple[str, np.ndarray]],
    context_bp: int,
    segment_bp: float,
) -> dict:
    """The headline metrics of one method, and the same by position in the locus."""
    both = model.both_strands
    cropped = [crop(seq, labels, context_bp, context_bp if both else 0) for seq, labels in rows]
    predicted = predict(model, [seq for seq, _ in cropped])
    parts = {"truth": [], "predicted": [], "boundary": [], "position": []}
    for (_, labels), guess in zip(cropped, predicted, strict=True):
        keep = labels != IGNORE_INDEX  # the locus: contiguous
        parts["truth"].append(labels[keep])
        parts["predicted"].append(guess[keep])
        parts["boundary"].append(boundary_bases(labels)[keep])
        parts["position"].append((np.arange(keep.sum()) / segment_bp).astype(np.int64) + 1)
    truth, guess, near, position = (np.concatenate(parts[k]) for k in parts)
    by_position = {name: base_metrics(truth[inside], guess[inside], near[inside])
                   for name, inside in position_bins(position).items()}  # fmt: skip
    return {"metrics": base_metrics(truth, guess, near), "by_position": by_position}


def constant_baselines(rows: list[tuple[str, np.ndarray]]) -> dict:
    """Every locus base labelled one class: the floor a model must beat (`all_intron` is
    the majority class's accuracy), with each class's share of the bases."""
    keep = [labels != IGNORE_INDEX for _, labels in rows]
    truth = np.concatenate([labels[k] for (_, labels), k in zip(rows, keep, strict=True)])
    near = np.concatenate(
        [boundary_bases(labels)[k] for (_, labels), k in zip(rows, keep, strict=True)]
    )
    out = {"class_fractions": {c: float((truth == i).mean()) for i, c in enumerate(CLASSES)}}
    for i, name in enumerate(CLASSES):
        out[f"all_{name}"] = base_metrics(truth, np.full_like(truth, i), near)
    return out


def evaluate(runs: dict[str, Path], test_csv: Path, results: Path, setup: dict) -> dict:
    """Every method of METHODS on the test rows; JSON and plot into `results`."""
    rows = read_test_rows(test_csv)
    started, table = time.perf_counter(), {}
    for method, (variant, memory, segments, both) in METHODS.items():
        model = TokenClassification.from_pretrained(runs[variant], memory=memory,
                                                    both_strands=both)  # fmt: skip
        segment_bp = model.runner.segment_tokens * bp_per_token(model, rows)
        context_bp = round(segments * segment_bp)
        begun = time.perf_counter()
        table[method] = {
            "variant": variant, "memory": memory, "context_segments": segments,
            "context_bp": context_bp, "both_strands": both, "segment_bp": round(segment_bp),
            **score_method(model, rows, context_bp, segment_bp),
            "seconds": round(time.perf_counter() - begun, 1),
        }  # fmt: skip
        shown = {k: round(v, 3) for k, v in table[method]["metrics"].items() if "f1" in k}
        print(method, shown, flush=True)
    report = {
        "task": "per-base CDS exon / intron / flank on the 100 Drosophila test loci (chr2R)",
        "test_loci": len(rows),
        "classes": CLASSES,
        "boundary_bp": BOUNDARY_BP,
        "setup": setup,
        "results": table,
        "baselines": constant_baselines(rows),
        "machine": environment("cpu"),
        "evaluate_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "gene_structure.json", report)
    plot(report, results / "gene_structure.png")
    return report


def plot(report: dict, path: Path) -> None:
    """Headline metrics per method (left); exon F1 by position in the locus (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["results"])
    keys = ("exon_f1", "intron_f1", "boundary_accuracy")
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        values = [report["results"][m]["metrics"][key] or 0.0 for m in methods]
        bars.bar(np.arange(len(methods)) + k * width, values, width, label=key)
    bars.set_xticks(np.arange(len(methods)) + width, methods, rotation=30, ha="right")
    bars.set_ylim(0, 1)
    bars.legend(fontsize=8)
    bars.grid(axis="y", alpha=0.3)
    for method in ("rmt_u0", "rmt_u4", "rmt_reset", "rmt_both_u4", "nomemory"):
        by = report["results"][method]["by_position"]
        lines.plot(list(by), [v["exon_f1"] for v in by.values()], marker="o", label=method)
    lines.set_xlabel("position in the locus (segments from its start)")
    lines.set_ylabel("exon F1")
    lines.legend(fontsize=8)
    lines.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
