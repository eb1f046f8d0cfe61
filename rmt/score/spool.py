"""Each rank's scored chunks: its own spool and resume point, and what earlier runs left.

A rank of run ``attempt`` appends its chunks' rows (record, allele, strand,
log-likelihood) to ``spool/{attempt}.{rank}.bin`` and, every ``save_every`` chunks,
writes ``spool/{attempt}.{rank}.pt`` atomically: the chunks whose rows are the file's
first ``rows``, and its wall time. No two ranks of any run share a file, so a rerun
under any number of ranks reads every resume point: their chunks are done (rows a kill
left past a resume point, half a row included, are ignored) and the chunks left are
divided among the new ranks. Rank 0 gathers all rows at the end, sorted, so the outputs
do not depend on which rank or run scored a chunk.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_path
from rmt.infer.outputs import SPOOL
from rmt.score.plan import Row
from rmt.writers import Spool

ROW_DTYPE = np.dtype([("record", "<i8"), ("allele", "<i4"), ("strand", "i1"), ("ll", "<f8")])
STRAND_CODES = {"+": 1, "-": -1}


def write_pt(path: Path, state: dict) -> None:
    """``path`` atomically (serialised in memory first: a full disk is an OSError)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def spool_rows(scores: list[tuple[Row, float]]) -> np.ndarray:
    rows = np.zeros(len(scores), dtype=ROW_DTYPE)
    for i, (row, ll) in enumerate(scores):
        rows[i] = (row.record, row.allele, STRAND_CODES[row.site.strand], ll)
    return rows


@dataclass(frozen=True)
class Earlier:
    """What earlier runs of this output directory scored and how long they took."""

    chunks: frozenset[int]
    wall_s: float  # the sum over runs of each run's slowest rank
    runs: int


def resume_points(out: Path) -> list[tuple[Path, dict]]:
    """Every rank's resume point of every run, in name order, with its spool file."""
    points = sorted((out / SPOOL).glob("*.pt")) if (out / SPOOL).is_dir() else []
    return [(p.with_suffix(".bin"), torch.load(p, weights_only=True)) for p in points]


def earlier(out: Path) -> Earlier:
    """Rank 0, holding the lock: temp files of interrupted saves removed, what is done."""
    for stale in (out / SPOOL).glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    (out / SPOOL).mkdir(exist_ok=True)
    points = [state for _, state in resume_points(out)]
    runs: dict[str, float] = {}
    for state in points:
        runs[state["attempt"]] = max(runs.get(state["attempt"], 0.0), state["wall_s"])
    chunks = frozenset(k for state in points for k in state["chunks"])
    return Earlier(chunks, sum(runs.values()), len(runs))


class RankSpool:
    """This rank's spool and resume point in this run."""

    def __init__(self, out: Path, attempt: str, rank: int) -> None:
        self.attempt, self.chunks = attempt, []
        self.point = out / SPOOL / f"{attempt}.{rank}.pt"
        self.spool = Spool(self.point.with_suffix(".bin"), ROW_DTYPE)

    def append(self, chunk: int, scores: list[tuple[Row, float]]) -> None:
        self.spool.append(spool_rows(scores))
        self.chunks.append(chunk)

    def save(self, wall_s: float) -> None:
        """Flush the rows, then record them as done: a kill between loses nothing."""
        self.spool.flush()
        state = {"attempt": self.attempt, "chunks": list(self.chunks), "rows": self.spool.rows}
        write_pt(self.point, state | {"wall_s": wall_s})

    def close(self) -> None:
        self.spool.close()


def gather(out: Path, chunks: int) -> np.ndarray:
    """Every saved row of every rank and run, sorted by (record, allele, strand)."""
    parts, done = [], set()
    for spool, state in resume_points(out):
        rows = np.fromfile(spool, dtype=ROW_DTYPE, count=state["rows"])
        if len(rows) != state["rows"]:
            raise ValueError(
                f"{spool} holds {len(rows)} rows but its resume point says {state['rows']}: "
                "the output directory is damaged; rerun with overwrite=true"
            )
        parts.append(rows)
        done.update(state["chunks"])
    if done != set(range(chunks)):
        raise RuntimeError(f"{out / SPOOL}: {chunks - len(done)} chunk(s) were not scored")
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=ROW_DTYPE)
    return np.sort(rows, order=["record", "allele", "strand"])
