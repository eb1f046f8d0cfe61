"""What rmt-bench concludes from its points: linear fits, slope ratios, the crossover, and
memory replay's peak ratio.

Within one group (one configuration), every method gets a least-squares line of step
time and of step peak memory against the number of segments (slope, intercept, R^2);
each RMT method's time slope is divided by each baseline's of the same kind: below 1,
the RMT grows more slowly. The crossover is the first segment count from which the RMT
step is faster than the same encoder over the whole sequence.
"""

from __future__ import annotations

from benchmarks.points import BASELINES, RMT_TRAIN

RMT_METHODS = {"infer": ("rmt_infer",), "train": tuple(RMT_TRAIN)}
WHOLE = {"infer": ("rmt_infer", "whole_infer"), "train": ("rmt_full", "whole_train")}
# Memory replay keeps only each segment's input memory until the backward, so its step
# peak at the largest segment count may be at most this multiple of its peak at the smallest.
REPLAY_RATIO_LIMIT = 1.5


def ok(record: dict) -> bool:
    return record["status"] == "ok"


def ok_points(records: list[dict], method: str, field: str) -> list[tuple[int, float]]:
    """(segments, `field`) of `method`'s measured points, by segments."""
    return sorted((r["segments"], r[field]) for r in records if r["method"] == method and ok(r))


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
    result["replay_ratio"] = replay_ratio(records)
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


def replay_ratio(records: list[dict]) -> dict | None:
    """rmt_replay's step peak at its largest segment count over its peak at the smallest.

    None unless replay was measured at two segment counts or more, the smallest above 0.
    """
    points = ok_points(records, "rmt_replay", "step_peak_delta_mb")
    if len(points) < 2 or points[0][1] <= 0:
        return None
    (small, low), (large, high) = points[0], points[-1]
    return {
        "method": "rmt_replay",
        "segments": [large, small],
        "ratio": high / low,
        "limit": REPLAY_RATIO_LIMIT,
        "ok": high / low <= REPLAY_RATIO_LIMIT,
    }
