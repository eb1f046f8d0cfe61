"""rmt-bench's figures: step time and step peak memory against segments, per kind."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fits import RMT_METHODS, ok_points, replay_ratio
from data.atomic import atomic_path


def method_labels(records: list[dict]) -> dict[str, str]:
    """Each method's name in tables and legends; rmt_truncated's with its depth k."""
    labels = {}
    for record in records:
        method, k = record["method"], record.get("bptt_depth")
        labels[method] = f"{method} (k={k})" if k is not None else method
    return labels


def plot(records: list[dict], group: str, kind: str, path: Path) -> None:
    """Log-log step time and step peak memory against segments, a linear reference line.

    Training plots also get replay's limit (`benchmarks.fits.REPLAY_RATIO_LIMIT` times its
    peak at the smallest count) when replay was measured at two counts or more.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = method_labels(records)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = (("median_s", "step time (s)"), ("step_peak_delta_mb", "step peak memory (MB)"))
    counts = sorted({r["segments"] for r in records})
    for ax, (field, label) in zip(axes, panels, strict=True):
        for method, name in labels.items():
            points = [(n, y) for n, y in ok_points(records, method, field) if y > 0]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if method.startswith("rmt_") else "--"
                ax.plot(xs, ys, style, marker="o", ms=3, label=name)
        rmt_points = next(
            (points for m in RMT_METHODS[kind] if (points := ok_points(records, m, field))), []
        )
        if rmt_points and rmt_points[-1][1] > 0:  # ∝ segments, through the RMT's last point
            n0, y0 = rmt_points[-1]
            ax.plot(counts, [y0 * n / n0 for n in counts], "k:", lw=1, label="∝ segments")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.tick_params(axis="x", which="minor", bottom=False)
        ax.set_xlabel("segments")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ratio = replay_ratio(records) if kind == "train" else None
    if ratio is not None:
        small = ratio["segments"][1]
        low = dict(ok_points(records, "rmt_replay", "step_peak_delta_mb"))[small]
        label = f"{ratio['limit']:g}× rmt_replay at {small} segments"
        axes[1].axhline(ratio["limit"] * low, color="gray", ls="-.", lw=1, label=label)
        axes[1].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{'Inference' if kind == 'infer' else 'Training step'}: {group}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
