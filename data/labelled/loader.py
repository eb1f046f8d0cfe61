"""`load_dataset`: read the configured files, split them, and map labels to classes.

Reading, splitting and class mapping are separate steps on `RawExample`s, so every split
style (by file, by column, by record) meets every format, and a valid/test label that the
train split never had is reported with the file and line it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.labelled.features import feature_classes
from data.labelled.genbank import read_genbank
from data.labelled.intervals import read_bed_features, read_bed_regions, read_gff
from data.labelled.options import FEATURE_FORMATS, TASK_KINDS, DatasetOptions
from data.labelled.rows import RawExample
from data.labelled.splits import split_examples
from data.labelled.tables import read_csv, read_fasta_records


@dataclass
class Example:
    """One labelled sequence.

    ``name`` says where it came from (file:line, record, or interval); ``target`` is the
    class index (classification), a float or a tuple of floats (regression), or None
    (token tasks); ``base_labels`` (len(sequence),) int64 holds the class of each base,
    IGNORE_INDEX where unlabelled (token tasks only). ``sequence`` is uppercase ACGTN.
    """

    name: str
    sequence: str
    target: int | float | tuple[float, ...] | None
    base_labels: np.ndarray | None


@dataclass
class LabelledData:
    """The splits, and what the labels mean: class names (classification and token
    tasks) in index order, or the names of the regression targets."""

    train: list[Example]
    valid: list[Example]
    test: list[Example]
    classes: list[str] | None
    targets: list[str] | None


def load_dataset(options: DatasetOptions, task_kind: str) -> LabelledData:
    """The train, valid and test examples of ``task_kind`` described by ``options``."""
    if task_kind not in TASK_KINDS:
        raise ValueError(f"task kind {task_kind!r} is not one of {', '.join(TASK_KINDS)}")
    painted = _painted_classes(options, task_kind)
    files = {"train": options.train, "valid": options.valid, "test": options.test}
    read = {
        split: _read(path, options, task_kind, painted)
        for split, path in files.items()
        if path is not None
    }
    splits = split_examples(read, options)
    if task_kind == "sequence_classification":
        classes = _label_classes(splits, options)
        mapped = {s: [_classified(x, classes) for x in xs] for s, xs in splits.items()}
        return LabelledData(**mapped, classes=classes, targets=None)
    if task_kind == "sequence_regression":
        mapped = {s: [_regressed(x, options) for x in xs] for s, xs in splits.items()}
        return LabelledData(**mapped, classes=None, targets=options.label_columns())
    classes = painted or _digit_classes(splits, options)
    mapped = {s: [Example(x.name, x.sequence, None, x.base_labels) for x in xs]
              for s, xs in splits.items()}  # fmt: skip
    return LabelledData(**mapped, classes=classes, targets=None)


def _painted_classes(options: DatasetOptions, task_kind: str) -> list[str] | None:
    """The classes of feature-painted labels, or None (digits, or a sequence task)."""
    fmt = options.file_format(options.train)
    if task_kind != "token_classification":
        if fmt in FEATURE_FORMATS:
            raise ValueError(
                f"{options.train} is {fmt}, which gives per-base labels from features; use "
                "task=token_classification, or a CSV/BED/FASTA of labelled sequences"
            )
        return None
    if fmt in (*FEATURE_FORMATS, "bed") and options.features is None:
        raise ValueError(
            f"data.features is not set: per-base labels of {options.train} ({fmt}) are painted "
            "from features; map feature types to classes, e.g. data.features='{CDS: exon}'"
        )
    return feature_classes(options) if fmt in (*FEATURE_FORMATS, "bed") else None


def _read(
    path: str, options: DatasetOptions, task_kind: str, painted: list[str] | None
) -> list[RawExample]:
    fmt = options.file_format(path)
    if fmt in ("csv", "tsv"):
        return read_csv(path, options, task_kind, "," if fmt == "csv" else "\t")
    if fmt == "fasta":
        return read_fasta_records(path, options, task_kind)
    if fmt == "bed":
        if painted is None:
            return read_bed_regions(path, options, task_kind)
        return read_bed_features(path, options, painted)
    if painted is None:  # a valid/test file of a feature format beside a table train file
        raise ValueError(f"{path} is {fmt} but {options.train} is not; give splits of one kind")
    if fmt == "genbank":
        return read_genbank(path, options, painted)
    return read_gff(path, options, painted)


def _label_classes(splits: dict[str, list[RawExample]], options: DatasetOptions) -> list[str]:
    """`classes` as given, else the sorted distinct labels of the train split."""
    if options.classes is not None:
        return list(options.classes)
    classes = sorted({x.label for x in splits["train"]})
    if len(classes) < 2:
        raise ValueError(
            f"the train split of {options.train} has only the class {classes[0]!r}; "
            "classification needs examples of at least two classes"
        )
    return classes


def _classified(example: RawExample, classes: list[str]) -> Example:
    if example.label not in classes:
        raise ValueError(
            f"{example.where}: label {example.label!r} is not one of the classes "
            f"({', '.join(classes)}, from data.classes or the train split); fix the label "
            "or list it in data.classes"
        )
    return Example(example.name, example.sequence, classes.index(example.label), None)


def _regressed(example: RawExample, options: DatasetOptions) -> Example:
    texts = example.label if isinstance(example.label, tuple) else (example.label,)
    values = []
    for column, text in zip(options.label_columns(), texts, strict=True):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"{example.where}: regression target {text!r} (column {column!r}) is not a "
                "finite number; give a number such as 0.5 or remove the row"
            )
        values.append(value)
    target = tuple(values) if isinstance(example.label, tuple) else values[0]
    return Example(example.name, example.sequence, target, None)


def _digit_classes(splits: dict[str, list[RawExample]], options: DatasetOptions) -> list[str]:
    """Digit d is class d: `classes` names them, else `0` up to the train split's largest."""
    top = max((int(x.base_labels.max(initial=-1)) for x in splits["train"]), default=-1)
    classes = list(options.classes) if options.classes is not None else [
        str(d) for d in range(top + 1)
    ]  # fmt: skip
    if len(classes) < 2:
        raise ValueError(
            f"the per-base labels of {options.train} use fewer than two classes; label at "
            "least two (digits 0 and 1, . for unlabelled)"
        )
    for examples in splits.values():
        for x in examples:
            if x.base_labels.max(initial=-1) >= len(classes):
                bad = int(np.flatnonzero(x.base_labels >= len(classes))[0])
                raise ValueError(
                    f"{x.where}: per-base label {x.base_labels[bad]} at base {bad + 1} has no "
                    f"class (classes: {', '.join(classes)}); fix the label or extend "
                    "data.classes"
                )
    return classes
