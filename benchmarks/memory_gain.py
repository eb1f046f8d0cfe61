"""Memory gain of a training run: loss per segment, memory carried vs reset, and per stage.

    rmt-train experiment=pretrain_cpu hydra.run.dir=runs/pretrain_cpu
    python -m benchmarks.memory_gain runs/pretrain_cpu --out benchmarks/results/pretrain_cpu

Reads the run's `eval.json` (the final evaluation: per-segment held-out loss with memory
carried and with memory reset before every segment, beside the unigram baseline) and
`metrics.jsonl` (every evaluation's memory gain, tagged with the curriculum stage it
was measured in). Writes `memory_gain.png` (loss per segment, both passes), and
`memory_gain.md` / `memory_gain.json` (the three numbers, and the gain at the end of
every stage): the figures a README quotes, from one command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data.atomic import atomic_path
from rmt.cli import write_json


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(eval.json's final evaluation, the eval records of metrics.jsonl)."""
    eval_file, metrics_file = run_dir / "eval.json", run_dir / "metrics.jsonl"
    for path in (eval_file, metrics_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {run_dir} a finished rmt-train run?")
    final = json.loads(eval_file.read_text())["final"]
    if final.get("segment_losses_memory_reset") is None:
        raise ValueError(
            f"{eval_file} has no memory-reset pass: train with memory.memory_tokens > 0 "
            "and trainer.memory_gain=true"
        )
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    return final, [r for r in records if r.get("split") == "eval"]


def per_stage(evals: list[dict]) -> list[dict]:
    """The last evaluation at each segment count (after training began: step 0 is the
    initial model, evaluated at the final length): loss, reset loss and memory gain."""
    last: dict[int, dict] = {}
    for record in evals:
        if record["step"] > 0:
            last[record["segments"]] = record
    keys = ("step", "segments", "loss", "loss_memory_reset", "memory_gain", "memory_gain_se")
    return [{k: last[n].get(k) for k in keys} for n in sorted(last)]


def summary(final: dict, evals: list[dict]) -> dict:
    keys = ("segments", "unigram_loss", "loss_memory_reset", "loss", "memory_gain",
            "memory_gain_se", "masked_tokens")  # fmt: skip
    return {"final": {k: final.get(k) for k in keys}, "stages": per_stage(evals)}


def markdown(result: dict) -> str:
    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    f = result["final"]
    lines = [
        f"Final evaluation at {f['segments']} segments ({f['masked_tokens']} masked tokens):",
        "",
        "| unigram | memory reset | memory carried | memory gain (segments 2..n) |",
        "|---|---|---|---|",
        f"| {cell(f['unigram_loss'])} | {cell(f['loss_memory_reset'])} | {cell(f['loss'])} "
        f"| {cell(f['memory_gain'])} ± {cell(f['memory_gain_se'])} |",
        "",
        "Memory gain at the end of each stage (nats per labelled token, ± standard error):",
        "",
        "| step | segments | loss | loss, memory reset | memory gain |",
        "|---|---|---|---|---|",
    ]
    for s in result["stages"]:
        gain = cell(s["memory_gain"]) + (
            f" ± {cell(s['memory_gain_se'])}" if s["memory_gain_se"] else ""
        )
        lines.append(
            f"| {s['step']} | {s['segments']} | {cell(s['loss'])} "
            f"| {cell(s['loss_memory_reset'])} | {gain} |"
        )
    return "\n".join(lines) + "\n"


def plot(final: dict, path: Path) -> None:
    """Held-out loss per segment, memory carried vs reset, and the unigram line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    carried, reset = final["segment_losses"], final["segment_losses_memory_reset"]
    x = list(range(1, len(carried) + 1))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(x, carried, "o-", label="memory carried")
    ax.plot(x, reset, "s--", label="memory reset before every segment")
    if final.get("unigram_loss") is not None:
        ax.axhline(final["unigram_loss"], color="grey", lw=0.8, ls=":", label="unigram")
    ax.set(xlabel="segment", ylabel="held-out MLM loss (nats/token)")
    gain = final.get("memory_gain")
    if gain is not None:
        ax.set_title(f"memory gain {gain:.4f} ± {final['memory_gain_se'] or 0:.4f} nats")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="an rmt-train run directory")
    parser.add_argument("--out", type=Path, help="where to write (default: the run directory)")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    final, evals = read_run(args.run_dir)
    result = summary(final, evals)
    write_json(out / "memory_gain.json", result)
    with atomic_path(out / "memory_gain.md") as tmp:
        tmp.write_text(markdown(result))
    plot(final, out / "memory_gain.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
