"""Outputs of rmt-infer: append-only spools while streaming, tracks and a store at the end.

While the streams run, each job (a region on one strand, or one part of it) appends
fixed-size binary records to two spool files of its own, one row per token and one per
segment, as they are produced. Fixed-size rows make resuming simple and safe: the resume
state records each spool's row count, and a rerun cuts a spool back to it, whatever a
kill left half-written after it. HDF5 and bigWig files are not safe to leave open
across a SIGKILL, so they are assembled only when every job is done
(``rmt.infer.outputs.assemble``): in genome order, block by block (memory stays bounded),
each into a temporary file renamed into place.

Per-base tracks: a token's log-probability is spread evenly over its bases, so every base
of a token gets ``logprob / length`` and the track sums to the sequence's log-likelihood.
Each strand gets its own files (``logprob.plus.bw``, ``logprob.minus.bw``): averaging
the strands would mix two different tokenizations of the same bases.

pyBigWig does not survive a full disk (libBigWig corrupts its heap and the process
aborts, with no exception to report), so ``write_tracks`` first checks that the disk
has room for both files at their largest, and refuses with ENOSPC naming the file.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyBigWig

from data.atomic import atomic_path

STRAND_NAMES = {"+": "plus", "-": "minus"}
TRACKS = ("logprob", "masked")
# Bytes per block read from a spool, and the target size of an HDF5 chunk (the default
# chunk cache holds 1 MiB, so larger chunks would be written piecemeal and re-read).
_BLOCK_BYTES = 8 << 20
_CHUNK_BYTES = 1 << 20
# Bytes per track row at most: a bigWig item is 12 bytes before compression, and its
# zoom levels and index add less than as much again (measured: 7.5 bytes a row).
_BIGWIG_ROW_BYTES = 24


def token_dtype(d_model: int, store_dtype: str, embeddings: bool) -> np.dtype:
    """One token row: forward-strand span, id, log-probabilities (NaN: not computed)."""
    fields = [("start", "<i8"), ("end", "<i8"), ("id", "<i4")]
    fields += [("logprob", "<f4"), ("masked", "<f4")]
    if embeddings:
        fields.append(("embedding", store_dtype, (d_model,)))
    return np.dtype(fields)


def segment_dtype(d_model: int, memory_tokens: int, store_dtype: str) -> np.dtype:
    """One segment row: span, mean-pooled hidden state, the memory after the segment."""
    return np.dtype(
        [
            ("start", "<i8"),
            ("end", "<i8"),
            ("embedding", store_dtype, (d_model,)),
            ("memory", store_dtype, (memory_tokens, d_model)),
        ]
    )


class Spool:
    """An append-only file of ``dtype`` rows, cut back to ``rows`` rows when opened."""

    def __init__(self, path: Path, dtype: np.dtype, rows: int = 0) -> None:
        self.path, self.dtype, self.rows = path, dtype, rows
        self._file = path.open("r+b" if path.exists() else "w+b")
        size = os.fstat(self._file.fileno()).st_size
        if size < rows * dtype.itemsize:
            self._file.close()
            raise ValueError(
                f"{path} holds {size // dtype.itemsize} rows but the resume state says "
                f"{rows}: the output directory is damaged; rerun with overwrite=true"
            )
        self._file.truncate(rows * dtype.itemsize)
        self._file.seek(0, os.SEEK_END)

    def append(self, rows: np.ndarray) -> None:
        self._file.write(rows.astype(self.dtype, copy=False).tobytes())
        self.rows += len(rows)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_blocks(
    path: Path, dtype: np.dtype, reverse: bool = False, block_bytes: int = _BLOCK_BYTES
) -> Iterator[np.ndarray]:
    """The rows of a spool file in blocks of about ``block_bytes``, last row first when
    ``reverse``.

    Plain reads rather than a memory map: mapped pages count towards the resident set,
    and peak memory must not grow with the genome.
    """
    rows, size = path.stat().st_size // dtype.itemsize, max(1, block_bytes // dtype.itemsize)
    starts = range(0, rows, size)
    with path.open("rb") as handle:
        for start in reversed(starts) if reverse else starts:
            handle.seek(start * dtype.itemsize)
            block = np.fromfile(handle, dtype=dtype, count=min(size, rows - start))
            yield block[::-1] if reverse else block


@dataclass(frozen=True)
class Piece:
    """A finished job's spools, as the final assembly reads them."""

    chrom: str
    strand: str
    tokens: Path
    segments: Path

    def blocks(self, kind: str, dtype: np.dtype) -> Iterator[np.ndarray]:
        """Rows in increasing forward position (``-`` strand spools are written backwards)."""
        path = self.tokens if kind == "tokens" else self.segments
        return read_blocks(path, dtype, reverse=self.strand == "-")


def _require_space(
    out: Path,
    pieces: Sequence[Piece],
    dtype: np.dtype,
    chroms: Sequence[tuple[str, int]],
    bigwig: Path,
) -> None:
    """Refuse (ENOSPC) to start a strand's track files that might not fit on the disk."""
    digits = {name: len(str(length)) for name, length in chroms}
    need = 0
    for piece in pieces:  # a bedGraph line: name, start, end, a %.6g value, 3 tabs, newline
        line = len(piece.chrom) + 2 * digits[piece.chrom] + 12 + 4
        need += (line + _BIGWIG_ROW_BYTES) * (piece.tokens.stat().st_size // dtype.itemsize)
    free = shutil.disk_usage(out).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device ({free:,} bytes free, the tracks may need {need:,})",
            str(bigwig),
        )


def write_tracks(
    out: Path,
    track: str,
    strand: str,
    pieces: Sequence[Piece],
    chroms: Sequence[tuple[str, int]],
    dtype: np.dtype,
) -> list[Path]:
    """``{track}.{plus|minus}.bedGraph`` and ``.bw`` of one strand; ``pieces`` in genome order."""
    stem = f"{track}.{STRAND_NAMES[strand]}"
    bedgraph, bigwig = out / f"{stem}.bedGraph", out / f"{stem}.bw"
    _require_space(out, pieces, dtype, chroms, bigwig)
    with atomic_path(bedgraph) as tmp_bg, atomic_path(bigwig) as tmp_bw:
        bw = pyBigWig.open(str(tmp_bw), "w")
        try:
            bw.addHeader(list(chroms))
            with tmp_bg.open("w") as text:
                for piece in pieces:
                    for rows in piece.blocks("tokens", dtype):
                        values = rows[track] / (rows["end"] - rows["start"]).astype(np.float32)
                        starts, ends = rows["start"].tolist(), rows["end"].tolist()
                        per_base = values.tolist()
                        text.writelines(
                            f"{piece.chrom}\t{s}\t{e}\t{v:.6g}\n"
                            for s, e, v in zip(starts, ends, per_base, strict=True)
                        )
                        bw.addEntries([piece.chrom] * len(rows), starts, ends=ends, values=per_base)
        finally:
            bw.close()
    return [bedgraph, bigwig]


def _fill(group: h5py.Group, n: int, dtype: np.dtype, blocks: Iterator[tuple[int, np.ndarray]]):
    """Create one chunked dataset per field (plus chrom/strand) and fill it from ``blocks``."""
    fields = {name: (dtype[name].shape, dtype[name].base) for name in dtype.names}
    fields |= {"chrom": ((), np.dtype("<i4")), "strand": ((), np.dtype("i1"))}
    datasets = {}
    for name, (shape, base) in fields.items():
        row_bytes = base.itemsize * int(np.prod(shape))
        # a field without values (the memory of a model run without memory) has no chunks
        chunk = (max(1, min(n, _CHUNK_BYTES // row_bytes)), *shape) if row_bytes else None
        datasets[name] = group.create_dataset(name, (n, *shape), base, chunks=chunk)
    row = 0
    for chrom_index, strand, rows in blocks:
        stop = row + len(rows)
        for name in dtype.names:
            datasets[name][row:stop] = rows[name]
        datasets["chrom"][row:stop] = chrom_index
        datasets["strand"][row:stop] = strand
        row = stop


def write_store(
    path: Path,
    pieces: Sequence[Piece],
    chroms: Sequence[tuple[str, int]],
    dtypes: dict[str, np.dtype],
    attrs: dict,
) -> Path:
    """The HDF5 embeddings store: ``segments/`` (and ``tokens/``) rows in genome order.

    Each group has one dataset per field (``start``, ``end``, ``embedding``, ``memory``,
    ``id``, ...) plus ``chrom`` (an index into the ``chroms`` table) and ``strand``
    (+1 / -1). Rows run over records in the order of ``chroms``, then strands, then
    increasing start.
    """
    index = {name: i for i, (name, _) in enumerate(chroms)}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as store:
        store.attrs.update(attrs)
        store.create_dataset("chroms", data=np.array([c for c, _ in chroms], dtype="S"))
        store.create_dataset("chrom_lengths", data=np.array([n for _, n in chroms], dtype="<i8"))
        for kind, dtype in dtypes.items():
            n = sum(
                (p.tokens if kind == "tokens" else p.segments).stat().st_size // dtype.itemsize
                for p in pieces
            )
            blocks = (
                (index[p.chrom], 1 if p.strand == "+" else -1, rows)
                for p in pieces
                for rows in p.blocks(kind, dtype)
            )
            _fill(store.create_group(kind), n, dtype, blocks)
    return path
