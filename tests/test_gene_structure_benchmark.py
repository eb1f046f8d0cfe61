"""The gene-structure benchmark's data and metrics, on the real Drosophila files.

The chromosome is a real slice of `dmel_chr2R.fa.gz` (its first 2.11 Mbp, which hold the
first loci of both GenBank files, at their true coordinates), the loci the first records
of `genes.train.gb.gz` / `genes.test.gb.gz`; placement is checked against biology the
labels must agree with: each CDS starts with ATG and is followed by a stop codon (or, on
the minus strand, the reverse), and introns are GT..AG.
"""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest

from benchmarks.gene_structure_data import (
    CHROM,
    CLASSES,
    SLICE_OFFSET,
    default_drosophila_dir,
    exclude_regions,
    locus_span,
    place,
    upstream_floors,
    with_context,
    write_csv,
)
from benchmarks.gene_structure_eval import base_metrics, boundary_bases, crop, position_bins
from data.fasta import open_fasta
from data.labelled import DatasetOptions, load_dataset
from data.masking import IGNORE_INDEX
from data.regions import parse_region

DROSOPHILA = default_drosophila_dir()
SLICE_BP = 2_110_000
pytestmark = pytest.mark.skipif(
    not (DROSOPHILA / "dmel_chr2R.fa.gz").is_file(), reason="shared/datasets/drosophila absent"
)
EXON, FLANK, INTRON = (CLASSES.index(c) for c in ("exon", "flank", "intron"))


def write_slice(path, change_at: int | None = None) -> None:
    """The first SLICE_BP bases of chr2R as a FASTA; `change_at` (0-based) mutates one."""
    lines, bp = [], 0
    with gzip.open(DROSOPHILA / "dmel_chr2R.fa.gz", "rt") as fh:
        next(fh)
        while bp < SLICE_BP:
            lines.append(next(fh).rstrip())
            bp += len(lines[-1])
    seq = "".join(lines)[:SLICE_BP]
    if change_at is not None:
        seq = seq[:change_at] + ("c" if seq[change_at] in "aA" else "a") + seq[change_at + 1 :]
    body = "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))
    path.write_text(f">{CHROM}\n{body}\n")


def first_records(name: str, count: int, path) -> None:
    """The first `count` GenBank records of a dataset file, copied as they are."""
    with gzip.open(DROSOPHILA / name, "rt") as fh:
        text = fh.read()
    path.write_text("".join(f"{r}//\n" for r in text.split("//\n")[:count]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmel")
    write_slice(tmp / "chr2R.fa")
    first_records("genes.train.gb.gz", 4, tmp / "train.gb")
    first_records("genes.test.gb.gz", 2, tmp / "test.gb")
    return tmp, open_fasta(tmp / "chr2R.fa", cache_dir=tmp)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def test_loci_sit_on_the_chromosome_with_their_gene_structure(files):
    tmp, fasta = files
    loci = place(tmp / "train.gb", fasta)
    assert [x.name for x in loci] == ["chr2R_23932-26830", "chr2R_66243-68138",
                                      "chr2R_68139-69571", "chr2R_84326-86847"]  # fmt: skip
    assert (loci[0].start, loci[0].end) == (23931 + SLICE_OFFSET, 26830 + SLICE_OFFSET)
    stops, introns = {"TAA", "TAG", "TGA"}, []
    for locus in loci:
        seq = fasta[CHROM][locus.start : locus.end].upper()
        labels = locus.base_labels
        assert len(labels) == len(seq) and set(np.unique(labels)) <= {EXON, FLANK, INTRON}
        assert labels[0] == labels[-1] == FLANK
        exons = runs(labels == EXON)
        cds = "".join(seq[a:b] for a, b in exons)
        first, last = exons[0][0], exons[-1][1]
        plus = cds.startswith("ATG") and seq[last : last + 3] in stops
        minus = cds.endswith("CAT") and seq[first - 3 : first] in {"TTA", "CTA", "TCA"}
        assert len(cds) % 3 == 0 and plus != minus, locus.name
        # Introns lie exactly between consecutive exons.
        assert runs(labels == INTRON) == [(b, c) for (_, b), (c, _) in itertools.pairwise(exons)]
        introns += [seq[a:b] for a, b in runs(labels == INTRON)]
    # GT..AG on the plus strand reads CT..AC on the minus strand.
    assert len(introns) == 4 and all(s[:2] + s[-2:] in ("GTAG", "CTAC") for s in introns)


def test_a_locus_that_does_not_match_the_chromosome_is_refused(tmp_path):
    write_slice(tmp_path / "chr2R.fa", change_at=23931 + SLICE_OFFSET + 9)
    first_records("genes.train.gb.gz", 2, tmp_path / "train.gb")
    fasta = open_fasta(tmp_path / "chr2R.fa", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"locus chr2R_23932-26830 differs from "
                       r"chr2R:2023932-2026830 of the FASTA at base 10;"):  # fmt: skip
        place(tmp_path / "train.gb", fasta)
    with pytest.raises(ValueError, match="locus name 'chr2_1-9' is not chr2R_START-END"):
        locus_span("chr2_1-9", "genes.gb")


def test_rows_round_trip_through_data_labelled(files, tmp_path):
    tmp, fasta = files
    train, test = place(tmp / "train.gb", fasta), place(tmp / "test.gb", fasta)
    floors = upstream_floors(train, test)
    # chr2R_66243-68138 follows test locus chr2R_60221-63882: its upstream stops there.
    assert floors == [0, test[0].end, test[0].end, test[1].end]
    rows = [with_context(x, fasta, 4000, 0, f) for x, f in zip(train, floors, strict=True)]
    assert [len(r.sequence) - (x.end - x.start) for r, x in zip(rows, train, strict=True)] == [
        4000, train[1].start - test[0].end, 4000, 4000]  # fmt: skip
    rows.append(with_context(test[0], fasta, 300, 200))
    write_csv(rows, tmp_path / "rows.csv")
    options = DatasetOptions(train=str(tmp_path / "rows.csv"), classes=CLASSES)
    read = load_dataset(options, "token_classification").train
    for row, example in zip(rows, read, strict=True):
        assert example.sequence == row.sequence.upper()
        np.testing.assert_array_equal(example.base_labels, row.labels)
    locus = test[0]
    assert rows[-1].sequence == fasta[CHROM][locus.start - 300 : locus.end + 200].upper()
    seq, labels = crop(rows[-1].sequence, rows[-1].labels, 100, 0)
    assert seq == rows[-1].sequence[200 : 300 + locus.end - locus.start]
    assert (labels[:100] == IGNORE_INDEX).all() and (labels[100:] != IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="fewer than the 400 / 0 bp asked for; prepare"):
        crop(rows[-1].sequence, rows[-1].labels, 400, 0)


def test_exclude_regions_are_samtools_regions_of_loci_with_context(files):
    tmp, fasta = files
    test = place(tmp / "test.gb", fasta)
    regions = exclude_regions(test, 4000, 4000, SLICE_BP)
    assert regions[0] == "chr2R:2056221-2067882"  # 60221-4000 .. 63882+4000, + 2 Mbp
    parsed = [parse_region(r, {CHROM: SLICE_BP}) for r in regions]
    assert [(p.start, p.end) for p in parsed] == [(x.start - 4000, x.end + 4000) for x in test]


def test_boundary_bases_are_those_near_an_exon_edge():
    i = IGNORE_INDEX
    labels = np.array([i, i, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2, 0, 0, 1, 1, 1, 1, 0, i])
    # Exon edges before bases 5, 9, 12, 14 and 18 (the exon at 18 meets the unlabelled
    # base 19, which is no edge); radius 1 marks one base on each side of each edge.
    expected = np.zeros(len(labels), dtype=bool)
    expected[[4, 5, 8, 9, 11, 12, 13, 14, 17, 18]] = True
    np.testing.assert_array_equal(boundary_bases(labels, radius=1), expected)
    # Radius 2: the windows [3, 7), [7, 11), [10, 14), [12, 16), [16, 20) minus base 19.
    assert np.flatnonzero(boundary_bases(labels, radius=2)).tolist() == list(range(3, 19))
    assert not boundary_bases(np.array([i, 0, 0, i]), radius=3).any()


def test_base_metrics_on_known_inputs():
    truth = np.array([EXON, EXON, EXON, FLANK, INTRON, INTRON])
    predicted = np.array([EXON, EXON, INTRON, FLANK, INTRON, -1])  # -1: no token covered it
    boundary = np.array([False, False, True, True, False, False])
    m = base_metrics(truth, predicted, boundary)
    # exon: 2 of 3 found, none false: F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    # intron: 1 of 2 found, 1 false (base 2): precision 1/2, recall 1/2, F1 = 0.5
    assert m["exon_f1"] == pytest.approx(0.8) and m["intron_f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["boundary_accuracy"] == 0.5
    assert (m["bases"], m["boundary_bases"]) == (6, 2)
    assert base_metrics(truth, truth, np.zeros(6, bool))["boundary_accuracy"] is None


def test_position_bins_double_in_width():
    bins = position_bins(np.array([1, 2, 3, 4, 5, 40, 33]))
    assert {k: np.flatnonzero(v).tolist() for k, v in bins.items()} == {
        "1": [0], "2": [1], "3-4": [2, 3], "5-8": [4], ">32": [5, 6]}  # fmt: skip
