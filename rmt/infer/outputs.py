"""The output directory: who owns it (run identity), spool files, and the final assembly.

``config.json`` records what the outputs depend on (the options less the neutral keys,
and the checkpoint's and FASTA files' identities; for a bare Hugging Face encoder
directory, those of its config, tokenizer and weight files): a rerun with the same
identity resumes, a different one is refused unless ``overwrite=true``. Each job spools
to two files named by its index in the plan; ``assemble`` turns the spools into the
tracks and the embeddings store (``rmt.writers``), each file written atomically.

Each shard (``rmt.infer.plan``) keeps its resume state in ``spool/shard-K.pt``, named by
the shard rather than by the rank that runs it, so a rerun with another number of ranks
finds every shard's state; ``state.pt`` marks the finished run. A claim counts once the
run has a resume point (a shard's state, or the finished mark): a run that died before
its first one (a bad value found late, a kill at start) produced nothing to keep, so the
next run into the directory starts over whatever its configuration. Every file is
written through ``atomic_path`` (``.NAME.PID.HEX.tmp`` beside NAME); the temp files a
kill leaves are removed at start (``remove_stale_temps``), under the directory's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import Encoding
from data.atomic import atomic_path
from rmt.cli import write_json
from rmt.hf_runner import is_hf_encoder_dir
from rmt.infer.options import InferOptions
from rmt.infer.plan import Job
from rmt.infer.score import Scores
from rmt.writers import Piece, segment_dtype, token_dtype, write_store, write_tracks

CONFIG, PLAN, STATE, SUMMARY, STORE = (
    "config.json", "plan.json", "state.pt", "summary.json", "embeddings.h5"
)  # fmt: skip
SPOOL = "spool"
# What a run writes, as glob patterns: what ``overwrite`` clears, and whose temp files
# (``.NAME.*.tmp``) a kill may leave behind; the shards' resume states, in the spool.
OUTPUT_FILES = (CONFIG, PLAN, STATE, SUMMARY, STORE, "*.*.bedGraph", "*.*.bw")
SHARD_STATES = "shard-*.pt"
log = logging.getLogger(__name__)
# Keys that change nothing in the outputs, so a rerun may change them and still resume.
NEUTRAL_KEYS = ("output", "overwrite", "progress", "save_every")
WEIGHTS = "model.safetensors"
# The files of a bare HF encoder directory the model is read from (config, tokenizer,
# weights in safetensors or PyTorch's format, a sharded index, remote code).
HF_SUFFIXES = (".json", ".safetensors", ".bin", ".py")


def file_identity(path: Path) -> dict:
    """A file as an output directory's identity records it (path, size, mtime)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_identity(options: InferOptions, checkpoint: Path, fasta: list[str]) -> dict:
    """What the outputs depend on: the options (less neutral keys) and the input files."""
    config = dataclasses.asdict(options)
    bare = is_hf_encoder_dir(checkpoint)
    for key in NEUTRAL_KEYS + (() if bare else ("hf",)):  # `hf` wraps bare encoders only
        config.pop(key, None)
    return {
        "config": config,
        "checkpoint": _hf_identity(checkpoint) if bare else file_identity(checkpoint / WEIGHTS),
        "fasta": [file_identity(Path(p)) for p in fasta],
    }


def _hf_identity(directory: Path) -> dict:
    """The identities of the files a bare HF encoder is read from: no manifest ties them
    to its weights, as a checkpoint's ties its config and tokenizer to model.safetensors."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in HF_SUFFIXES)
    return {p.name: file_identity(p) for p in files}


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _clear(out: Path) -> None:
    """Remove every file an earlier run wrote into ``out``."""
    for pattern in OUTPUT_FILES:
        for path in out.glob(pattern):
            path.unlink()
    shutil.rmtree(out / SPOOL, ignore_errors=True)


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temp files of writes a kill interrupted; what was removed.

    Only while holding ``out``'s lock: another writer's temp file looks like a dead one.
    """
    stale = [path for pattern in OUTPUT_FILES for path in out.glob(f".{pattern}.*.tmp")]
    stale += (out / SPOOL).glob(f".{SHARD_STATES}.*.tmp")
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d temp file(s) of interrupted writes in %s", len(stale), out)
    return stale


def prepare_output(out: Path, identity: dict, overwrite: bool) -> None:
    """Claim ``out`` for this configuration: resume the same one, refuse another.

    A claim without a resume point does not count (see the module): it is replaced.
    """
    out.mkdir(parents=True, exist_ok=True)
    config = out / CONFIG
    if config.exists():
        old = json.loads(config.read_text())
        if old == identity and not overwrite:
            return
        if not has_resume_point(out):
            log.warning("%s: the run that claimed it never reached a resume point; "
                        "starting over", out)  # fmt: skip
        elif not overwrite:
            raise ValueError(
                f"{out} holds outputs of a different configuration (differs in: "
                f"{', '.join(_differences(old, identity))}); rerun the same command to resume "
                "it, choose another output directory, or add overwrite=true to start over"
            )
        _clear(out)
    write_json(config, identity)


def shard_state(out: Path, shard: int) -> Path:
    """Where shard ``shard`` keeps its resume state."""
    return out / SPOOL / f"shard-{shard:04d}.pt"


def has_resume_point(out: Path) -> bool:
    """Whether a run into ``out`` got far enough to resume: a shard's state, or the end."""
    return (out / STATE).exists() or any((out / SPOOL).glob(SHARD_STATES))


def write_state(path: Path, state: dict) -> None:
    """A resume state (or the finished mark), serialised in memory, then written
    atomically: a full disk is an OSError naming no file (which the app reports), where
    ``torch.save`` to a file would raise a RuntimeError."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@contextlib.contextmanager
def errors_name(out: Path) -> Iterator[None]:
    """An OS error that names no file (a full disk mid-``write``) names ``out`` instead, so
    that its one-line message (``rmt.cli.user_errors``) says where it happened."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(out)) from err


def row_dtypes(
    options: InferOptions, d_model: int, memory_tokens: int
) -> tuple[np.dtype, np.dtype]:
    """The spools' rows: one per token, one per segment."""
    store, tokens = options.embeddings.dtype, options.embeddings.tokens
    return token_dtype(d_model, store, tokens), segment_dtype(d_model, memory_tokens, store)


def spool_piece(job: Job, index: int, spool: Path) -> Piece:
    """The spool files of the plan's job ``index``."""
    return Piece(
        job.chrom, job.strand, spool / f"{index:06d}.tokens", spool / f"{index:06d}.segments"
    )


def pieces_in_genome_order(jobs: list[Job], spool: Path, strand: str | None = None) -> list[Piece]:
    """Finished jobs as ``Piece``s: by region, '+' before '-', increasing forward position."""
    regions: dict[tuple, dict[str, list[int]]] = {}
    for i, job in enumerate(jobs):
        regions.setdefault((job.chrom, job.start), {}).setdefault(job.strand, []).append(i)
    pieces = []
    for by_strand in regions.values():
        for s in ("+", "-"):
            indices = by_strand.get(s, [])
            if strand in (None, s):
                ordered = reversed(indices) if s == "-" else indices  # '-' parts run backwards
                pieces += [spool_piece(jobs[i], i, spool) for i in ordered]
    return pieces


@dataclass
class StepRows:
    """One step's scores copied to the host, from which each row's spool records are cut."""

    logprob: np.ndarray
    masked: np.ndarray | None
    memory: np.ndarray
    pooled: np.ndarray
    hidden: np.ndarray | None  # only for per-token embeddings

    @classmethod
    def from_scores(cls, scores: Scores, token_hidden: bool) -> StepRows:
        return cls(
            scores.logprob.cpu().numpy(),
            None if scores.masked is None else scores.masked.cpu().numpy(),
            scores.memory.float().cpu().numpy(),
            scores.pooled.cpu().numpy(),
            scores.hidden.float().cpu().numpy() if token_hidden else None,
        )

    def tokens(self, row: int, segment: Encoding, spans: np.ndarray, dtype: np.dtype):
        """Token records of batch row ``row``: forward spans, ids, scores (NaN: not run)."""
        n = len(segment)
        tokens = np.zeros(n, dtype=dtype)
        tokens["start"], tokens["end"] = spans[:, 0], spans[:, 1]
        tokens["id"] = segment.ids
        tokens["logprob"] = self.logprob[row, :n]
        tokens["masked"] = np.nan if self.masked is None else self.masked[row, :n]
        if self.hidden is not None:
            tokens["embedding"] = self.hidden[row, :n]
        return tokens

    def segment(self, row: int, spans: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The segment record of batch row ``row``: its span, pooled state and memory."""
        seg = np.zeros(1, dtype=dtype)
        seg["start"], seg["end"] = spans[:, 0].min(), spans[:, 1].max()
        seg["embedding"], seg["memory"] = self.pooled[row], self.memory[row]
        return seg


@dataclass(frozen=True)
class Assembly:
    """Everything the final files are made from, named rather than read off a run."""

    out: Path
    spool: Path
    jobs: list[Job]
    chroms: Sequence[tuple[str, int]]  # (record, length) of every record the jobs cover
    tracks: Sequence[str]  # "logprob", and "masked" when it was computed
    token_dtype: np.dtype
    segment_dtype: np.dtype
    token_embeddings: bool  # per-token rows in the store too
    attrs: dict  # the store's attributes


def assemble(a: Assembly) -> list[str]:
    """Tracks (per strand) and the embeddings store from the spools; the files' names."""
    written = []
    for strand in dict.fromkeys(j.strand for j in a.jobs):
        pieces = pieces_in_genome_order(a.jobs, a.spool, strand)
        for track in a.tracks:
            written += write_tracks(a.out, track, strand, pieces, a.chroms, a.token_dtype)
    dtypes = {"segments": a.segment_dtype}
    if a.token_embeddings:
        dtypes["tokens"] = a.token_dtype
    pieces = pieces_in_genome_order(a.jobs, a.spool)
    written.append(write_store(a.out / STORE, pieces, a.chroms, dtypes, a.attrs))
    return [p.name for p in written]
