"""The species benchmark's test: accuracy at every context length, per model and memory mode.

Each test window (an unseen strain) is read once per memory mode with
`rmt.api_memory.outputs_by_segment`, which gives the prediction after each segment: row
N - 1 is the model given N segments of context, so one pass scores every N. Methods:

- `rmt`: the memory model fine-tuned on windows of up to 16 segments, memory carried;
- `rmt_reset`: the same model with memory reset before every segment (the last segment
  alone decides);
- `rmt_average`, `segment_average`, `nomemory_average`: each model's per-segment
  predictions (every segment alone) averaged over the N segments: the baseline memory
  has to beat. `segment` is the memory model fine-tuned on single segments, `nomemory`
  the model pre-trained without memory tokens, fine-tuned the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, matthews_corrcoef

from benchmarks.measure import environment
from data.labelled import DatasetOptions, load_dataset
from rmt.api import SequenceClassification
from rmt.api_memory import running_mean
from rmt.cli import write_json

# method -> (fine-tuned variant, memory mode read, averaged over segments)
METHODS = {
    "rmt": ("rmt", "carried", False),
    "rmt_reset": ("rmt", "reset", False),
    "rmt_average": ("rmt", "reset", True),
    "segment_average": ("segment", "reset", True),
    "nomemory_average": ("nomemory", "reset", True),
}
BATCH = 8


def test_windows(fasta: Path, labels: Path) -> tuple[list[str], list[str]]:
    """The test windows and their species, read like rmt-finetune reads them."""
    data = load_dataset(DatasetOptions(train=str(fasta), labels=str(labels)),
                        "sequence_classification")  # fmt: skip
    return [x.sequence for x in data.train], [data.classes[x.target] for x in data.train]


@torch.no_grad()
def predictions(
    run: Path, memory: str, sequences: list[str], segments: int
) -> tuple[torch.Tensor, list[str]]:
    """(windows, segments, classes) logits after each segment, and the class names."""
    model = SequenceClassification.from_pretrained(run, memory=memory)
    width = segments * model.runner.segment_tokens
    logits = []
    for start in range(0, len(sequences), BATCH):
        batch = model.collate(sequences[start : start + BATCH])
        if batch.input_ids.shape[1] < width:
            raise ValueError(f"test windows are shorter than {segments} segments: lengthen them")
        batch.input_ids, batch.attention_mask = (
            batch.input_ids[:, :width], batch.attention_mask[:, :width]
        )  # fmt: skip
        logits.append(torch.from_numpy(model.outputs_by_segment(batch)))
    return torch.cat(logits), model.names


def evaluate(
    runs: dict[str, Path], fasta: Path, labels: Path, segments: int, results: Path
) -> dict:
    """Accuracy and MCC at N = 1, 2, 4, ..., `segments` for every method; JSON + plot."""
    sequences, truth = test_windows(fasta, labels)
    lengths = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= segments]
    started, table, passes = time.perf_counter(), {}, {}
    for method, (variant, memory, averaged) in METHODS.items():
        if (variant, memory) not in passes:
            passes[variant, memory] = predictions(runs[variant], memory, sequences, segments)
        logits, names = passes[variant, memory]
        logits = running_mean(logits) if averaged else logits
        table[method] = {}
        for n in lengths:
            predicted = [names[i] for i in logits[:, n - 1].argmax(-1).tolist()]
            table[method][str(n)] = {
                "accuracy": accuracy_score(truth, predicted),
                "mcc": matthews_corrcoef(truth, predicted),
            }
        print(method, {n: round(v["accuracy"], 3) for n, v in table[method].items()}, flush=True)
    report = {
        "task": "species of origin, 4 bacterial species, test strains never seen",
        "test_windows": len(sequences),
        "classes": sorted(set(truth)),
        "segments": lengths,
        "methods": {m: list(v) for m, v in METHODS.items()},
        "results": table,
        "command": "python -m benchmarks.species --out runs/species",
        "machine": environment("cpu"),
        "evaluate_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "species.json", report)
    plot(report, results / "species.png")
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, by_n in report["results"].items():
        ns = [int(n) for n in by_n]
        ax.plot(ns, [v["accuracy"] for v in by_n.values()], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("segments of context (128 tokens each)")
    ax.set_ylabel("test accuracy (unseen strains)")
    ax.axhline(1 / len(report["classes"]), color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
