"""The variant-effect benchmark: SNV classes from the codon table on hand-made CDS (both
strands), VCFs that pysam reads, duplicated regions, the statistics, and a toy run end to
end through rmt-train and rmt-score on slices of the real bacterial genomes."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pysam
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.species_data import SPECIES, TEST_STRAINS, default_bacteria_dir
from benchmarks.variant_effects import FLANK_BP, duplication_upstream, main
from benchmarks.variant_effects_data import (
    CodingSnv,
    Gene,
    call_genes,
    copy_snvs,
    duplicates,
    gene_snvs,
    write_duplicates,
    write_vcf,
)
from benchmarks.variant_effects_eval import auroc, class_report
from data import Genome, reverse_complement
from data.fasta import clean_sequence, open_fasta
from rmt.score.alleles import context_bounds, site

BACTERIA = default_bacteria_dir()
needs_bacteria = pytest.mark.skipif(
    not (BACTERIA / "escherichia_coli_DH1.fa.gz").is_file(), reason="shared/datasets absent"
)
# Met Lys Gly Trp stop: a 4-fold site (GGC's third base), TGG one step from two stops.
CDS = "ATGAAAGGCTGGTAA"


def effects(snvs: list[CodingSnv]) -> dict[tuple[int, str], str]:
    """(CDS position, ALT as the gene reads it) -> class."""
    out = {}
    for s in snvs:
        coding_alt = s.alt if s.strand == "+" else reverse_complement(s.alt)
        out[(s.cds_pos, coding_alt)] = s.effect
    return out


def test_snvs_of_a_plus_strand_cds_are_classified_by_their_codon():
    record = "CC" + CDS + "GG"
    snvs = gene_snvs(Gene("c", 2, 2 + len(CDS), 1), record)
    assert len(snvs) == 3 * len(CDS)
    assert all(record[s.pos - 1] == s.ref != s.alt for s in snvs)
    e = effects(snvs)
    # The start: table 11 also starts at GTG, TTG, CTG, ATT, ATC, ATA, not at ACG or AAG.
    assert [e[(0, b)] for b in "CGT"] == ["start_retained"] * 3
    assert e[(1, "C")] == e[(1, "A")] == "start_lost" and e[(2, "A")] == "start_retained"
    assert e[(5, "G")] == "synonymous" and e[(5, "T")] == "missense"  # AAG Lys, AAT Asn
    assert e[(3, "T")] == "nonsense"  # TAA
    assert {e[(8, b)] for b in "AGT"} == {"synonymous"}  # GGN: Gly
    assert e[(10, "A")] == e[(11, "A")] == "nonsense"  # TAG, TGA
    assert e[(10, "C")] == "missense"  # TCG Ser
    assert e[(13, "G")] == "stop_retained" and e[(12, "C")] == "stop_lost"  # TGA; CAA Gln
    first = snvs[0]
    assert (first.pos, first.ref_codon, first.ref_aa) == (3, "ATG", "M")


def test_a_minus_strand_cds_gets_the_same_classes_at_reverse_coordinates():
    record = "CC" + reverse_complement(CDS) + "GG"
    gene = Gene("c", 2, 2 + len(CDS), -1)
    assert gene.cds(record) == CDS
    snvs = gene_snvs(gene, record)
    plus = gene_snvs(Gene("c", 2, 2 + len(CDS), 1), "CC" + CDS + "GG")
    assert effects(snvs) == effects(plus)
    assert all(record[s.pos - 1] == s.ref for s in snvs)
    # The A of ATG is the last CDS base on the forward strand: a T at forward base 17.
    start = [s for s in snvs if s.cds_pos == 0]
    assert {(s.pos, s.ref) for s in start} == {(17, "T")}
    # TAA's T (CDS base 12) is forward base 5, an A; every change of it loses the stop.
    at_stop = sorted((s.pos, s.ref, s.alt, s.effect) for s in snvs if s.cds_pos == 12)
    assert at_stop == [(5, "A", alt, "stop_lost") for alt in "CGT"]


def test_a_gene_that_is_no_cds_on_its_record_is_refused():
    with pytest.raises(ValueError, match=r"gene c:1-15\(\+\) is not a CDS on its record: CCA"):
        gene_snvs(Gene("c", 0, 15, 1), "CC" + CDS)


def test_the_vcf_is_sorted_in_fasta_order_with_every_alt_of_a_site_in_one_record(tmp_path):
    snv = CodingSnv("b", 7, "A", "G", "g", "+", 0, "", "", "", "", "")
    snvs = [replace(snv, chrom=c, pos=p, ref=r, alt=a)
            for c, p, r, a in [("a", 3, "C", "T"), ("b", 9, "G", "A"), ("b", 7, "A", "T"),
                               ("a", 3, "C", "A"), ("b", 7, "A", "G")]]  # fmt: skip
    path = tmp_path / "v.vcf"
    write_vcf(snvs, {"b": 20, "a": 10}, path)  # the FASTA has b first
    with pysam.VariantFile(str(path)) as vcf:
        assert vcf.header.contigs["a"].length == 10
        got = [(r.chrom, r.pos, r.ref, r.alts) for r in vcf]
    assert got == [("b", 7, "A", ("G", "T")), ("b", 9, "G", ("A",)), ("a", 3, "C", ("A", "T"))]
    clash = [*snvs, replace(snv, ref="C")]
    with pytest.raises(ValueError, match="two REFs at b:7: A and C"):
        write_vcf(clash, {"b": 20, "a": 10}, path)


def test_a_duplicate_holds_the_second_copy_twice_among_real_flanks():
    rng = np.random.default_rng(1)
    records = {f"r{i}": "".join(rng.choice(list("ACGT"), 40_000)) for i in range(2)}
    dups = duplicates(records, 4, length=100, distance=300, before=200, after=50, seed=3)
    for d in dups:
        chrom, span = d.source.split(":")
        start, end = (int(x) for x in span.split("-"))
        assert d.control == records[chrom][start - 1 : end] and len(d.sequence) == 650
        copy = d.sequence[d.second : d.second + d.length]
        assert (d.first, d.second) == (200, 500)
        assert d.sequence[d.first : d.first + d.length] == copy == d.control[500:600]
        # Only the first copy's bases differ from the genome.
        assert d.sequence[:200] + d.sequence[300:] == d.control[:200] + d.control[300:]
    snvs = copy_snvs(dups, 5, seed=0)
    assert len(snvs) == 20 and len({(s.chrom, s.pos) for s in snvs}) == 20
    by_name = {d.name: d for d in dups}
    for s in snvs:
        d = by_name[s.chrom]
        assert s.pos - 1 == d.second + s.offset and 0 <= s.offset < d.length
        assert d.sequence[s.pos - 1] == d.control[s.pos - 1] == s.ref != s.alt
    with pytest.raises(ValueError, match="the copies overlap: distance 50 < length 100 bp"):
        duplicates(records, 1, length=100, distance=50, before=0, after=0, seed=0)


def test_duplication_contexts_reach_the_first_copy_or_stop_short_of_it(tmp_path):
    """rmt-score's own blocks and contexts (rmt.score.alleles) for every base of each second
    copy: with the reaching upstream every context starts at or before the first copy,
    with the cut one every context starts after it."""
    rng = np.random.default_rng(2)
    records = {"r": "".join(rng.choice(list("ACGT"), 60_000))}
    seg, distance = 500, 1500
    dups = duplicates(records, 3, seg, distance, 2 * seg, seg, seed=0)
    snvs = copy_snvs(dups, seg, seed=0)  # every base of every copy
    write_duplicates(dups, snvs, "r", tmp_path)
    genome = Genome(str(tmp_path / "dup.fa"), cache_dir=tmp_path)
    by_name = {d.name: d for d in dups}
    for s in snvs:
        d = by_name[s.chrom]
        block = site(genome, s.chrom, s.pos - 1, 1, "+", FLANK_BP).block(seg)
        reach = context_bounds(block, duplication_upstream(seg, distance, True))
        cut = context_bounds(block, duplication_upstream(seg, distance, False))
        assert reach[0] <= d.first and cut[0] >= d.first + d.length, s
    assert genome.fetch("dup0", 0, len(dups[0].sequence)) == dups[0].sequence


def test_class_report_ranks_and_orders_known_scores():
    effect = np.array(["synonymous"] * 2 + ["nonsense"] * 2 + ["missense"] * 2)
    llr = np.array([0.0, -0.1, -2.0, -3.0, -1.0, 0.05])
    s = {"effect": effect, "llr": llr, "group": np.array(["g1", "g2"] * 3),
         "ref_ll": np.zeros(6), "codon_pos": np.array([3, 3, 1, 1, 3, 1]),
         "change": np.array(["C>T", "A>G", "C>T", "A>G", "C>T", "A>G"])}  # fmt: skip
    r = class_report(s)
    assert r["contrasts"]["nonsense_vs_synonymous"]["auroc"] == 1.0
    # Missense vs synonymous: 2 of the 4 pairs have the synonymous one higher.
    assert r["contrasts"]["missense_vs_synonymous"]["auroc"] == 0.5
    assert r["mean_llr"]["nonsense"]["mean"] == -2.5 and r["ordered"] is True
    # At third positions: the missense -1.0 against both synonymous ones.
    assert r["missense_vs_synonymous_third_position"]["auroc"] == 1.0
    # Within C>T and within A>G the nonsense SNV is below the synonymous one.
    assert r["nonsense_vs_synonymous_same_change_auroc"] == 1.0
    s["llr"][0] = -5.0  # now below the C>T nonsense: C>T ranks 0, A>G 1, equal weights
    assert class_report(s)["nonsense_vs_synonymous_same_change_auroc"] == 0.5
    assert r["mean_llr"]["stop_lost"] == {"n": 0, "mean": None, "ci95": None}


def test_auroc_is_sklearns_with_ties_and_none_without_both_classes():
    rng = np.random.default_rng(0)
    llr = rng.integers(-3, 3, 200).astype(float)  # many ties
    effect = rng.choice(["missense", "synonymous", "nonsense"], 200)
    pick = effect != "nonsense"
    expected = roc_auc_score(effect[pick] == "synonymous", llr[pick])
    assert auroc(llr, effect, "missense", "synonymous") == pytest.approx(expected, abs=1e-12)
    assert auroc(llr, effect, "missense", "stop_lost") is None


@needs_bacteria
def test_pyrodigal_genes_on_a_real_genome_are_cds():
    fasta = open_fasta(BACTERIA / "escherichia_coli_DH1.fa.gz")
    name = next(iter(fasta.records))
    records = {name: clean_sequence(fasta[name][:200_000])}
    genes = call_genes(records)
    assert len(genes) > 150  # E. coli: about one gene per kbp
    for g in genes[:40]:
        snvs = gene_snvs(g, records[name])  # raises unless start ... stop, length 3k
        assert {s.effect for s in snvs} >= {"synonymous", "missense", "start_lost"}


def write_slices(directory, bp: int) -> None:
    """The first `bp` of every record of every strain, as the benchmark's input files."""
    for species, strains in SPECIES.items():
        for strain in (*strains, TEST_STRAINS[species]):
            fasta = open_fasta(BACTERIA / f"{species}_{strain}.fa.gz")
            with gzip.open(directory / f"{species}_{strain}.fa.gz", "wt") as f:
                for name in fasta.records:
                    f.write(f">{name}\n{fasta[name][:bp]}\n")


@needs_bacteria
@pytest.mark.slow
def test_a_toy_run_scores_every_snv_in_both_contexts_and_resumes(tmp_path):
    bacteria = tmp_path / "bacteria"
    bacteria.mkdir()
    write_slices(bacteria, 120_000)
    args = [
        "--out", str(tmp_path / "run"), "--results", str(tmp_path / "results"),
        "--bacteria", str(bacteria), "--genes", "1", "--max-cds-bp", "200",
        "--long-segments", "4", "--duplications", "2", "--snvs-per-copy", "4",
        "--pretrain-steps", "6", "--pretrain-override", "model.d_model=32",
        "--pretrain-override", "model.n_layers=1", "--pretrain-override", "model.n_heads=2",
        "--pretrain-override", "tokenizer.max_bp=300000",
        "--pretrain-override", "trainer.tokens_per_step=1024",
        "--pretrain-override", "trainer.micro_batch_tokens=1024",
    ]  # fmt: skip
    main(args)
    report = json.loads((tmp_path / "results" / "variant_effects.json").read_text())
    genes = report["genes"]
    genomes = [f"{sp}_{TEST_STRAINS[sp]}" for sp in SPECIES]
    for genome in genomes:
        long, short = genes[genome]["long"], genes[genome]["short"]
        assert long["snvs"] == short["snvs"] > 0 and long["genes"] == short["genes"] == 1
        classes = (tmp_path / "run" / "data" / f"{genome}.tsv").read_text().splitlines()
        assert long["snvs"] == len(classes) - 1  # every SNV scored
    pooled = genes["pooled"]["long"]
    assert pooled["snvs"] == sum(genes[g]["long"]["snvs"] for g in genomes)
    assert 0 <= pooled["contrasts"]["missense_vs_synonymous"]["auroc"] <= 1
    for dup in report["duplication"].values():
        assert (dup["snvs"], dup["regions"]) == (8, 2)
    summaries = report["scoring"]
    assert summaries["dup_memory"]["context"]["upstream_bp"] > summaries["dup_cut"]["context"][
        "upstream_bp"]  # fmt: skip
    assert (tmp_path / "results" / "variant_effects.png").stat().st_size > 10_000
    stamp = (tmp_path / "run" / "scores" / "dup_cut" / "scores.tsv").stat().st_mtime_ns
    main(args)  # everything done: no stage runs again
    assert (tmp_path / "run" / "scores" / "dup_cut" / "scores.tsv").stat().st_mtime_ns == stamp
