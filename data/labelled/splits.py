"""Splitting examples into train / valid / test: by file, by a column, or by record.

By file, each split is what its file gave. By column (`split_column`), every example of
the train file says where it goes. By record (`valid_records`/`test_records`), whole
records or chromosomes go to valid/test, so that no held-out base sits beside a training
base of the same record. A split that was asked for and comes out empty is an error, and
so is a record name that matches nothing (a typo would otherwise empty a split silently).
"""

from __future__ import annotations

from data.labelled.options import DatasetOptions
from data.labelled.rows import RawExample

SPLITS = ("train", "valid", "test")


def split_examples(
    read: dict[str, list[RawExample]], options: DatasetOptions
) -> dict[str, list[RawExample]]:
    """{train, valid, test} -> examples, from the examples read from each file."""
    for split, examples in read.items():
        if not examples:
            raise ValueError(
                f"{getattr(options, split)} ({split} split) has no examples; give a file "
                "with at least one"
            )
    if options.split_column is not None:
        splits = _by_column(read["train"], options)
    elif options.valid_records is not None or options.test_records is not None:
        splits = _by_record(read["train"], options)
    else:
        splits = {s: read.get(s, []) for s in SPLITS}
    if not splits["train"]:
        raise ValueError(
            f"the train split of {options.train} is empty: every example went to valid or "
            "test; keep some examples for training"
        )
    return splits


def _by_column(examples: list[RawExample], options: DatasetOptions) -> dict[str, list]:
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    for example in examples:
        if example.split not in splits:
            raise ValueError(
                f"{example.where}: split {example.split!r} (column "
                f"{options.split_column!r}) is not one of {', '.join(SPLITS)}; fix the value"
            )
        splits[example.split].append(example)
    return splits


def _by_record(examples: list[RawExample], options: DatasetOptions) -> dict[str, list]:
    held = {"valid": list(options.valid_records or []), "test": list(options.test_records or [])}
    both = sorted(set(held["valid"]) & set(held["test"]))
    if both:
        raise ValueError(
            f"data.valid_records and data.test_records both list {', '.join(both)}; put "
            "each record in one split"
        )
    records = {x.record for x in examples}
    for split, names in held.items():
        unknown = [n for n in names if n not in records]
        if unknown:
            shown = ", ".join(sorted(records)[:5])
            raise ValueError(
                f"data.{split}_records: {', '.join(unknown)} not among the records of "
                f"{options.train} (e.g. {shown}{', ...' if len(records) > 5 else ''}); fix "
                "the names"
            )
    where = {name: split for split, names in held.items() for name in names}
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    for example in examples:
        splits[where.get(example.record, "train")].append(example)
    return splits
