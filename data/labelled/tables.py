"""Labels in tables: CSV/TSV rows with their sequence, and FASTA records with a side table.

Both read a row's labels the same way (`row_labels`): the label column(s) of a sequence
task, or the per-base digit string of a token task. The side table is keyed by FASTA
record name and must have a row for every record, so a typo cannot silently drop one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.fasta import clean_sequence, open_fasta
from data.labelled.options import DatasetOptions
from data.labelled.rows import (
    RawExample,
    check_sequence,
    digit_labels,
    read_table,
    require_columns,
)


def _wanted(options: DatasetOptions, task_kind: str) -> dict[str, str]:
    """The columns a row needs for ``task_kind``, each with the key that names it."""
    if task_kind == "token_classification":
        wanted = {options.labels_column: "data.labels_column"}
    else:
        wanted = dict.fromkeys(options.label_columns(), "data.label_column")
    if options.split_column is not None:
        wanted[options.split_column] = "data.split_column"
    return wanted


def row_labels(
    row: dict, options: DatasetOptions, task_kind: str, length: int, where: str
) -> tuple[str | tuple[str, ...] | None, np.ndarray | None]:
    """(label text, per-base codes) of one row; exactly one of them is set."""
    if task_kind == "token_classification":
        return None, digit_labels(row[options.labels_column], length, where)
    columns = options.label_columns()
    for column in columns:
        if not row[column]:
            raise ValueError(
                f"{where}: empty {column!r}; give the example a label or remove the row"
            )
    if task_kind == "sequence_regression" and options.several_targets():
        return tuple(row[c] for c in columns), None
    return row[columns[0]], None


def read_csv(
    path: str, options: DatasetOptions, task_kind: str, delimiter: str
) -> list[RawExample]:
    """Every row of a CSV/TSV with a header: sequence, label(s) or per-base labels."""
    columns, rows = read_table(path, delimiter)
    require_columns(path, columns, {options.sequence_column: "data.sequence_column"})
    require_columns(path, columns, _wanted(options, task_kind))
    examples = []
    for line, row in rows:
        where = f"{path}, line {line}"
        seq = check_sequence(row[options.sequence_column], where)
        label, bases = row_labels(row, options, task_kind, len(seq), where)
        split = row[options.split_column] if options.split_column else None
        examples.append(
            RawExample(f"{Path(path).name}:{line}", seq, where, label, bases, None, split)
        )
    return examples


def _side_table(options: DatasetOptions, task_kind: str) -> dict[str, tuple[int, dict]]:
    """The side table's rows by record name (line number kept for messages)."""
    path = options.labels
    columns, rows = read_table(path, "\t" if _is_tsv(path) else ",")
    require_columns(path, columns, {"name": "the side table's header (data.labels)"})
    require_columns(path, columns, _wanted(options, task_kind))
    table: dict[str, tuple[int, dict]] = {}
    for line, row in rows:
        if row["name"] in table:
            raise ValueError(
                f"{path}, line {line}: record {row['name']!r} already has a row (line "
                f"{table[row['name']][0]}); keep one row per FASTA record"
            )
        table[row["name"]] = (line, row)
    return table


def _is_tsv(path: str) -> bool:
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith((".tsv", ".tab", ".txt"))


def read_fasta_records(path: str, options: DatasetOptions, task_kind: str) -> list[RawExample]:
    """Each FASTA record one example, labelled by its row in the side table `labels`."""
    table = _side_table(options, task_kind)
    fasta = open_fasta(path, cache_dir=options.cache_dir)
    examples = []
    try:
        for name, record in fasta.records.items():
            if name not in table:
                shown = ", ".join(list(table)[:5])
                raise ValueError(
                    f"{options.labels} has no row for FASTA record {name!r} of {path} (rows "
                    f"name e.g. {shown}); add a row `{name},<label>` or remove the record"
                )
            line, row = table[name]
            where = f"{options.labels}, line {line}"
            seq = clean_sequence(record[:])
            label, bases = row_labels(row, options, task_kind, len(seq), where)
            split = row[options.split_column] if options.split_column else None
            examples.append(RawExample(name, seq, where, label, bases, name, split))
    finally:
        fasta.close()
    return examples
