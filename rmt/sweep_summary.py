"""rmt-sweep-summary: one table for a Hydra multirun sweep.

    rmt-sweep-summary multirun/2026-11-22/10-00-00 [--metric eval_loss]

Reads every job directory of the sweep (its `.hydra/overrides.yaml` and `status.json`,
written by rmt-train when a job ends) and writes `summary.csv`, `summary.md` and
`summary.png` into the sweep directory. Jobs that failed or never finished are listed
as such, never dropped. rmt-train calls the same code at the end of every multirun
(`hydra.callbacks.summary`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from rmt.cli import user_errors, write_json

STATUS_FILE = "status.json"


def job_record(job_dir: Path) -> dict:
    """Overrides, status and final metrics of one job directory."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    status_file = job_dir / STATUS_FILE
    status = (
        json.loads(status_file.read_text()) if status_file.is_file() else {"status": "unfinished"}
    )
    return {"job": job_dir.name, "overrides": " ".join(overrides or []), **status}


def summarize(sweep_dir: str | Path, metric: str | None = None) -> list[dict]:
    """Write summary.csv / .md / .png for a sweep; returns the records (one per job)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory at {sweep_dir}")
    jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no Hydra job directories (no */.hydra)")
    records = [job_record(d) for d in sorted(jobs, key=lambda d: (len(d.name), d.name))]
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(records)
    (sweep_dir / "summary.csv").write_text(buffer.getvalue())
    (sweep_dir / "summary.md").write_text(markdown_table(records, columns))
    metric = metric or next((c for c in ("eval_loss", "accuracy_8") if c in columns), None)
    if metric:
        plot(records, metric, sweep_dir / "summary.png")
    write_json(sweep_dir / "summary.json", {"metric": metric, "jobs": records})
    return records


def markdown_table(records: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return (
            f"{value:.4g}" if isinstance(value, float) else str(value if value is not None else "")
        )

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def varying(overrides: str, records: list[dict]) -> str:
    """The overrides of one job whose values differ between jobs (a short plot label)."""
    every = [set(r["overrides"].split()) for r in records]
    common = set.intersection(*every) if every else set()
    return " ".join(o for o in overrides.split() if o not in common)


def plot(records: list[dict], metric: str, path: Path) -> None:
    """One bar per job (missing for jobs without the metric); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['job']}: {varying(r['overrides'], records)}" for r in records]
    values = [r.get(metric) if isinstance(r.get(metric), (int, float)) else 0 for r in records]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(records) + 1.2))
    bars = ax.barh(labels, values)
    for bar, record in zip(bars, records, strict=True):
        if record["status"] != "finished":
            bar.set_hatch("//")
            bar.set_alpha(0.4)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class SummaryCallback(Callback):
    """Hydra callback: summarize the sweep when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        summarize(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rmt-sweep-summary", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--metric", help="metric to plot (default: eval_loss or accuracy_8)")
    args = parser.parse_args(argv)
    with user_errors("rmt-sweep-summary"):
        records = summarize(args.sweep_dir, args.metric)
        done = sum(r["status"] == "finished" for r in records)
        print(f"{len(records)} jobs ({done} finished) -> {Path(args.sweep_dir) / 'summary.md'}")


if __name__ == "__main__":
    main()
