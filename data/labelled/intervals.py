"""Examples from intervals over a reference FASTA: labelled BED regions, BED features, GFF3.

A BED of labelled regions gives sequence examples (minus strand reverse-complemented); a
BED or GFF3 of features gives per-base labels painted onto regions or whole records
(data.labelled.features). GFF3 is read with gffutils' streaming parser (no database is
built), and the parts of one parent (the exons or CDS of one transcript) are one feature,
so that the bases between them are its introns.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import gffutils
import pyfaidx

from data.fasta import clean_sequence, open_fasta
from data.genome import reverse_complement
from data.labelled.bed import BedFile
from data.labelled.features import Feature, FeatureIndex, examples_over_fasta
from data.labelled.options import DatasetOptions
from data.labelled.rows import RawExample


@contextlib.contextmanager
def reference(options: DatasetOptions) -> Iterator[tuple[pyfaidx.Fasta, dict[str, int]]]:
    """The reference FASTA `fasta` (opened once per file read) and its record lengths."""
    fasta = open_fasta(options.fasta, cache_dir=options.cache_dir)
    try:
        yield fasta, {name: len(record) for name, record in fasta.records.items()}
    finally:
        fasta.close()


def read_bed_regions(path: str, options: DatasetOptions, task_kind: str) -> list[RawExample]:
    """Each BED line one sequence example, labelled by its label column(s)."""
    with reference(options) as (fasta, lengths):
        bed = BedFile(path, lengths)
        labels = [bed.column(c, "data.label_column") for c in options.label_columns()]
        split = None
        if options.split_column is not None:
            split = bed.column(options.split_column, "data.split_column")
        several = task_kind == "sequence_regression" and options.several_targets()
        examples = []
        for line in bed.lines():
            values = tuple(bed.value(line, i, "data.label_column") for i in labels)
            seq = clean_sequence(fasta[line.chrom][line.start : line.end])
            example = RawExample(line.region_name(), seq, f"{path}, line {line.line}",
                                 values if several else values[0], None, line.chrom)  # fmt: skip
            if split is not None:
                example.split = bed.value(line, split, "data.split_column")
            if line.strand == "-":
                example.sequence = reverse_complement(seq)
            examples.append(example)
    return examples


def read_bed_features(path: str, options: DatasetOptions, classes: list[str]) -> list[RawExample]:
    """Token examples from a BED of features (type in the label column; BED12 blocks are
    the parts of one feature) over `fasta`, on `regions` or whole records."""
    with reference(options) as (fasta, lengths):
        bed = BedFile(path, lengths)
        (column,) = [bed.column(c, "data.label_column") for c in options.label_columns()[:1]]
        by_record: dict[str, list[Feature]] = defaultdict(list)
        for line in bed.lines():
            kind = bed.value(line, column, "data.label_column")
            if kind in options.features:
                parts = line.blocks(f"{path}, line {line.line}")
                by_record[line.chrom].append(Feature(kind, tuple(parts)))
        _require_features(path, by_record, options)
        return examples_over_fasta(FeatureIndex(by_record), fasta, options, classes)


def read_gff(path: str, options: DatasetOptions, classes: list[str]) -> list[RawExample]:
    """Token examples from GFF3 features over `fasta`, on `regions` or whole records."""
    with reference(options) as (fasta, lengths):
        by_record = _gff_features(path, options, lengths)
        _require_features(path, by_record, options)
        return examples_over_fasta(FeatureIndex(by_record), fasta, options, classes)


def _gff_features(
    path: str, options: DatasetOptions, lengths: Mapping[str, int]
) -> dict[str, list[Feature]]:
    """Features of the mapped types by record; the parts of one parent grouped together."""
    groups: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for line, feature in _gff_lines(path):
        if feature.featuretype in options.features:
            part = _gff_part(feature, f"{path}, line {line}", lengths)
            for parent in feature.attributes.get("Parent") or [f"line {line}"]:
                groups[(feature.seqid, feature.featuretype, parent)].append(part)
    by_record: dict[str, list[Feature]] = defaultdict(list)
    for (seqid, kind, _), parts in groups.items():
        by_record[seqid].append(Feature(kind, tuple(sorted(parts))))
    return by_record


def _gff_lines(path: str) -> Iterator[tuple[int, gffutils.Feature]]:
    """(line number, feature) of each GFF3 feature line; a parse failure names its line.

    A generator, so errors raised while handling a feature are not mistaken for its own.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"labelled data file not found: {path}; check the path")
    lines = None
    try:
        lines = gffutils.DataIterator(path)
        for feature in lines:
            yield lines.current_item_number + 1, feature
    except (ValueError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"{path}, line {_line(lines)}: not a GFF3 feature line "
            f"({exc}); a line has 9 tab-separated columns, fix it or set data.format"
        ) from exc


def _line(lines: object) -> int:
    """The 1-based line that the GFF iterator was reading (1 before it started)."""
    return (getattr(lines, "current_item_number", None) or 0) + 1


def _gff_part(feature: gffutils.Feature, where: str, lengths: Mapping[str, int]) -> tuple[int, int]:
    """A GFF feature's interval, 0-based half-open, checked against its record."""
    if feature.seqid not in lengths:
        known = ", ".join(list(lengths)[:5])
        raise ValueError(
            f"{where}: sequence {feature.seqid!r} is not in the FASTA (its records: {known}"
            f"{', ...' if len(lengths) > 5 else ''}); fix the seqid or data.fasta"
        )
    start, end = int(feature.start) - 1, int(feature.end)
    if not 0 <= start < end <= lengths[feature.seqid]:
        raise ValueError(
            f"{where}: {feature.featuretype} {feature.start}-{feature.end} (1-based) is empty or "
            f"past the end of {feature.seqid} ({lengths[feature.seqid]:,} bp); fix the "
            "coordinates or data.fasta"
        )
    return start, end


def _require_features(path: str, by_record: Mapping[str, list], options: DatasetOptions) -> None:
    if not by_record:
        raise ValueError(
            f"{path} has no {' or '.join(options.features)} feature; check data.features "
            "(feature types are case-sensitive) or data.label_column"
        )
