"""rmt-validate: each metric on sequences with known statistics, then the app end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data import ECOLI_RECORD, Genome, bundled_genome, reverse_complement
from rmt.markov import MarkovModel
from rmt.validate import metrics as m
from rmt.validate.cli import main

BASES = "ACGT"


def random_dna(length: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list(BASES), length))


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    return path


@pytest.fixture(scope="module")
def ecoli(fasta_cache_dir: Path) -> Genome:
    return Genome(bundled_genome("ecoli"), cache_dir=fasta_cache_dir)


def test_gc_content_and_skew_of_windows_with_known_composition():
    records = ["AT" * 40 + "GC" * 10, "GGCC" * 25 + "G" * 100 + "C" * 100 + "ACG"]
    gc, skew = m.gc_windows(records, 100)
    np.testing.assert_allclose(gc, [0.2, 1.0, 1.0, 1.0])  # the last 3 bp make no window
    np.testing.assert_allclose(skew, [0.0, 0.0, 1.0, -1.0])
    gc, skew = m.gc_windows(["N" * 60 + "A" * 40, "N" * 40 + "C" * 60], 100)
    np.testing.assert_allclose(gc, [1.0])  # a window less than half ACGT is dropped
    assert m.gc_windows(["A" * 100], 100)[1].size == 0  # no G or C: no skew
    summary = m.compare(np.array([0.4, 0.6]), np.array([0.4, 0.6]))
    assert summary == pytest.approx({"n": 2, "mean": 0.5, "sd": 0.1414, "ks": 0.0,
                                     "ks_pvalue": 1.0}, abs=1e-4)  # fmt: skip
    assert m.ks(np.array([0.1, 0.2]), np.array([0.8, 0.9]))["ks"] == 1.0


def test_homopolymer_runs_in_a_homopolymer_laden_sequence():
    seq = "A" * 10 + "ACGT" * 5 + "C" * 6 + "TTTTNTTTT"
    stats = m.homopolymers([seq], min_run=5)
    # runs >= 5: A x 11 (ten A, then the A of ACGT), C x 6; N splits the T run in two.
    assert stats["fraction_in_runs"] == pytest.approx((11 + 6) / (len(seq) - 1))
    assert stats["longest_run"] == 11
    assert m.homopolymers(["AAAA", "AAAA"], min_run=5)["fraction_in_runs"] == 0.0
    assert m.run_lengths(["AAC", "CGG"]).tolist() == [2, 1, 1, 2]  # runs stop at records


def test_jensen_shannon_of_identical_and_disjoint_spectra():
    p = m.spectra(["ACGTTGCA" * 50], 3)
    assert all(m.jensen_shannon_bits(s, s) == pytest.approx(0, abs=1e-12) for s in p)
    (a,), (c,) = m.spectra(["AAAA"], 1), m.spectra(["CCCC"], 1)
    assert m.jensen_shannon_bits(a, c) == pytest.approx(1.0)
    assert m.jensen_shannon_bits(a, 2 * a) == pytest.approx(0, abs=1e-12)  # normalised
    with pytest.raises(ValueError, match="empty k-mer spectrum"):
        m.jensen_shannon_bits(a, np.zeros(4))


def test_canonical_spectra_pool_a_kmer_with_its_reverse_complement():
    seq = random_dna(3_000, seed=1)
    for k in (1, 2, 3):
        forward, reverse = (
            m.spectra([seq], k, True)[-1],
            m.spectra([reverse_complement(seq)], k, True)[-1],
        )
        np.testing.assert_array_equal(forward, reverse)
        assert len(forward) == (4**k + (4 ** (k // 2) if k % 2 == 0 else 0)) // 2
    assert m.reverse_complement_codes(2)[BASES.index("A") * 4 + BASES.index("C")] == 11  # GT


def test_halves_split_at_half_the_total_length():
    assert m.halves(["AAAA", "CCCCCC"]) == (["AAAA", "C"], ["CCCCC"])
    assert m.halves(["ACGT"]) == (["AC"], ["GT"])


def test_random_dna_is_further_from_a_real_genome_than_its_halves_are_from_each_other(ecoli):
    real = ecoli.fetch(ECOLI_RECORD, 1_000_000, 1_100_000)
    first, second = m.halves([real])
    pairs = [(first, second), ([random_dna(50_000, seed=2)], [real])]
    floor, iid = ([m.jensen_shannon_bits(p, q) for p, q in zip(m.spectra(a, 5), m.spectra(b, 5),
                   strict=True)] for a, b in pairs)  # fmt: skip
    # From k = 2 on: E. coli's base composition is nearly uniform, so k = 1 cannot tell.
    assert all(r > 3 * f for r, f in zip(iid[1:], floor[1:], strict=True)), (iid, floor)


def test_exact_repeats_of_a_duplicated_sequence():
    unit = random_dna(5_000, seed=3)
    doubled = m.repeated_kmers([unit + unit], k=12)
    assert doubled["distinct_repeated"] == pytest.approx(1.0, abs=0.01)
    assert doubled["positions_repeated"] == pytest.approx(1.0, abs=0.01)
    once = m.repeated_kmers([random_dna(10_000, seed=4)], k=12)
    assert once["positions_repeated"] < 0.01  # chance: ~10k^2 / 2 / 4^12 pairs


def test_reference_slices_have_the_lengths_asked_for():
    records = ["ACGT" * 10, "TTGCA" * 20]
    slices = m.reference_slices(records, [30, 250], np.random.default_rng(0))
    assert sum(len(s) for s in slices) == 280 and len(slices[0]) == 30
    assert max(len(s) for s in slices) <= 100  # the longest record
    assert all(any(s in r for r in records) for s in slices)


def test_pyrodigal_finds_genes_in_e_coli_and_few_in_random_dna(ecoli):
    real = [ecoli.fetch(ECOLI_RECORD, 2_500_000, 2_530_000)]
    iid = [random_dna(30_000, seed=5)]
    genes, noise = m.find_genes(real), m.find_genes(iid)
    ecoli_stats = m.gene_summary(real, genes, m.gene_lengths(genes))
    random_stats = m.gene_summary(iid, noise, m.gene_lengths(genes))
    assert ecoli_stats["coding_density"] > 0.75 and ecoli_stats["genes_per_kb"] > 0.6
    assert random_stats["coding_density"] < 0.3
    assert ecoli_stats["median_length"] > 2 * random_stats["median_length"]
    assert ecoli_stats["ks"] == 0.0 and random_stats["ks"] > 0.5
    assert all(0 <= g.start < g.end <= 30_000 for g in genes)


# The app end to end: a 40 kb stretch of E. coli as the reference, two records sampled
# from an order-3 chain fitted on it as the "generated" sequence.


@pytest.fixture(scope="module")
def inputs(ecoli, tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("validate")
    real = ecoli.fetch(ECOLI_RECORD, 3_000_000, 3_040_000)
    model = MarkovModel(3).fit(real)
    rng = np.random.default_rng(0)
    generated = {"gen1": model.sample(12_000, rng), "gen2": model.sample(8_000, rng)}
    return (write_fasta(directory / "generated.fa", generated),
            write_fasta(directory / "reference.fa", {"ref": real}))  # fmt: skip


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory) -> tuple[Path, dict]:
    generated, reference = inputs
    out = tmp_path_factory.mktemp("report") / "out"
    main([str(generated), "--reference", str(reference), "--output", str(out), "--seed", "3"])
    return out, json.loads((out / "report.json").read_text())


def test_the_report_holds_every_metric_for_every_sample(report):
    out, r = report
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.png"}
    assert set(r) == {"program", "inputs", "options", "versions", "metrics"}
    assert r["inputs"]["generated"]["bp"] == 20_000 and r["inputs"]["reference"]["bp"] == 40_000
    assert r["options"]["markov_order"] == 5 and r["options"]["seed"] == 3
    assert set(r["metrics"]) == {"generated", "markov", "reference_sample", "reference_halves"}
    for name in ("generated", "markov", "reference_sample"):
        sample = r["metrics"][name]
        assert sample["bp"] == 20_000
        assert set(sample) >= {"kmer_jsd", "gc", "gc_skew", "homopolymers", "repeats", "genes"}
        assert list(sample["kmer_jsd"]) == [str(k) for k in range(1, 9)]
        assert sample["gc"]["n"] == 20  # 12 + 8 windows of 1 kb
    assert r["versions"]["pyrodigal"] and r["versions"]["numpy"]
    # Real DNA codes for proteins; neither Markov chain does.
    genes = {name: r["metrics"][name]["genes"] for name in ("generated", "markov",
             "reference_sample")}  # fmt: skip
    assert genes["reference_sample"]["coding_density"] > 2 * genes["markov"]["coding_density"]
    assert genes["reference_sample"]["coding_density"] > 2 * genes["generated"]["coding_density"]
    table = (out / "report.md").read_text()
    assert "| k-mer JSD k=8 (bits) |" in table and "| coding density |" in table


def test_a_non_empty_output_directory_is_refused_unless_overwrite(report, inputs, capsys):
    out, before = report
    generated, reference = inputs
    args = [str(generated), "--reference", str(reference), "--output", str(out), "--seed", "3"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"--output {out} is not empty" in capsys.readouterr().err
    main([*args, "--overwrite"])  # same seed, same report
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == before["metrics"]


def test_bad_inputs_end_in_one_line_naming_the_file(inputs, tmp_path, capsys):
    generated, reference = inputs
    empty, missing = tmp_path / "empty.fa", tmp_path / "missing.fa"
    empty.write_text("")
    cases = [
        (missing, reference, f"FASTA file not found: {missing}"),
        (empty, reference, f"{empty} is empty"),
        (write_fasta(tmp_path / "n.fa", {"n": "N" * 3000 + "ACGT" * 500}), reference,
         "60% of the generated sequence is N"),
        (write_fasta(tmp_path / "short.fa", {"a": "ACGT" * 100}), reference,
         "the longest generated record is 400 bp, shorter than one window (--window 1000"),
        (generated, tmp_path / "nowhere.fa", "FASTA file not found"),
    ]  # fmt: skip
    for i, (gen, ref, message) in enumerate(cases):
        with pytest.raises(SystemExit) as exit_info:
            main([str(gen), "--reference", str(ref), "--output", str(tmp_path / f"out{i}")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err, err
        assert not (tmp_path / f"out{i}").exists()  # nothing written on a refusal
