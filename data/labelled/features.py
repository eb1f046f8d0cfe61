"""Per-base labels painted from features (GenBank, GFF3 or BED) onto examples.

A `Feature` is one feature type with its parts: the pieces of a GenBank join, the blocks
of a BED12 line, or the exons (CDS, ...) of one GFF parent. Every base of an example starts
as `background_class`; with `intron_class` the bases between consecutive parts of one
feature become introns; then the parts themselves are painted in the order of the
`features` mapping, a later type over an earlier one (and over introns: an exon of one
isoform inside another's intron stays an exon). Strand does not change which bases a
feature covers; a minus-strand example (a BED region) is reverse-complemented with its
labels reversed.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyfaidx

from data.fasta import clean_sequence
from data.genome import reverse_complement
from data.labelled.bed import BedFile
from data.labelled.options import DatasetOptions
from data.labelled.rows import RawExample


@dataclass(frozen=True)
class Feature:
    """A feature of type ``kind`` on one record: its parts as 0-based half-open intervals."""

    kind: str
    parts: tuple[tuple[int, int], ...]

    @property
    def start(self) -> int:
        return min(a for a, _ in self.parts)

    @property
    def end(self) -> int:
        return max(b for _, b in self.parts)


def feature_classes(options: DatasetOptions) -> list[str]:
    """The classes of feature labels: `classes` as given, else the sorted class names."""
    needed = {*options.features.values(), options.background_class}
    if options.intron_class is not None:
        needed.add(options.intron_class)
    if options.classes is None:
        return sorted(needed)
    missing = sorted(needed - set(options.classes))
    if missing:
        raise ValueError(
            f"data.classes={list(options.classes)} lacks {', '.join(missing)}, which "
            "data.features, data.intron_class or data.background_class produce; add them"
        )
    return list(options.classes)


def paint(
    start: int, end: int, features: list[Feature], options: DatasetOptions, classes: list[str]
) -> np.ndarray:
    """Class codes (int64) of the bases ``[start, end)`` of a record with ``features``."""
    codes = np.full(end - start, classes.index(options.background_class), dtype=np.int64)

    def fill(a: int, b: int, code: int) -> None:
        a, b = max(a, start) - start, min(b, end) - start
        if a < b:
            codes[a:b] = code

    if options.intron_class is not None:
        intron = classes.index(options.intron_class)
        for feature in features:
            parts = sorted(feature.parts)
            for (_, left_end), (right_start, _) in itertools.pairwise(parts):
                fill(left_end, right_start, intron)
    for kind, name in options.features.items():
        code = classes.index(name)
        for feature in features:
            if feature.kind == kind:
                for a, b in feature.parts:
                    fill(a, b, code)
    return codes


class FeatureIndex:
    """The features of each record, sorted by start, to find those overlapping a region."""

    def __init__(self, by_record: Mapping[str, list[Feature]]) -> None:
        self._features = {r: sorted(f, key=lambda x: x.start) for r, f in by_record.items()}
        self._starts = {r: [f.start for f in fs] for r, fs in self._features.items()}
        self._longest = {r: max(f.end - f.start for f in fs) for r, fs in self._features.items()}

    def records(self) -> set[str]:
        return set(self._features)

    def overlapping(self, record: str, start: int, end: int) -> list[Feature]:
        """Features of ``record`` that share a base with ``[start, end)``."""
        if record not in self._features:
            return []
        starts = self._starts[record]
        lo = bisect.bisect_left(starts, start - self._longest[record])
        hi = bisect.bisect_left(starts, end)
        return [f for f in self._features[record][lo:hi] if f.end > start]


def examples_over_fasta(
    index: FeatureIndex, fasta: pyfaidx.Fasta, options: DatasetOptions, classes: list[str]
) -> list[RawExample]:
    """Token examples from features over a FASTA: each region of `regions` that overlaps
    a feature, else each record that has a feature (whole), in FASTA order."""
    lengths = {name: len(record) for name, record in fasta.records.items()}
    if options.regions is None:
        return [
            RawExample(
                name,
                clean_sequence(fasta[name][:]),
                f"{options.fasta}, record {name!r}",
                base_labels=paint(0, length, index.overlapping(name, 0, length), options, classes),
                record=name,
            )
            for name, length in lengths.items()
            if name in index.records()
        ]
    examples = []
    for line in BedFile(options.regions, lengths).lines():
        features = index.overlapping(line.chrom, line.start, line.end)
        if not features:
            continue
        codes = paint(line.start, line.end, features, options, classes)
        seq = clean_sequence(fasta[line.chrom][line.start : line.end])
        if line.strand == "-":
            seq, codes = reverse_complement(seq), codes[::-1].copy()
        where = f"{options.regions}, line {line.line}"
        examples.append(RawExample(line.region_name(), seq, where, None, codes, line.chrom))
    return examples
