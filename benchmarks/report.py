"""rmt-bench reports: CSV, fits, tables and plots; merging the jobs of a sweep.

    rmt-bench-summary multirun/bench/2026-11-22/10-00-00

A group is one configuration (model, batch, segment shape, device, dtype, optimizer:
one job of a sweep); `benchmarks.fits` fits each group's methods and `benchmarks.plots`
draws them.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
from collections.abc import Iterable
from pathlib import Path

from hydra.experimental.callback import Callback

from benchmarks.fits import fits, ok
from benchmarks.peers import LUCI_MODULE, LUCI_PACKAGE
from benchmarks.plots import method_labels, plot
from benchmarks.points import HF_METHODS, LUCI_METHODS
from data.atomic import atomic_path
from rmt.cli import user_errors, write_json

CSV_FIELDS = [
    "group", "method", "kind", "segments", "content_tokens", "status", "median_s", "min_s",
    "max_s", "tokens_per_s", "s_per_segment", "baseline_mb", "peak_mb", "step_peak_delta_mb",
    "model_flops", "flops_per_s", "mfu",
]  # fmt: skip


BENCH_EXTRA = "pip install 'rmt-dna[bench]'"
TRANSFORMERS_METHODS = ("bert_infer", "bert_train", *HF_METHODS)  # benchmarks.workloads._bert
# import name -> (what pip installs, the methods that need it)
METHOD_PACKAGES = {
    "transformers": ("transformers", TRANSFORMERS_METHODS),
    LUCI_MODULE: (LUCI_PACKAGE, LUCI_METHODS),
}


def check_extras(methods: Iterable[str]) -> None:
    """Refuse at once, naming the `bench` extra, when a package the run needs is missing.

    Without it each bert (or luci) point would die in its process (`failed: exit code 1`)
    and the plots would be left out, after a full run that then looks like a success.
    """
    no_plots = importlib.util.find_spec("matplotlib") is None
    missing = ["matplotlib (for the plots)"] if no_plots else []
    droppable = []
    for module, (package, needing) in METHOD_PACKAGES.items():
        asked = [m for m in methods if m in needing]
        if asked and importlib.util.find_spec(module) is None:
            missing.append(f"{package} (for {', '.join(asked)})")
            droppable += asked
    if not missing:
        return
    fix = BENCH_EXTRA
    if not no_plots:  # leaving the methods out is then a fix too
        fix += f", or leave {', '.join(droppable)} out of methods=[...]"
    raise ValueError(f"{' and '.join(missing)} not installed: {fix}")


def group_label(record: dict) -> str:
    """The configuration a record belongs to, as a short readable label."""
    shape = f"S{record['segment_tokens']}+m{record['memory_tokens']}"
    where = f"{record['device']} {record['dtype']}"
    label = f"{record['model']} b{record['batch_size']} {shape} {where}"
    if record.get("optimizer") == "none":  # .get: records written before the option existed
        label += " no optimizer"
    if record.get("toy_warmup"):
        label += " toy warm-up"
    return label


# -- writing --------------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically: readers of a report never see half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_reports(records: list[dict], environments: dict | list[dict], out_dir: Path) -> dict:
    """points.csv, fits.json, fits.md and one PNG per group and kind into `out_dir`."""
    envs = environments if isinstance(environments, list) else [environments]
    for record in records:
        record.setdefault("group", group_label(record))
    groups = list(dict.fromkeys(r["group"] for r in records))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    write_text(out_dir / "points.csv", buffer.getvalue())
    document = {
        "environment": envs,
        "groups": {g: fits([r for r in records if r["group"] == g]) for g in groups},
    }
    write_json(out_dir / "fits.json", document)
    write_text(out_dir / "fits.md", markdown(records, envs, document["groups"]))
    for index, group in enumerate(groups):
        for kind in ("infer", "train"):
            selected = [r for r in records if r["group"] == group and r["kind"] == kind]
            suffix = f"_{index}" if len(groups) > 1 else ""
            if any(ok(r) for r in selected):
                plot(selected, group, kind, out_dir / f"{kind}{suffix}.png")
    return document


def markdown(records: list[dict], envs: list[dict], groups: dict) -> str:
    lines = []
    for env in envs:
        peak = env["matmul_flops_per_s"] / 1e9
        lines.append(
            f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} CPUs), torch "
            f"{env['torch']}, {env['torch_threads']} threads, {env['dtype']}; measured matmul "
            f"peak {peak:,.0f} GFLOP/s; {env['date']}."
        )
    for group, fit in groups.items():
        selected = [r for r in records if r["group"] == group]
        lines += ["", f"## {group}"]
        for kind, title in (("infer", "Inference"), ("train", "Training step")):
            in_kind = [r for r in selected if r["kind"] == kind]
            if in_kind:
                lines += [
                    "",
                    f"### {title}",
                    "",
                    *kind_tables(in_kind),
                    "",
                    *fit_table(in_kind, fit),
                ]
                if kind in fit["crossover"]:
                    lines += ["", crossover_line(fit["crossover"][kind])]
                if kind == "train" and fit["replay_ratio"]:
                    lines += ["", replay_line(fit["replay_ratio"])]
    return "\n".join(lines) + "\n"


def kind_tables(records: list[dict]) -> list[str]:
    """Tokens/s, step peak memory and MFU: rows are segment counts, columns methods."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    by_point = {(r["method"], r["segments"]): r for r in records}
    counts = sorted({r["segments"] for r in records})
    labels = method_labels(records)
    header = ["| segments | " + " | ".join(labels[m] for m in methods) + " |"]
    header.append("|---:|" + "---:|" * len(methods))

    def table(title: str, value) -> list[str]:
        rows = [f"{title}:", "", *header]
        for n in counts:
            cells = []
            for method in methods:
                record = by_point.get((method, n))
                cells.append("" if record is None else value(record) if ok(record) else "–")
            rows.append(f"| {n} | " + " | ".join(cells) + " |")
        return [*rows, ""]

    memory = "Step peak memory, MB above the point's baseline"
    return [
        *table("Content tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
        *table(memory, lambda r: f"{r['step_peak_delta_mb']:,.0f}"),
        *table("MFU (model FLOP/s over the measured matmul peak)", lambda r: f"{r['mfu']:.1%}"),
    ]


def fit_table(records: list[dict], fit: dict) -> list[str]:
    """Linear fits of time and memory against segments, and slope ratios to baselines."""
    labels = method_labels(records)
    columns = ["ms / segment", "R² (time)", "MB / segment", "R² (memory)", "up to"]
    rows = [
        "| method | " + " | ".join(columns) + " | time slope ÷ baselines |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for method, label in labels.items():
        entry = fit["methods"][method]
        time_fit, memory_fit = entry["time"], entry["memory"]
        ratios = fit["slope_ratios"].get(method, {})
        ratio_text = ", ".join(f"{b}: {v:.2f}" for b, v in ratios.items())
        rows.append(
            f"| {label} | "
            + (f"{1e3 * time_fit['slope']:.1f} | {time_fit['r2']:.3f}" if time_fit else "– | –")
            + " | "
            + (f"{memory_fit['slope']:.2f} | {memory_fit['r2']:.3f}" if memory_fit else "– | –")
            + f" | {entry['max_segments']} | {ratio_text} |"
        )
    return rows


def crossover_line(cross: dict) -> str:
    rmt, whole = cross["rmt"], cross["whole"]
    if cross["rmt_faster_from"] is not None:
        n = cross["rmt_faster_from"]
        text = f"{rmt} is faster than {whole} from {n} segment{'s' if n > 1 else ''} on"
    else:
        text = f"{rmt} is not faster than {whole} at any segment count both measured"
    if cross["rmt_beyond_whole"]:
        text += (
            f"; {whole} stopped at {cross['whole_last_measured']} segments, "
            f"{rmt} went on to {cross['rmt_beyond_whole']}"
        )
    return text + "."


def replay_line(ratio: dict) -> str:
    """The replay ratio as one sentence of the report."""
    large, small = ratio["segments"]
    verdict = "ok" if ratio["ok"] else "EXCEEDED"
    return (
        f"rmt_replay's step peak at {large} segments is {ratio['ratio']:.2f}x its peak at "
        f"{small} (limit {ratio['limit']:g}): {verdict}."
    )


# -- sweeps ---------------------------------------------------------------------------


def summarize(sweep_dir: str | Path) -> dict:
    """Merge every job's points.jsonl under `sweep_dir` and write the reports there.

    A single job's directory (its own points.jsonl) gets its reports written again.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory at {sweep_dir}")
    if (sweep_dir / "points.jsonl").is_file() and (sweep_dir / ".hydra").is_dir():
        records = [
            json.loads(line) for line in (sweep_dir / "points.jsonl").read_text().splitlines()
        ]
        env = json.loads((sweep_dir / "environment.json").read_text())
        return write_reports(records, env, sweep_dir)
    jobs = sorted(
        (d for d in sweep_dir.iterdir() if (d / "points.jsonl").is_file()),
        key=lambda d: (len(d.name), d.name),
    )
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no rmt-bench job (no */points.jsonl)")
    records, envs = [], []
    for job in jobs:
        job_records = read_points(job / "points.jsonl")
        for record in job_records:
            record["job"] = job.name
            record["group"] = group_label(record)
        records += job_records
        env_file = job / "environment.json"
        if env_file.is_file():
            envs.append({"job": job.name, **json.loads(env_file.read_text())})
    labels: dict[str, set[str]] = {}
    for record in records:
        labels.setdefault(record["group"], set()).add(record["job"])
    for record in records:  # two jobs of one configuration (a sweep over bptt_depth, say)
        if len(labels[group_label(record)]) > 1:
            record["group"] = f"{group_label(record)} (job {record['job']})"
    write_text(sweep_dir / "points.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return write_reports(records, envs, sweep_dir)


def read_points(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class SummaryCallback(Callback):
    """Hydra callback: merge the jobs when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        summarize(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rmt-bench-summary", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="the multirun directory of an rmt-bench sweep")
    args = parser.parse_args(argv)
    with user_errors("rmt-bench-summary"):
        check_extras(())
        summarize(args.sweep_dir)
        print(f"merged -> {Path(args.sweep_dir) / 'fits.md'}")


if __name__ == "__main__":
    main()
