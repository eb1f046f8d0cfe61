"""rmt-sweep-summary: one table for a Hydra multirun sweep.

    rmt-sweep-summary multirun/2026-11-22/10-00-00 [--metric eval_loss]

Reads every job directory of the sweep (its `.hydra/overrides.yaml` and `status.json`,
written by rmt-train when a job ends: `run_job`) and writes `summary.csv`, `summary.md`
and `summary.png` into the sweep directory. Jobs that failed or never finished are listed
as such, never dropped. rmt-train calls the same code at the end of every multirun
(`hydra.callbacks.summary`), which then exits 1 if any job failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from rmt.cli import USER_ERRORS, user_errors, write_json

STATUS_FILE = "status.json"
log = logging.getLogger(__name__)


def run_job(job: Callable[[], dict], run_dir: str | Path, program: str) -> dict | None:
    """Run one Hydra job and record how it ended in `run_dir/status.json`.

    Outside a multirun a failure is re-raised (the app's `user_errors` makes a user error
    one line and exit 2). In a multirun an exception is recorded, reported, and None is
    returned instead, because Hydra aborts the whole sweep at a job that exits and skips
    the summary after one that raises; the other jobs should run and the summary should
    list this one as failed. Interrupts (Ctrl-C) are recorded and stop the sweep.
    """
    status = Path(run_dir) / STATUS_FILE
    try:
        result = job()
    except BaseException as err:
        write_json(status, {"status": "failed", "error": f"{type(err).__name__}: {err}"})
        if not (isinstance(err, Exception) and _in_multirun()):
            raise
        _report(program, Path(run_dir), err)
        return None
    write_json(status, {"status": "finished", **result})
    return result


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _report(program: str, run_dir: Path, err: Exception) -> None:
    """A user error in one line (no traceback), anything else with its traceback."""
    if isinstance(err, USER_ERRORS):
        print(f"{program}: job {run_dir.name} failed: {err}", file=sys.stderr)
    else:
        log.error("job %s failed", run_dir.name, exc_info=err)


def job_record(job_dir: Path) -> dict:
    """Overrides, status and final metrics of one job directory."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    status_file = job_dir / STATUS_FILE
    try:
        status = (
            json.loads(status_file.read_text())
            if status_file.is_file()
            else {"status": "unfinished"}
        )
    except (OSError, UnicodeDecodeError, ValueError) as err:
        status = {"status": "unreadable", "error": f"{status_file}: {err}"}
    return {"job": job_dir.name, "overrides": " ".join(overrides or []), **status}


def failed(records: list[dict]) -> list[dict]:
    """The jobs that did not finish (failed, unreadable, or never ended)."""
    return [r for r in records if r.get("status") != "finished"]


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
    (sweep_dir / "summary.md").write_text(markdown_table(records, columns) + failure_list(records))
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


def failure_list(records: list[dict]) -> str:
    """A markdown list of the jobs that did not finish: overrides that vary, and error."""
    bad = failed(records)
    if not bad:
        return ""
    lines = [f"\n## Jobs that did not finish ({len(bad)})\n"]
    for r in bad:
        error = f": {r['error']}" if r.get("error") else ""
        lines.append(
            f"- job {r['job']} (`{varying(r['overrides'], records)}`) {r.get('status')}{error}"
        )
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
    """Hydra callback: summarize the sweep when a multirun ends; exit 1 if a job failed.

    The exit status is how a script running the sweep learns of failed jobs (they were
    recorded and the sweep went on, see `run_job`); SystemExit is the one exception
    Hydra does not turn into a warning here.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        bad = failed(summarize(sweep_dir))
        if bad:
            jobs = ", ".join(r["job"] for r in bad)
            print(
                f"{len(bad)} job(s) did not finish ({jobs}): see {sweep_dir / 'summary.md'}",
                file=sys.stderr,
            )
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rmt-sweep-summary", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--metric", help="metric to plot (default: eval_loss or accuracy_8)")
    args = parser.parse_args(argv)
    with user_errors("rmt-sweep-summary"):
        records = summarize(args.sweep_dir, args.metric)
        done = len(records) - len(failed(records))
        print(f"{len(records)} jobs ({done} finished) -> {Path(args.sweep_dir) / 'summary.md'}")


if __name__ == "__main__":
    main()
