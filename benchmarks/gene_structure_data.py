"""The gene-structure task's data: Drosophila loci placed on chr2R with context around them.

The AUGUSTUS tutorial's curated loci (`../shared/datasets/drosophila/`, 486 train and 100
test GenBank records) are read through `data.labelled` (CDS parts -> exon, between them
intron, the rest flank). Each locus is named `chr2R_START-END` after its 1-based place on
the tutorial's slice of the arm, which starts at base 2,000,001 of `dmel_chr2R.fa.gz`;
`place` checks that every locus's sequence is exactly the chromosome's there, so context
read from the chromosome around it is the real neighbourhood of the gene.

A row of the written CSVs (`name,sequence,labels`, a form `rmt-finetune` reads) is a locus
with unlabelled (`.`) chromosome before it (and, for the test split, after it): context
the model reads through memory but is never scored on. The loci tile the slice almost
without gaps, so the context of a locus is mostly its neighbours; a train or valid
locus's upstream stops at the end of the nearest test locus, so no test sequence is ever
read during fine-tuning, and `exclude_regions` keeps test loci and their context out of
pre-training.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyfaidx

from data.atomic import atomic_path
from data.fasta import clean_sequence
from data.labelled import DatasetOptions, load_dataset
from data.masking import IGNORE_INDEX
from data.regions import Region

CHROM = "chr2R"  # the record name in dmel_chr2R.fa.gz
SLICE_OFFSET = 2_000_000  # locus coordinates + this = chromosome coordinates
CLASSES = ["exon", "flank", "intron"]  # the per-base class codes 0, 1, 2
_NAME = re.compile(r"chr2R_(\d+)-(\d+)")


def default_drosophila_dir() -> Path:
    """`../shared/datasets/drosophila` beside the checkout, or $RMT_DROSOPHILA_DIR."""
    here = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "drosophila"
    return Path(os.environ.get("RMT_DROSOPHILA_DIR", here))


def dataset_file(drosophila: Path, name: str) -> Path:
    path = drosophila / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point --drosophila (or $RMT_DROSOPHILA_DIR) at the directory "
            "with dmel_chr2R.fa.gz, genes.train.gb.gz and genes.test.gb.gz"
        )
    return path


@dataclass(frozen=True)
class Locus:
    """A curated locus on the chromosome: [start, end) 0-based, its per-base class codes."""

    name: str
    start: int
    end: int
    base_labels: np.ndarray


@dataclass(frozen=True)
class Row:
    """A locus with context: `labels` IGNORE_INDEX on the context bases."""

    name: str
    sequence: str
    labels: np.ndarray


def locus_span(name: str, where: str) -> tuple[int, int]:
    """The chromosome [start, end) of a locus named `chr2R_START-END` (slice coordinates)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{where}: locus name {name!r} is not chr2R_START-END; give the "
                         "AUGUSTUS tutorial's loci (genes.*.gb.gz)")  # fmt: skip
    return int(match.group(1)) - 1 + SLICE_OFFSET, int(match.group(2)) + SLICE_OFFSET


def place(genbank: Path, fasta: pyfaidx.Fasta) -> list[Locus]:
    """The loci of a GenBank file on the chromosome, each checked base for base against it."""
    if CHROM not in fasta.records:
        shown = ", ".join(list(fasta.records)[:5])
        raise ValueError(f"{fasta.filename} has no record {CHROM!r} (records: {shown}); "
                         "give dmel_chr2R.fa.gz")  # fmt: skip
    options = DatasetOptions(train=str(genbank), features={"CDS": "exon"}, classes=CLASSES,
                             intron_class="intron", background_class="flank")  # fmt: skip
    data = load_dataset(options, "token_classification")
    loci = []
    for example in data.train:
        where = f"{genbank}, locus {example.name}"
        start, end = locus_span(example.name, where)
        genome = clean_sequence(fasta[CHROM][start:end])
        if genome != example.sequence:
            differs = first_difference(genome, example.sequence)
            raise ValueError(
                f"{where} differs from {CHROM}:{start + 1}-{end} of the FASTA at base "
                f"{differs + 1}; the loci must sit at START-END + {SLICE_OFFSET:,} of the "
                "same assembly (dmel_chr2R.fa.gz)"
            )
        loci.append(Locus(example.name, start, end, example.base_labels))
    return sorted(loci, key=lambda locus: locus.start)


def first_difference(a: str, b: str) -> int:
    """The 0-based index of the first base where `a` and `b` differ (or the shorter's end)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(
        np.frombuffer(a[:n].encode(), np.uint8) != np.frombuffer(b[:n].encode(), np.uint8)
    )
    return int(differ[0]) if differ.size else n


def split_valid(loci: list[Locus], fraction: float, seed: int) -> tuple[list[Locus], list[Locus]]:
    """(train, valid): a random `fraction` of the loci held out, both in chromosome order."""
    count = round(len(loci) * fraction)
    held = set(np.random.default_rng(seed).permutation(len(loci))[:count].tolist())
    return ([x for i, x in enumerate(loci) if i not in held],
            [x for i, x in enumerate(loci) if i in held])  # fmt: skip


def with_context(
    locus: Locus, fasta: pyfaidx.Fasta, left_bp: int, right_bp: int, floor: int = 0
) -> Row:
    """The locus with up to `left_bp` of chromosome before it (never before `floor`) and
    `right_bp` after it, the context unlabelled."""
    start = max(locus.start - left_bp, floor, 0)
    end = min(locus.end + right_bp, len(fasta[CHROM]))
    labels = np.full(end - start, IGNORE_INDEX, dtype=np.int64)
    labels[locus.start - start : locus.end - start] = locus.base_labels
    return Row(locus.name, clean_sequence(fasta[CHROM][start:end]), labels)


def upstream_floors(loci: list[Locus], blocked: list[Locus]) -> list[int]:
    """Per locus, the end of the last `blocked` locus that ends at or before its start
    (0 if none): where its upstream context must stop."""
    ends = sorted(x.end for x in blocked)
    return [ends[i - 1] if (i := bisect.bisect_right(ends, x.start)) else 0 for x in loci]


def exclude_regions(loci: list[Locus], left_bp: int, right_bp: int, length: int) -> list[str]:
    """samtools regions (1-based inclusive) of loci with their context: data.exclude."""
    return [str(Region(CHROM, max(x.start - left_bp, 0), min(x.end + right_bp, length)))
            for x in loci]  # fmt: skip


def label_text(labels: np.ndarray) -> str:
    """Per-base class codes as the CSV's text: a digit per class, `.` for unlabelled."""
    if labels.max(initial=0) > 9 or ((labels < 0) & (labels != IGNORE_INDEX)).any():
        raise ValueError("per-base labels must be class codes 0-9 or IGNORE_INDEX")
    chars = np.where(labels == IGNORE_INDEX, ord("."), labels + ord("0")).astype(np.uint8)
    return chars.tobytes().decode("ascii")


def write_csv(rows: list[Row], path: Path) -> None:
    """The rows as `name,sequence,labels` (one class digit per base, `.` unlabelled; the
    locus name for people, rmt-finetune reads the other two), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("name,sequence,labels\n")
        f.writelines(f"{row.name},{row.sequence},{label_text(row.labels)}\n" for row in rows)
