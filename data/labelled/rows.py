"""What every labelled-data reader shares: raw examples, text files, checks of a row.

Readers turn their format into `RawExample`s that still hold label *strings* and the
place they came from (`where`: file and line, or record), so that the class mapping,
done once the train split is known, can name the file and line of a bad valid/test
label. Sequences are checked and cleaned here the way FASTA is (data.fasta): lowercase
(soft-masked) bases are uppercased and IUPAC ambiguity codes read as N.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from data.fasta import clean_sequence
from data.masking import IGNORE_INDEX

_NUCLEOTIDES = "ACGTURYSWKMBDHVN"
_VALID = _NUCLEOTIDES + _NUCLEOTIDES.lower()
_UNLABELLED = ".-"
# Per-base digit string -> class code: '0'..'9' their value, '.' and '-' IGNORE_INDEX.
_DIGIT_CODES = np.full(256, -1, dtype=np.int64)
_DIGIT_CODES[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10)
_DIGIT_CODES[np.frombuffer(_UNLABELLED.encode(), dtype=np.uint8)] = IGNORE_INDEX


@dataclass
class RawExample:
    """One example as read, before labels become class indices.

    ``label`` holds the label text of a sequence task (a tuple for several regression
    targets); ``base_labels`` the per-base class codes of a token task (indices into the
    reader's classes, IGNORE_INDEX where unlabelled). ``record`` is the record or
    chromosome name (for splitting by record), ``split`` the value of the split column.
    """

    name: str
    sequence: str
    where: str
    label: str | tuple[str, ...] | None = None
    base_labels: np.ndarray | None = None
    record: str | None = None
    split: str | None = None


def open_text(path: str | Path) -> TextIO:
    """``path`` opened as text; gzip (and bgzip) is recognised by its magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled data file not found: {path}; check the path")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_table(path: str | Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header of a CSV/TSV and an iterator of (line number, row by column name).

    Blank lines are skipped; a row with more or fewer fields than the header is an error.
    """
    fh = open_text(path)
    reader = csv.reader(fh, delimiter=delimiter)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        fh.close()
        raise ValueError(f"{path} is empty: give a table with a header line, e.g. sequence,label")
    columns = [h.strip() for h in header]

    def rows() -> Iterator[tuple[int, dict]]:
        with fh:
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(columns):
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {len(fields)} fields but the header "
                        f"has {len(columns)} ({', '.join(columns)}); fix the row (quote "
                        "fields that contain the delimiter)"
                    )
                yield reader.line_num, dict(zip(columns, (f.strip() for f in fields), strict=True))

    return columns, rows()


def require_columns(path: str | Path, columns: list[str], wanted: dict[str, str]) -> None:
    """Raise unless every column in ``wanted`` (column -> the key that names it) exists."""
    for column, key in wanted.items():
        if column not in columns:
            raise ValueError(
                f"{path}: no column '{column}' (columns found: {', '.join(columns)}); set "
                f"{key} to one of them or add the column"
            )


def check_sequence(seq: str, where: str) -> str:
    """The cleaned (uppercase, IUPAC codes as N) ``seq``; an error if empty or not DNA."""
    if not seq:
        raise ValueError(f"{where}: empty sequence; give the example its bases or remove it")
    bad = seq.translate(str.maketrans("", "", _VALID))
    if bad:
        pos = next(i for i, c in enumerate(seq) if c == bad[0])
        raise ValueError(
            f"{where}: character {bad[0]!r} at base {pos + 1} of the sequence is not a "
            "nucleotide (A, C, G, T, N or an IUPAC code, any case); fix or remove it"
        )
    return clean_sequence(seq)


def digit_labels(text: str, length: int, where: str) -> np.ndarray:
    """Per-base class codes of a digit string (`0`-`9` a class, `.`/`-` unlabelled)."""
    if len(text) != length:
        raise ValueError(
            f"{where}: {len(text)} per-base labels for a sequence of {length} bases; give "
            "exactly one label (a class digit, or . for unlabelled) per base"
        )
    # 'replace' keeps one byte per character ('?', not a digit), so positions stay exact.
    raw = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)
    codes = _DIGIT_CODES[raw]
    bad = np.flatnonzero(codes == -1)
    if bad.size:
        raise ValueError(
            f"{where}: per-base label {text[bad[0]]!r} at base {bad[0] + 1} is not a class "
            f"digit (0-9) or {' or '.join(_UNLABELLED)} (unlabelled); fix the labels"
        )
    return codes
