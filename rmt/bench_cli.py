"""Console entry points of the benchmark harness: rmt-bench and rmt-bench-summary.

They are reached through `rmt` so that `rmt`'s check for packages that shadow this
distribution's (rmt/install.py) runs before `benchmarks` itself is imported: a
`benchmarks` package of the user's own on the path then ends in one line naming it,
not in an ImportError from inside it.
"""

from benchmarks.report import main as bench_summary
from benchmarks.segments import main as bench

__all__ = ["bench", "bench_summary"]
