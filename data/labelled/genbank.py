"""GenBank records as token examples: each record one example, labelled by its features.

Read with Biopython's SeqIO, so `join(...)`, `complement(join(...))` and `order(...)`
locations come out as parts with 0-based half-open bounds; the parts of one feature are
what `intron_class` fills between. Every record must carry at least one of the feature
types asked for: a record without any is almost always a wrong `features` key (`CDS`
versus `cds`), and would otherwise train as all background.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TextIO

from Bio import BiopythonParserWarning, SeqIO
from Bio.Seq import UndefinedSequenceError
from Bio.SeqRecord import SeqRecord

from data.labelled.features import Feature, paint
from data.labelled.options import DatasetOptions
from data.labelled.rows import RawExample, check_sequence, open_text

_LOCUS_WARNINGS = r"(Malformed|Truncated) LOCUS line|LOCUS line does not have valid strand"


def read_genbank(path: str, options: DatasetOptions, classes: list[str]) -> list[RawExample]:
    """Each record of a GenBank file (plain or gzip) with per-base labels from features."""
    with open_text(path) as fh:
        examples = [_example(path, n, r, options, classes) for n, r in _records(path, fh)]
    if not examples:
        raise ValueError(f"{path} holds no GenBank records (LOCUS ... //); give a GenBank file")
    return examples


def _records(path: str, fh: TextIO) -> Iterator[tuple[int, SeqRecord]]:
    """(number, record) of each record; a parse failure names the file and record number.

    A generator, so errors raised while handling a record are not mistaken for its own.
    """
    number = 0
    try:
        with warnings.catch_warnings():
            # Minimal LOCUS lines (name and length only, as AUGUSTUS and many tools write
            # them) are read correctly; Biopython would warn once per record.
            warnings.filterwarnings("ignore", _LOCUS_WARNINGS, BiopythonParserWarning)
            for number, record in enumerate(SeqIO.parse(fh, "genbank"), 1):
                yield number, record
    except (ValueError, AssertionError) as exc:
        raise ValueError(
            f"{path}: Biopython cannot read GenBank record {number + 1} ({exc}); check "
            "that the file is GenBank (LOCUS ... //), or set data.format"
        ) from exc


def _example(
    path: str, number: int, record: SeqRecord, options: DatasetOptions, classes: list[str]
) -> RawExample:
    """One record as an example; its sequence checked, its features painted."""
    where = f"{path}, record {record.name!r} (#{number})"
    try:
        seq = check_sequence(str(record.seq), where)
    except UndefinedSequenceError:
        raise ValueError(f"{where} has no sequence (no ORIGIN section); give the "
                         "records with their sequence") from None  # fmt: skip
    features = []
    for feature in record.features:
        if feature.type in options.features:
            if feature.location is None:
                raise ValueError(f"{where}: Biopython cannot read the location of a "
                                 f"{feature.type} feature; fix it in the file")  # fmt: skip
            parts = tuple((int(p.start), int(p.end)) for p in feature.location.parts)
            if max(b for _, b in parts) > len(seq):
                raise ValueError(f"{where}: {feature.type} {feature.location} ends past "
                                 f"the record's {len(seq)} bp; fix the location")  # fmt: skip
            features.append(Feature(feature.type, parts))
    if not features:
        found = sorted({f.type for f in record.features}) or ["none"]
        raise ValueError(
            f"{where} has no {' or '.join(options.features)} feature (its features: "
            f"{', '.join(found)}); check data.features or remove the record"
        )
    codes = paint(0, len(seq), features, options, classes)
    return RawExample(record.name, seq, where, None, codes, record.name)
