"""Labelled data for fine-tuning (data.labelled): every format, every split, every bad row.

Fixtures are real files written into tmp_path: CSV/TSV (plain and gzip), BED and GFF3
over a FASTA read through pyfaidx, FASTA with a side table, and GenBank written by
Biopython. Labels are checked against values computed by hand from the coordinates.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation
from Bio.SeqRecord import SeqRecord
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from data import IGNORE_INDEX, reverse_complement
from data.labelled import DatasetOptions, load_dataset

RNG = np.random.default_rng(7)
CHR_A = "".join(RNG.choice(list("ACGT"), 200))
CHR_B = "".join(RNG.choice(list("ACGT"), 120))
GENES = {"CDS": "exon"}
EXON_LABELS = {"features": {"exon": "exon"}, "intron_class": "intron", "background_class": "flank"}


def write(path: Path, text: str) -> str:
    """Write ``text`` (gzip when the name ends in .gz) and return the path as str."""
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.fixture
def genome(tmp_path: Path) -> str:
    """A two-record FASTA (chrA 200 bp, chrB 120 bp), chrA soft-masked in part."""
    masked = CHR_A[:50].lower() + CHR_A[50:]
    return write(tmp_path / "genome.fa", f">chrA\n{masked}\n>chrB\n{CHR_B}\n")


def load(task: str, **options):
    return load_dataset(DatasetOptions(**options), task)


# --- CSV / TSV --------------------------------------------------------------------------


def test_csv_classification_by_file(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,label\nACGTacgt,pos\nGGGG,neg\nTTNA,pos\n")
    test = write(tmp_path / "c.csv", "sequence,label\nCCCC,neg\n")
    data = load("sequence_classification", train=train, test=test)
    assert data.classes == ["neg", "pos"]
    assert [(x.sequence, x.target) for x in data.train] == [
        ("ACGTACGT", 1), ("GGGG", 0), ("TTNA", 1)]  # fmt: skip
    assert data.train[0].name == "a.csv:2" and data.valid == []
    assert [x.target for x in data.test] == [0]


def test_unseen_valid_label_names_file_line_and_classes(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,label\nACGT,pos\nGGGG,neg\n")
    valid = write(tmp_path / "b.csv", "sequence,label\nACGT,pos\nACGT,maybe\n")
    with pytest.raises(ValueError, match=r"b\.csv, line 3: label 'maybe' .*neg, pos"):
        load("sequence_classification", train=train, valid=valid)


def test_given_classes_keep_their_order(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,label\nACGT,pos\nGGGG,neg\n")
    data = load("sequence_classification", train=train, classes=["pos", "neg"])
    assert [x.target for x in data.train] == [0, 1] and data.classes == ["pos", "neg"]


def test_gzip_tsv_regression_with_several_targets(tmp_path: Path) -> None:
    train = write(tmp_path / "a.tsv.gz", "seq\tgc\tscore\nACGT\t0.5\t-1e-3\nGGCC\t1\t2\n")
    data = load("sequence_regression", train=train, sequence_column="seq",
                label_column=["gc", "score"])  # fmt: skip
    assert [x.target for x in data.train] == [(0.5, -0.001), (1.0, 2.0)]
    assert data.targets == ["gc", "score"] and data.classes is None


def test_regression_target_must_be_a_number(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,label\nACGT,0.5\nACGT,high\n")
    with pytest.raises(ValueError, match=r"a\.csv, line 3: regression target 'high'"):
        load("sequence_regression", train=train)
    nan = write(tmp_path / "n.csv", "sequence,label\nACGT,nan\n")
    with pytest.raises(ValueError, match=r"n\.csv, line 2: .*not a finite number"):
        load("sequence_regression", train=nan)


def test_csv_per_base_digits_round_trip(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,labels\nACGTAC,0011.-\nGG,21\n")
    data = load("token_classification", train=train)
    assert data.classes == ["0", "1", "2"]
    first = data.train[0].base_labels
    assert first.dtype == np.int64
    assert first.tolist() == [0, 0, 1, 1, IGNORE_INDEX, IGNORE_INDEX]
    text = "".join("." if v == IGNORE_INDEX else str(v) for v in first)
    assert text == "0011.." and data.train[1].base_labels.tolist() == [2, 1]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("ACGT,0101\nACGT,010\n", r"a\.csv, line 3: 3 per-base labels for a sequence of 4"),
        ("ACGT,01x1\n", r"a\.csv, line 2: per-base label 'x' at base 3"),
        ("ACXT,0101\n", r"a\.csv, line 2: character 'X' at base 3"),
        (",0\n", r"a\.csv, line 2: empty sequence"),
        ("ACGT,0101,9\n", r"a\.csv, line 2: 3 fields but the header has 2"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, rows: str, match: str) -> None:
    train = write(tmp_path / "a.csv", "sequence,labels\n" + rows)
    with pytest.raises(ValueError, match=match):
        load("token_classification", train=train)


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "seq,target\nACGT,1\n")
    with pytest.raises(ValueError, match=r"a\.csv: no column 'sequence' \(columns found: seq, "
                       r"target\); set data.sequence_column"):  # fmt: skip
        load("sequence_classification", train=train)


def test_digit_beyond_the_classes_names_the_test_line(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,labels\nACGT,0101\n")
    test = write(tmp_path / "c.csv", "sequence,labels\nACGT,0102\n")
    with pytest.raises(ValueError, match=r"c\.csv, line 2: per-base label 2 at base 4"):
        load("token_classification", train=train, test=test)
    named = load("token_classification", train=train, test=test, classes=["a", "b", "c"])
    assert named.test[0].base_labels.tolist() == [0, 1, 0, 2]


def test_split_column_gives_every_split(tmp_path: Path) -> None:
    rows = "sequence,label,fold\nAAAA,x,train\nCCCC,y,train\nGGGG,x,valid\nTTTT,y,test\n"
    train = write(tmp_path / "all.csv", rows)
    data = load("sequence_classification", train=train, split_column="fold")
    sizes = [[x.sequence for x in s] for s in (data.train, data.valid, data.test)]
    assert sizes == [["AAAA", "CCCC"], ["GGGG"], ["TTTT"]]
    bad = write(tmp_path / "bad.csv", rows + "ACGT,x,holdout\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 6: split 'holdout'"):
        load("sequence_classification", train=bad, split_column="fold")


def test_empty_splits_are_errors(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "sequence,label\nACGT,x\nCCCC,y\n")
    empty = write(tmp_path / "c.csv", "sequence,label\n")
    with pytest.raises(ValueError, match=r"c\.csv \(test split\) has no examples"):
        load("sequence_classification", train=train, test=empty)
    held = write(tmp_path / "h.csv", "sequence,label,fold\nACGT,x,test\n")
    with pytest.raises(ValueError, match=r"train split of .*h\.csv is empty"):
        load("sequence_classification", train=held, split_column="fold")


# --- BED over FASTA ---------------------------------------------------------------------


def test_bed_labels_by_header_name_with_minus_strand(tmp_path: Path, genome: str) -> None:
    bed = write(tmp_path / "r.bed.gz", "#chrom\tstart\tend\tclass\tstrand\n"
                "chrA\t10\t20\tup\t+\nchrA\t30\t42\tdown\t-\nchrB\t0\t5\tup\t.\n")  # fmt: skip
    data = load("sequence_classification", train=bed, fasta=genome, label_column="class")
    assert [x.name for x in data.train] == ["chrA:11-20", "chrA:31-42(-)", "chrB:1-5"]
    assert data.train[0].sequence == CHR_A[10:20].upper()
    assert data.train[1].sequence == reverse_complement(CHR_A[30:42].upper())
    assert [x.target for x in data.train] == [1, 0, 1]


def test_bed_by_column_number_split_by_chromosome(tmp_path: Path, genome: str) -> None:
    bed = write(tmp_path / "r.bed", "chrA\t0\t10\tr1\t0.25\nchrA\t5\t50\tr2\t3\n"
                "chrB\t1\t9\tr3\t-2\n")  # fmt: skip
    data = load("sequence_regression", train=bed, fasta=genome, label_column=5,
                test_records=["chrB"])  # fmt: skip
    assert [x.target for x in data.train] == [0.25, 3.0]
    assert [(x.sequence, x.target) for x in data.test] == [(CHR_B[1:9], -2.0)]
    with pytest.raises(ValueError, match=r"data.valid_records: chrC not among the records"):
        load("sequence_regression", train=bed, fasta=genome, label_column=5,
             valid_records=["chrC"])  # fmt: skip


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (
            "chrZ\t0\t10\tx",
            r"r\.bed, line 2: chromosome 'chrZ' is not in the FASTA \(its "
            r"records: chrA, chrB\)",
        ),
        ("chrB\t100\t121\tx", r"r\.bed, line 2: interval chrB:100-121 .*past the end"),
        ("chrA\tten\t20\tx", r"r\.bed, line 2: a BED line needs chrom, start and end"),
        ("chrA\t0\t10", r"r\.bed, line 2: no field 4 \(name\)"),
    ],
)
def test_bad_bed_lines(tmp_path: Path, genome: str, line: str, match: str) -> None:
    bed = write(tmp_path / "r.bed", f"chrA\t0\t10\tx\n{line}\n")
    with pytest.raises(ValueError, match=match):
        load("sequence_classification", train=bed, fasta=genome, label_column="name")


# --- FASTA records with a side table ----------------------------------------------------


def test_fasta_records_with_side_table(tmp_path: Path) -> None:
    genome = write(tmp_path / "genome.fa.gz", f">chrA\n{CHR_A}\n>chrB\n{CHR_B}\n")
    table = write(tmp_path / "labels.tsv", "name\tlabel\nchrB\tplasmid\nchrA\tchromosome\n")
    data = load("sequence_classification", train=genome, labels=table, valid_records=["chrB"],
                classes=["chromosome", "plasmid"])  # fmt: skip
    assert [(x.name, x.target) for x in data.train] == [("chrA", 0)]
    assert data.train[0].sequence == CHR_A.upper()
    assert [(x.name, x.target) for x in data.valid] == [("chrB", 1)]
    short = write(tmp_path / "short.csv", "name,label\nchrA,chromosome\n")
    with pytest.raises(ValueError, match=r"short\.csv has no row for FASTA record 'chrB'"):
        load("sequence_classification", train=genome, labels=short)


# --- GenBank ----------------------------------------------------------------------------


def genbank(path: Path, records: list[SeqRecord]) -> str:
    with gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w") as fh:
        SeqIO.write(records, fh, "genbank")
    return str(path)


def record(name: str, seq: str, *features: SeqFeature) -> SeqRecord:
    rec = SeqRecord(Seq(seq), id=name, name=name, annotations={"molecule_type": "DNA"})
    rec.features = [SeqFeature(SimpleLocation(0, len(seq), 1), type="source"), *features]
    return rec


def test_genbank_minus_strand_join(tmp_path: Path) -> None:
    """complement(join(11..20,31..40)) paints the same bases as a plus-strand join."""
    minus = CompoundLocation([SimpleLocation(30, 40, -1), SimpleLocation(10, 20, -1)])
    plus = CompoundLocation([SimpleLocation(50, 55, 1), SimpleLocation(60, 70, 1)])
    path = genbank(tmp_path / "loci.gb.gz", [
        record("locus1", CHR_A[:60], SeqFeature(minus, type="CDS")),
        record("locus2", CHR_A[:80], SeqFeature(plus, type="CDS")),
    ])  # fmt: skip
    with gzip.open(path, "rt") as fh:
        assert "complement(join(11..20,31..40))" in fh.read()
    labels = {**EXON_LABELS, "features": GENES}
    data = load("token_classification", train=path, test_records=["locus2"], **labels)
    assert data.classes == ["exon", "flank", "intron"]
    expected = np.full(60, 1)
    expected[10:20] = expected[30:40] = 0
    expected[20:30] = 2
    assert data.train[0].base_labels.tolist() == expected.tolist()
    assert data.train[0].sequence == CHR_A[:60]
    labels = data.test[0].base_labels
    assert labels[50:55].tolist() == [0] * 5 and labels[55:60].tolist() == [2] * 5
    assert (labels[:50] == 1).all() and (labels[70:] == 1).all()


def test_genbank_record_without_the_feature(tmp_path: Path) -> None:
    cds = SeqFeature(SimpleLocation(2, 8, 1), type="CDS")
    path = genbank(tmp_path / "g.gb", [record("ok", CHR_A[:20], cds), record("bare", CHR_A[:20])])
    with pytest.raises(ValueError, match=r"g\.gb, record 'bare' \(#2\) has no CDS feature "
                       r"\(its features: source\)"):  # fmt: skip
        load("token_classification", train=path, features=GENES)
    data = load("token_classification", train=path, features={"source": "dna", "CDS": "exon"})
    assert data.classes == ["background", "dna", "exon"]
    assert data.train[0].base_labels[:10].tolist() == [1, 1] + [2] * 6 + [1, 1]  # later wins


# --- GFF3 and BED features over FASTA ---------------------------------------------------

GFF = """##gff-version 3
chrA\tt\tgene\t11\t100\t.\t+\t.\tID=g1
chrA\tt\tmRNA\t11\t100\t.\t+\t.\tID=t1;Parent=g1
chrA\tt\texon\t11\t20\t.\t+\t.\tID=e1;Parent=t1
chrA\tt\texon\t41\t60\t.\t+\t.\tID=e2;Parent=t1
chrA\tt\texon\t91\t100\t.\t+\t.\tID=e3;Parent=t1
"""


def expected_chr_a() -> np.ndarray:
    """Per-base classes (exon 0, flank 1, intron 2) of the GFF's transcript on chrA."""
    codes = np.full(200, 1)
    codes[10:20] = codes[40:60] = codes[90:100] = 0
    codes[20:40] = codes[60:90] = 2
    return codes


def test_gff_exons_of_one_transcript_give_introns(tmp_path: Path, genome: str) -> None:
    gff = write(tmp_path / "genes.gff3.gz", GFF)
    data = load("token_classification", train=gff, fasta=genome, **EXON_LABELS)
    assert [x.name for x in data.train] == ["chrA"]  # chrB has no feature
    assert data.train[0].base_labels.tolist() == expected_chr_a().tolist()


def test_gff_regions_minus_strand_reverse_the_labels(tmp_path: Path, genome: str) -> None:
    gff = write(tmp_path / "genes.gff3", GFF)
    regions = write(tmp_path / "regions.bed", "chrA\t5\t70\tw1\t0\t+\nchrA\t5\t70\tw2\t0\t-\n"
                    "chrB\t0\t50\tw3\t0\t+\n")  # fmt: skip
    data = load("token_classification", train=gff, fasta=genome, regions=regions, **EXON_LABELS)
    plus, minus = data.train  # the chrB region overlaps no feature
    assert plus.base_labels.tolist() == expected_chr_a()[5:70].tolist()
    assert minus.base_labels.tolist() == plus.base_labels[::-1].tolist()
    assert minus.sequence == reverse_complement(plus.sequence) and minus.name == "chrA:6-70(-)"


def test_gff_feature_on_unknown_sequence(tmp_path: Path, genome: str) -> None:
    gff = write(tmp_path / "g.gff3", GFF + "chrQ\tt\texon\t1\t5\t.\t+\t.\tID=e9;Parent=t9\n")
    with pytest.raises(ValueError, match=r"g\.gff3, line 7: sequence 'chrQ' is not in the FASTA"):
        load("token_classification", train=gff, fasta=genome, features={"exon": "exon"})
    past = write(tmp_path / "p.gff3", GFF + "chrB\tt\texon\t100\t130\t.\t+\t.\tID=e9\n")
    with pytest.raises(ValueError, match=r"p\.gff3, line 7: exon 100-130 .*past the end of chrB"):
        load("token_classification", train=past, fasta=genome, features={"exon": "exon"})


def test_bed12_blocks_are_exons_with_introns(tmp_path: Path, genome: str) -> None:
    bed = write(tmp_path / "tx.bed", "chrA\t10\t100\tt1\t0\t+\t10\t100\t0\t3\t10,20,10\t0,30,80\n"
                "chrB\t0\t10\tnoise\t0\t+\n")  # fmt: skip
    labels = {**EXON_LABELS, "features": {"t1": "exon"}}
    data = load("token_classification", train=bed, fasta=genome, label_column="name", **labels)
    assert [x.name for x in data.train] == ["chrA"]
    assert data.train[0].base_labels.tolist() == expected_chr_a().tolist()


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"train": "a.xls"}, r"data.format=auto cannot tell the format of a\.xls"),
        ({"train": "a.csv", "format": "xls"}, r"data.format='xls' is not a format"),
        ({"train": "a.bed"}, r"data.fasta is not set"),
        ({"train": "a.fa"}, r"data.labels is not set"),
        ({"train": "a.csv", "valid_records": ["x"]}, r"need examples with record names"),
        ({"train": "a.csv", "split_column": "f", "test": "c.csv"}, r"drop data.valid/data.test"),
    ],
)
def test_option_errors_name_the_key(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DatasetOptions(**options)


def test_options_compose_as_a_structured_config(tmp_path: Path) -> None:
    """The schema merges a YAML node (a list label_column, a features mapping) as Hydra does."""
    node = OmegaConf.merge(
        OmegaConf.structured(DatasetOptions),
        OmegaConf.create("train: x.gb.gz\nlabel_column: [a, b]\nfeatures: {CDS: exon}\n"),
    )
    options = OmegaConf.to_object(node)
    assert isinstance(options, DatasetOptions)
    assert options.label_columns() == ["a", "b"] and options.file_format("x.gb.gz") == "genbank"
    with pytest.raises(MissingMandatoryValue, match="train"):
        OmegaConf.to_object(OmegaConf.structured(DatasetOptions))
