"""The `data` node of rmt-finetune: where labelled examples come from and how to split them.

One dataclass whose field names are the YAML keys, so `data.label_column` on the command
line is `options.label_column` here. It lives in the data package (not with the apps)
because only the loaders read it; `__post_init__` checks choices and combinations that no
file is needed to judge, in config keys (`data.format=xls ...`), so a bad sweep fails
before any file is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASK_KINDS = ("sequence_classification", "sequence_regression", "token_classification")
FORMATS = ("auto", "csv", "tsv", "bed", "fasta", "genbank", "gff")
# Formats whose examples have a record or chromosome name, so they can split by record.
RECORD_FORMATS = ("bed", "fasta", "genbank", "gff")
# Formats whose per-base labels come from features, painted through `features`.
FEATURE_FORMATS = ("genbank", "gff")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".bed": "bed",
    ".fa": "fasta",
    ".fasta": "fasta",
    ".fna": "fasta",
    ".fas": "fasta",
    ".gb": "genbank",
    ".gbk": "genbank",
    ".gbff": "genbank",
    ".genbank": "genbank",
    ".gff": "gff",
    ".gff3": "gff",
}


@dataclass
class DatasetOptions:
    """Labelled examples for fine-tuning (rmt-finetune's `data` node).

    Fields (YAML keys):
        train: the training file (required). Its format gives the examples: CSV/TSV rows,
            BED intervals over `fasta`, FASTA records (+ the `labels` side table), GenBank
            records, or GFF3 features over `fasta`.
        valid, test: files of the same format for validation and test, or null (split
            one file instead with `split_column` or `valid_records`/`test_records`).
        format: auto (from the extension, `.gz` allowed) or csv, tsv, bed, fasta, genbank,
            gff.
        fasta: the reference FASTA that BED and GFF coordinates refer to (pyfaidx; plain
            gzip is decompressed once into a cache).
        labels: the side table of FASTA records (CSV, or TSV when named .tsv/.tab/.txt;
            a header with `name` and the label column(s)); every record needs a row.
        regions: a BED of example regions for GFF/BED features (each region one example,
            minus strand read reverse-complemented); null: each FASTA record with a
            feature is one example.
        sequence_column: the CSV/TSV column holding the sequence.
        label_column: the column of the label (classification) or target (regression); a
            list of columns for several regression targets. In a header-less BED, a column
            number (1-based, as `cut -f`) or a BED name (name, score, strand, ...); for BED
            features the column holding the feature type.
        labels_column: the CSV/TSV column of per-base labels for token tasks: one class
            digit per base, `.` or `-` for an unlabelled base.
        split_column: null, or a column whose values (train, valid, test) say where each
            row goes, so that one file gives all splits.
        valid_records, test_records: record or chromosome names whose examples go to
            valid / test (the rest train): splitting by record.
        classes: null (classification: the sorted distinct labels of the train split;
            digits: `0` up to the largest digit; features: the sorted class names), or the
            classes in index order.
        features: feature type -> class name for per-base labels from GenBank, GFF or BED
            features, e.g. {CDS: exon}.
        intron_class: null, or the class of the bases between the parts of one joined
            feature (GenBank join, BED12 blocks) or between the parts of one parent (GFF).
        background_class: the class of every other base of an example, e.g. flank.
        cache_dir: where plain-gzip FASTA is decompressed (null: `$RMT_CACHE_DIR/fasta`).
    """

    train: str
    valid: str | None = None
    test: str | None = None
    format: str = "auto"
    fasta: str | None = None
    labels: str | None = None
    regions: str | None = None
    sequence_column: str = "sequence"
    label_column: Any = "label"
    labels_column: str = "labels"
    split_column: str | None = None
    valid_records: list[str] | None = None
    test_records: list[str] | None = None
    classes: list[str] | None = None
    features: dict[str, str] | None = None
    intron_class: str | None = None
    background_class: str = "background"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("data.train is empty: give the training file, data.train=train.csv")
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r} is not a format; choose one of "
                             f"{', '.join(FORMATS)}")  # fmt: skip
        fmt = self.file_format(self.train)
        self._check_split(fmt)
        self._check_sources(fmt)
        self._check_labels()

    def file_format(self, path: str) -> str:
        """`format`, or when it is auto the format that `path`'s extension names."""
        if self.format != "auto":
            return self.format
        name = Path(path).name.lower()
        for suffix in (".gz", ".bgz"):
            name = name.removesuffix(suffix)
        ext = Path(name).suffix
        if ext not in _EXTENSIONS:
            raise ValueError(
                f"data.format=auto cannot tell the format of {path} from its extension; "
                f"name it {', '.join(sorted(_EXTENSIONS))} (optionally .gz), or set "
                f"data.format to one of {', '.join(FORMATS[1:])}"
            )
        return _EXTENSIONS[ext]

    def label_columns(self) -> list[str]:
        """`label_column` as a list of column names or numbers (as text)."""
        if self.several_targets():
            return [str(v) for v in self.label_column]
        return [str(self.label_column)]

    def several_targets(self) -> bool:
        """Whether `label_column` is a list, so that regression targets are tuples."""
        return isinstance(self.label_column, Sequence) and not isinstance(self.label_column, str)

    def _check_split(self, fmt: str) -> None:
        by_file = self.valid is not None or self.test is not None
        by_record = self.valid_records is not None or self.test_records is not None
        if self.split_column is not None and (by_file or by_record):
            raise ValueError(
                f"data.split_column={self.split_column!r} gives every split from data.train; "
                "drop data.valid/data.test and data.valid_records/data.test_records, or drop "
                "data.split_column"
            )
        if by_record and by_file:
            raise ValueError(
                "data.valid_records/data.test_records split data.train by record; drop "
                "data.valid/data.test (or the record lists)"
            )
        if by_record and fmt not in RECORD_FORMATS:
            raise ValueError(
                f"data.valid_records/data.test_records need examples with record names "
                f"({', '.join(RECORD_FORMATS)}), but {self.train} is {fmt}; use "
                "data.split_column or data.valid/data.test instead"
            )
        if self.split_column is not None and fmt in FEATURE_FORMATS:
            raise ValueError(
                f"data.split_column: {fmt} has no columns; split by record "
                "(data.valid_records/data.test_records) or by file (data.valid/data.test)"
            )

    def _check_sources(self, fmt: str) -> None:
        if fmt in ("bed", "gff") and self.fasta is None:
            raise ValueError(
                f"data.fasta is not set: {fmt} coordinates of {self.train} need the "
                "reference FASTA they refer to, e.g. data.fasta=genome.fa.gz"
            )
        if fmt == "fasta" and self.labels is None:
            raise ValueError(
                f"data.labels is not set: the FASTA records of {self.train} need a side "
                "table of labels (columns name,label), e.g. data.labels=labels.csv"
            )
        if self.regions is not None and fmt not in ("bed", "gff"):
            raise ValueError(
                f"data.regions applies to BED or GFF features over data.fasta, not to {fmt}; "
                "drop data.regions"
            )

    def _check_labels(self) -> None:
        if self.features is not None and not self.features:
            raise ValueError(
                "data.features is empty: map feature types to classes, e.g. "
                "data.features='{CDS: exon}'"
            )
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes={list(self.classes)} repeats a class; list each once")
        if not self.label_columns() or any(not c for c in self.label_columns()):
            raise ValueError("data.label_column is empty: name the label column, e.g. label")
