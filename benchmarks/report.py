"""rmt-bench reports: CSV, linear fits, tables and plots; merging the jobs of a sweep.

    rmt-bench-summary multirun/bench/2026-11-22/10-00-00

A group is one configuration (model, batch, segment shape, device, dtype: one job of a
sweep); within it, every method gets a least-squares line of step time and of step peak
memory against the number of segments (slope, intercept, R^2), and each RMT method's
time slope is divided by each baseline's of the same kind (inference or training): below
1, the RMT grows more slowly. The crossover is the first segment count at which the RMT
step is faster than the same encoder over the whole sequence.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from hydra.experimental.callback import Callback

from benchmarks.workloads import BASELINES, RMT_TRAIN
from rmt.cli import user_errors, write_json

CSV_FIELDS = [
    "group", "method", "kind", "segments", "content_tokens", "status", "median_s", "min_s",
    "max_s", "tokens_per_s", "s_per_segment", "peak_mb", "step_peak_delta_mb", "model_flops",
    "flops_per_s", "mfu",
]  # fmt: skip
RMT_METHODS = {"infer": ("rmt_infer",), "train": tuple(RMT_TRAIN)}
WHOLE = {"infer": ("rmt_infer", "whole_infer"), "train": ("rmt_full", "whole_train")}


def group_label(record: dict) -> str:
    """The configuration a record belongs to, as a short readable label."""
    shape = f"S{record['segment_tokens']}+m{record['memory_tokens']}"
    return f"{record['model']} b{record['batch_size']} {shape} {record['device']} {record['dtype']}"


def linear_fit(points: list[tuple[float, float]]) -> dict | None:
    """Least-squares y = slope * x + intercept and its R^2 (None below two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for _, y in points)
    residual = sum((y - slope * x - intercept) ** 2 for x, y in points)
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - residual / total if total > 0 else 1.0,
        "points": n,
    }


def ok_points(records: list[dict], method: str, field: str) -> list[tuple[int, float]]:
    return sorted((r["segments"], r[field]) for r in records if r["method"] == method and ok(r))


def ok(record: dict) -> bool:
    return record["status"] == "ok"


def fits(records: list[dict]) -> dict:
    """Per method: time and memory fits; per RMT method: slope ratios and the crossover."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    result: dict = {"methods": {}, "slope_ratios": {}, "crossover": {}}
    for method in methods:
        result["methods"][method] = {
            "time": linear_fit(ok_points(records, method, "median_s")),
            "memory": linear_fit(ok_points(records, method, "step_peak_delta_mb")),
            "max_segments": max((n for n, _ in ok_points(records, method, "median_s")), default=0),
        }
    for kind, rmt_methods in RMT_METHODS.items():
        for method in (m for m in rmt_methods if result["methods"].get(m, {}).get("time")):
            slope = result["methods"][method]["time"]["slope"]
            result["slope_ratios"][method] = {
                baseline: slope / fit["slope"]
                for baseline in BASELINES[kind]
                if (fit := result["methods"].get(baseline, {}).get("time")) and fit["slope"] > 0
            }
        rmt, whole = WHOLE[kind]
        if rmt in methods and whole in methods:
            result["crossover"][kind] = crossover(records, rmt, whole)
    return result


def crossover(records: list[dict], rmt: str, whole: str) -> dict:
    """From which segment count on `rmt`'s step beats `whole`'s, and where whole gave up.

    "From n on": faster at n and at every larger count both measured, so one noisy
    small point does not make a crossover.
    """
    rmt_time = dict(ok_points(records, rmt, "median_s"))
    whole_time = dict(ok_points(records, whole, "median_s"))
    shared = sorted(set(rmt_time) & set(whole_time))
    faster = [n for n in shared if all(rmt_time[m] < whole_time[m] for m in shared if m >= n)]
    beyond = sorted(n for n in rmt_time if n > max(whole_time, default=0))
    return {
        "rmt": rmt,
        "whole": whole,
        "rmt_faster_from": faster[0] if faster else None,
        "whole_last_measured": max(whole_time, default=None),
        "rmt_beyond_whole": beyond[-1] if beyond else None,
    }


# -- writing --------------------------------------------------------------------------


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
    (out_dir / "points.csv").write_text(buffer.getvalue())
    document = {
        "environment": envs,
        "groups": {g: fits([r for r in records if r["group"] == g]) for g in groups},
    }
    write_json(out_dir / "fits.json", document)
    (out_dir / "fits.md").write_text(markdown(records, envs, document["groups"]))
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
    return "\n".join(lines) + "\n"


def kind_tables(records: list[dict]) -> list[str]:
    """Tokens/s, step peak memory and MFU: rows are segment counts, columns methods."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    by_point = {(r["method"], r["segments"]): r for r in records}
    counts = sorted({r["segments"] for r in records})
    header = ["| segments | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]

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
    methods = list(dict.fromkeys(r["method"] for r in records))
    columns = ["ms / segment", "R² (time)", "MB / segment", "R² (memory)", "up to"]
    rows = [
        "| method | " + " | ".join(columns) + " | time slope ÷ baselines |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for method in methods:
        entry = fit["methods"][method]
        time_fit, memory_fit = entry["time"], entry["memory"]
        ratios = fit["slope_ratios"].get(method, {})
        ratio_text = ", ".join(f"{b}: {v:.2f}" for b, v in ratios.items())
        rows.append(
            f"| {method} | "
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


def plot(records: list[dict], group: str, kind: str, path: Path) -> None:
    """Log-log step time and step peak memory against segments, a linear reference line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = (("median_s", "step time (s)"), ("step_peak_delta_mb", "step peak memory (MB)"))
    counts = sorted({r["segments"] for r in records})
    for ax, (field, label) in zip(axes, panels, strict=True):
        for method in methods:
            points = [(n, y) for n, y in ok_points(records, method, field) if y > 0]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if method.startswith("rmt_") else "--"
                ax.plot(xs, ys, style, marker="o", ms=3, label=method)
        rmt_points = next(
            (points for m in RMT_METHODS[kind] if (points := ok_points(records, m, field))), []
        )
        if rmt_points and rmt_points[-1][1] > 0:  # ∝ segments, through the RMT's last point
            n0, y0 = rmt_points[-1]
            ax.plot(counts, [y0 * n / n0 for n in counts], "k:", lw=1, label="∝ segments")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("segments")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{'Inference' if kind == 'infer' else 'Training step'}: {group}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    (sweep_dir / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
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
        summarize(args.sweep_dir)
        print(f"merged -> {Path(args.sweep_dir) / 'fits.md'}")


if __name__ == "__main__":
    main()
