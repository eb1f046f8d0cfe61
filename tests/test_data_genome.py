"""Genome: usable intervals, weighted sampling, N filtering, strands and tiling."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from data import ECOLI_HELDOUT, FastaError, Genome, Region, reverse_complement

RNG_SEED = 7


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def fasta_text(records: dict[str, str], width: int = 60) -> str:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}")
        lines.extend(seq[i : i + width] for i in range(0, len(seq), width))
    return "\n".join(lines) + "\n"


@pytest.fixture
def two_files(write_fasta) -> tuple[Path, Path]:
    """File 1: one 10 kbp record. File 2: 'big' 20 kbp + 'small' 5 kbp."""
    first = write_fasta("one.fa", fasta_text({"solo": random_dna(10_000, 1)}))
    second = write_fasta(
        "two.fa", fasta_text({"big": random_dna(20_000, 2), "small": random_dna(5_000, 3)})
    )
    return first, second


def test_reverse_complement() -> None:
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement(reverse_complement("ACGGTTAN")) == "ACGGTTAN"


def test_heldout_region_is_never_sampled(ecoli_genome: Genome) -> None:
    assert ecoli_genome.intervals == [Region("NC_008253.1", 0, 4_692_000)]
    rng = np.random.default_rng(RNG_SEED)
    windows = [ecoli_genome.sample_window(20_000, rng) for _ in range(300)]
    assert not any(ECOLI_HELDOUT.overlaps(Region(w.chrom, w.start, w.end)) for w in windows)


def test_windows_near_the_heldout_boundary_stay_outside(ecoli_genome: Genome, tmp_path) -> None:
    genome = Genome(
        ecoli_genome.files,
        include=["NC_008253.1:4,680,001-4,700,000"],
        exclude=[ECOLI_HELDOUT],
        cache_dir=ecoli_genome._cache_dir,
    )
    assert genome.intervals == [Region("NC_008253.1", 4_680_000, 4_692_000)]
    rng = np.random.default_rng(RNG_SEED)
    ends = [genome.sample_window(3_000, rng).end for _ in range(500)]
    assert max(ends) <= 4_692_000 and max(ends) > 4_690_000


def test_exclude_splits_intervals_and_include_is_merged(write_fasta, tmp_path) -> None:
    path = write_fasta("g.fa", fasta_text({"a": random_dna(1000, 4), "b": random_dna(500, 5)}))
    genome = Genome(
        path,
        include=["a:1-300", "a:200-600", "b"],
        exclude=["a:101-200", Region("b", 0, 100)],
        cache_dir=tmp_path,
    )
    assert genome.intervals == [Region("a", 0, 100), Region("a", 200, 600), Region("b", 100, 500)]


def test_single_region_string_and_many_records(write_fasta, tmp_path) -> None:
    records = {f"contig{i}": random_dna(50, i) for i in range(3_000)}
    genome = Genome(
        write_fasta("many.fa", fasta_text(records)), exclude="contig7", cache_dir=tmp_path
    )
    assert len(genome.intervals) == 2_999 and Region("contig7", 0, 50) not in genome.intervals
    assert genome.fetch("contig2999", 0, 50) == records["contig2999"]


def test_default_weights_follow_usable_length(two_files, tmp_path) -> None:
    genome = Genome(two_files, cache_dir=tmp_path)
    assert genome.interval_probs == pytest.approx([10 / 35, 20 / 35, 5 / 35])


def test_file_weights_are_honoured(two_files, tmp_path) -> None:
    genome = Genome(two_files, weights=[3, 1], cache_dir=tmp_path)
    rng = np.random.default_rng(RNG_SEED)
    chroms = [genome.sample_window(500, rng).chrom for _ in range(3000)]
    share_first = chroms.count("solo") / len(chroms)
    assert share_first == pytest.approx(0.75, abs=0.04)  # length-based would give 0.29
    # within file 2, records stay length-weighted: big 4x small
    assert chroms.count("big") / max(chroms.count("small"), 1) == pytest.approx(4, rel=0.3)


def test_record_weights_override_length(two_files, tmp_path) -> None:
    genome = Genome(two_files, weights=[0, 1], record_weights={"small": 1.0}, cache_dir=tmp_path)
    # unlisted 'big' weighs its length share (20/25 = 0.8) against small's 1.0
    assert genome.interval_probs == pytest.approx([0.0, 0.8 / 1.8, 1.0 / 1.8])
    rng = np.random.default_rng(RNG_SEED)
    chroms = [genome.sample_window(500, rng).chrom for _ in range(2000)]
    assert "solo" not in chroms
    assert chroms.count("small") / len(chroms) == pytest.approx(1 / 1.8, abs=0.04)


def test_record_weight_zero_drops_record(two_files, tmp_path) -> None:
    genome = Genome(two_files, record_weights={"big": 0}, cache_dir=tmp_path)
    rng = np.random.default_rng(RNG_SEED)
    assert "big" not in {genome.sample_window(100, rng).chrom for _ in range(300)}


def test_weight_errors(two_files, tmp_path) -> None:
    with pytest.raises(FastaError, match=r"unknown records \['chrZ'\].*solo, big, small"):
        Genome(two_files, record_weights={"chrZ": 1}, cache_dir=tmp_path)
    with pytest.raises(FastaError, match="all sampling weights are zero"):
        Genome(two_files, weights=[0, 0], cache_dir=tmp_path)
    # Messages name Genome's own parameters; rmt-train qualifies them (data.weights).
    with pytest.raises(FastaError, match=r"^`weights` has 1 entries but `fasta` has 2 files"):
        Genome(two_files, weights=[1], cache_dir=tmp_path)
    with pytest.raises(FastaError, match=r"^weights\[1\]=-1\.0: weights must be finite and >= 0"):
        Genome(two_files, weights=[1, -1], cache_dir=tmp_path)
    with pytest.raises(FastaError, match=r"^record_weights\['big'\]=inf: weights must be finite"):
        Genome(two_files, record_weights={"big": float("inf")}, cache_dir=tmp_path)
    with pytest.raises(FastaError, match=r"two\.fa has weight 1\.0 but nothing"):
        Genome(two_files, weights=[1, 1], record_weights={"big": 0, "small": 0}, cache_dir=tmp_path)


def test_duplicate_records_across_files_name_both_files(write_fasta, tmp_path) -> None:
    a = write_fasta("a.fa", ">chr1\nACGT\n")
    b = write_fasta("b.fa", ">chr1\nGGCC\n")
    with pytest.raises(FastaError, match=r"'chr1' is in both .*a\.fa and .*b\.fa"):
        Genome([a, b], cache_dir=tmp_path)


def test_exclude_with_unknown_record_is_an_error(two_files, tmp_path) -> None:
    with pytest.raises(FastaError, match=r"'NC_008253\.1'.*not in the FASTA files"):
        Genome(two_files, exclude=[ECOLI_HELDOUT], cache_dir=tmp_path)


def test_everything_excluded_is_an_error(two_files, tmp_path) -> None:
    with pytest.raises(FastaError, match=r"no sequence is left.*shrink `exclude`"):
        Genome(two_files[0], exclude=["solo"], cache_dir=tmp_path)


def test_mostly_n_record_raises_clear_error(write_fasta, tmp_path) -> None:
    path = write_fasta("gap.fa", fasta_text({"gap": "N" * 9_000 + random_dna(1_000, 6)}))
    genome = Genome(path, cache_dir=tmp_path)
    with pytest.raises(FastaError, match=r"gap\.fa.*Raise `max_n_fraction`"):
        genome.sample_window(2_000, np.random.default_rng(RNG_SEED), max_tries=20)


def test_n_rich_windows_are_skipped(write_fasta, tmp_path) -> None:
    seq = "N" * 3_000 + random_dna(5_000, 7) + "n" * 2_000
    genome = Genome(
        write_fasta("mixed.fa", fasta_text({"m": seq})), max_n_fraction=0.1, cache_dir=tmp_path
    )
    rng = np.random.default_rng(RNG_SEED)
    windows = [genome.sample_window(1_000, rng) for _ in range(300)]
    n_counts = [w.seq.count("N") for w in windows]
    assert max(n_counts) <= 100
    assert any(n_counts), "windows with a few N (at most 10%) must still be accepted"
    assert {w.strand for w in windows} == {"+", "-"}


def test_minus_strand_window_is_reverse_complement(lambda_genome: Genome) -> None:
    rng = np.random.default_rng(RNG_SEED)
    windows = [lambda_genome.sample_window(777, rng, rc_prob=1.0) for _ in range(20)]
    for w in windows:
        assert w.strand == "-" and len(w.seq) == 777 == len(w)
        assert w.seq == reverse_complement(lambda_genome.fetch(w.chrom, w.start, w.end))
        assert w.seq == lambda_genome.fetch(w.chrom, w.start, w.end, strand="-")
    plus = lambda_genome.sample_window(100, rng, rc_prob=0.0)
    assert plus.seq == lambda_genome.fetch(plus.chrom, plus.start, plus.end)


def test_sampling_is_deterministic(lambda_genome: Genome) -> None:
    def draw(seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [lambda_genome.sample_window(500, rng) for _ in range(10)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_window_longer_than_interval_takes_whole_interval(write_fasta, tmp_path) -> None:
    genome = Genome(write_fasta("s.fa", ">s\nACGTACGTAA\n"), cache_dir=tmp_path)
    window = genome.sample_window(1_000, np.random.default_rng(0), rc_prob=0.0)
    assert (window.start, window.end, window.seq) == (0, 10, "ACGTACGTAA")


def test_fetch_validates_coordinates(lambda_genome: Genome) -> None:
    with pytest.raises(FastaError, match="48,502 bp"):
        lambda_genome.fetch("NC_001416.1", 48_000, 48_503)
    with pytest.raises(FastaError, match="not in the FASTA"):
        lambda_genome.fetch("chr1", 0, 10)
    with pytest.raises(FastaError, match="strand"):
        lambda_genome.fetch("NC_001416.1", 0, 10, strand="x")


def test_tile_covers_region_in_order(lambda_genome: Genome) -> None:
    region = "NC_001416.1:1001-11000"
    tiles = list(lambda_genome.tile(region, 3_000))
    assert [(t.start, t.end) for t in tiles] == [
        (1000, 4000),
        (4000, 7000),
        (7000, 10000),
        (10000, 11000),
    ]
    assert all(t.strand == "+" for t in tiles)
    assert "".join(t.seq for t in tiles) == lambda_genome.fetch("NC_001416.1", 1000, 11000)


def test_lengths_and_repr(lambda_genome: Genome) -> None:
    assert lambda_genome.lengths == {"NC_001416.1": 48_502}
    assert "48,502 usable bp" in repr(lambda_genome)


def test_pickle_round_trip_reopens_files(lambda_genome: Genome) -> None:
    clone = pickle.loads(pickle.dumps(lambda_genome))
    assert clone.fetch("NC_001416.1", 100, 200) == lambda_genome.fetch("NC_001416.1", 100, 200)


def _fetch_in_child(genome: Genome, queue) -> None:
    queue.put(
        (
            genome._fasta("NC_001416.1") is genome._fastas[0],
            genome._pid,
            genome.fetch("NC_001416.1", 5_000, 5_050),
        )
    )


def test_forked_process_reopens_its_own_handles(lambda_genome: Genome) -> None:
    parent_handle = lambda_genome._fasta("NC_001416.1")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fetch_in_child, args=(lambda_genome, queue))
    child.start()
    _, child_pid, seq = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0 and child_pid == child.pid
    assert seq == lambda_genome.fetch("NC_001416.1", 5_000, 5_050)
    assert lambda_genome._fasta("NC_001416.1") is parent_handle
