"""rmt-score: VCF records through pysam, allele windows and tokens, scores equal to a brute-force
masked marginal, the annotated VCF byte for byte, resuming, and both strands."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch
from hydra import compose, initialize_config_module
from test_infer import LAMBDA, tiny_checkpoint

from data import Genome, reverse_complement
from rmt import entry, load_model
from rmt.score import run_scoring, score_options
from rmt.score.alleles import allele_tokens, allele_window, covering, site
from rmt.score.plan import Context, plan_blocks, plan_chunks
from rmt.score.scoring import score_chunk
from rmt.score.vcf import check_records, read_contig_map, read_records

HEADER = "##fileformat=VCFv4.2\n"
COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
KEY = "RMT_LLR"
FAST = ["context.upstream=400", "context.block=150", "context.flank=32"]


class Stop(Exception):
    """Raised from the resume-point hook: the run stops there, as a kill would."""


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, lambda_bpe) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("score-ckpt"), lambda_bpe)


@pytest.fixture(scope="session")
def seq(lambda_genome) -> str:
    return lambda_genome.fetch(LAMBDA, 0, lambda_genome.lengths[LAMBDA])


def other(bases: str) -> str:
    return "".join("ACGT"[("ACGT".index(b) + 1) % 4] for b in bases)


def small_variants(seq: str, at: int = 3000) -> list[tuple[int, str, str]]:
    """(POS, REF, ALT): an SNV, an MNV, an insertion, a deletion, a multi-allelic record."""
    p = at
    return [
        (p, seq[p - 1], other(seq[p - 1])),
        (p + 40, seq[p + 39 : p + 42], other(seq[p + 39 : p + 42])),
        (p + 90, seq[p + 89], seq[p + 89] + "GATTACA"),
        (p + 150, seq[p + 149 : p + 154], seq[p + 149]),
        (p + 400, seq[p + 399], f"{other(seq[p + 399])},<DEL>,{seq[p + 399]}TT"),
    ]


def record(pos: int, ref: str, alt: str, chrom: str = LAMBDA, rest: str = ".\t.\t.") -> str:
    return f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t{rest}"


def write_vcf(path: Path, rows: list[str], header: str = HEADER, bgzip: bool = False) -> Path:
    """A VCF of ``rows`` (tab-joined records); bgzip: compressed and tabix-indexed."""
    path.write_text(header + "".join(r + "\n" for r in rows))
    if not bgzip:
        return path
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return Path(f"{path}.gz")


def vcf_of(variants, chrom: str = LAMBDA) -> list[str]:
    return [COLUMNS.rstrip("\n")] + [record(*v, chrom=chrom) for v in variants]


def score(checkpoint, variants, out, *extra, fasta="bundled:lambda", after_save=None) -> dict:
    args = [f"checkpoint={checkpoint}", f"variants={variants}", f"output={out}", "threads=1",
            "progress=false", f"data.fasta=[{fasta}]", *extra]  # fmt: skip
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return run_scoring(score_options(compose("score", args)), after_save=after_save)


def tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"), strict=True)) for line in lines[1:]]


# -- reading and checking -------------------------------------------------------------------


@pytest.mark.parametrize("bgzip", [False, True], ids=["plain", "bgzip+tabix"])
def test_records_are_read_through_pysam_and_every_alt_gets_a_status(
    tmp_path, lambda_genome, seq, bgzip
):
    n = len(seq)
    rows = [
        *vcf_of(small_variants(seq)),
        record(5000, seq[4999], "<DUP>"),
        record(5010, seq[5009], f"{seq[5009]}]{LAMBDA}:100]"),
        record(5020, seq[5019], f"*,{other(seq[5019])}"),
        record(5030, seq[5029], "."),
        record(5040, seq[5039], "R"),
        record(5050, seq[5049:5079], seq[5049]),  # a 29 bp deletion: longer than the flank
        record(n - 1, seq[-2:] + "A", seq[-2]),  # REF runs one base past the end
    ]
    path = write_vcf(tmp_path / "v.vcf", rows, bgzip=bgzip)
    records = read_records(path)
    checked = check_records(path, records, lambda_genome, {}, 16, "fail")
    assert [c.statuses for c in checked] == [
        ("scored",), ("scored",), ("scored",), ("scored",), ("scored", "symbolic", "scored"),
        ("symbolic",), ("symbolic",), ("symbolic", "scored"), ("no_alt",), ("bad_allele",),
        ("too_long",), ("past_end",),
    ]  # fmt: skip
    assert records[4].alts == (other(seq[3399]), "<DEL>", seq[3399] + "TT")
    assert (records[1].start, records[1].ref, records[8].alts) == (3039, seq[3039:3042], ())


def test_a_contig_missing_from_the_fasta_is_named_with_the_map_that_fixes_it(tmp_path, seq):
    """A gi|...|ref|ACC.1| header is read as ACC.1; the VCF's ACC is offered that name."""
    fasta = tmp_path / "gi.fa"
    fasta.write_text(f">gi|9626243|ref|{LAMBDA}| lambda\n{seq[:6000]}\n")
    genome = Genome(str(fasta), cache_dir=tmp_path)
    bare = LAMBDA.split(".")[0]
    path = write_vcf(tmp_path / "v.vcf", vcf_of(small_variants(seq), chrom=bare))
    with pytest.raises(ValueError) as error:
        check_records(path, read_records(path), genome, {}, 128, "fail")
    message = str(error.value)
    assert message.startswith(f"{path}: contig(s) '{bare}' (first at record 1 ({bare}:3000 ")
    assert f"(it has {LAMBDA})" in message and "\n" not in message
    assert f"add contig_map='{{{bare}: {LAMBDA}}}'" in message
    table = tmp_path / "contigs.tsv"
    table.write_text(f"# vcf\tfasta\n{bare}\t{LAMBDA}\n")
    for given in (str(table), {bare: LAMBDA}):
        mapping = read_contig_map(given)
        checked = check_records(path, read_records(path), genome, mapping, 128, "fail")
        assert {c.contig for c in checked} == {LAMBDA} and all(c.scored for c in checked)
    unknown = write_vcf(tmp_path / "u.vcf", vcf_of([(10, seq[9], "A")], chrom="chrZ"))
    with pytest.raises(ValueError, match=r"'chrZ' .* map them with contig_map='\{VCF_NAME"):
        check_records(unknown, read_records(unknown), genome, {}, 128, "fail")


def test_a_ref_that_differs_from_the_fasta_fails_or_is_skipped(tmp_path, lambda_genome, seq):
    wrong = [(p, other(seq[p - 1]), seq[p - 1]) for p in (100, 200, 300, 400, 500)]
    path = write_vcf(tmp_path / "v.vcf", vcf_of([*wrong, (600, seq[599], other(seq[599]))]))
    records = read_records(path)
    with pytest.raises(ValueError) as error:
        check_records(path, records, lambda_genome, {}, 128, "fail")
    message = str(error.value)
    assert message.startswith(f"{path}: 5 record(s) whose REF does not match the FASTA (")
    assert f"{LAMBDA}:100 REF {other(seq[99])} but the FASTA has {seq[99]}" in message
    assert f"{LAMBDA}:300" in message and f"{LAMBDA}:400" not in message and ", ...)" in message
    assert message.endswith("ref_mismatch=skip")
    checked = check_records(path, records, lambda_genome, {}, 128, "skip")
    assert [c.statuses for c in checked] == [("ref_mismatch",)] * 5 + [("scored",)]


# -- alleles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strand", ["+", "-"])
def test_an_allele_window_spells_the_reference_with_the_allele_in_place(
    lambda_genome, lambda_bpe, seq, strand
):
    n, flank = len(seq), 20
    cases = [(2999, seq[2999], other(seq[2999])), (3039, seq[3039:3042], "TTT"),
             (3089, seq[3089], "CGATTACA"), (3149, seq[3149:3154], seq[3149]),
             (5, seq[5:7], "T"), (n - 3, seq[-3:], "G")]  # fmt: skip
    for start, ref, alt in cases:
        where = site(lambda_genome, LAMBDA, start, len(ref), strand, flank)
        window, a0, a1 = allele_window(lambda_genome, where, alt)
        lo, hi = max(0, start - flank), min(n, start + len(ref) + flank)
        forward = seq[lo:start] + alt + seq[start + len(ref) : hi]
        assert window == (forward if strand == "+" else reverse_complement(forward))
        assert window[a0:a1] == (alt if strand == "+" else reverse_complement(alt))
        ids, scored = allele_tokens(lambda_bpe, lambda_genome, where, alt)
        encoding = lambda_bpe.encode(window)
        assert lambda_bpe.decode(ids) == window and (ids == encoding.ids).all()
        touches = [any(a0 <= b < a1 for b in range(s, e)) for s, e in encoding.offsets]
        assert scored.tolist() == touches and scored.any()
        first = encoding.offsets[scored][0, 0]
        assert lambda_bpe.decode(ids[scored])[a0 - first : a1 - first] == window[a0:a1]


def test_covering_picks_the_tokens_that_overlap_the_bases():
    offsets = np.array([[0, 4], [4, 6], [6, 11], [11, 12]])
    assert covering(offsets, 5, 6).tolist() == [False, True, False, False]
    assert covering(offsets, 3, 7).tolist() == [True, True, True, False]
    assert covering(offsets, 11, 12).tolist() == [False, False, False, True]


# -- scores ----------------------------------------------------------------------------------


def brute_force(runner, tokenizer, seq: str, start: int, ref: str, allele: str, c: Context):
    """The masked marginal from its definition, by one whole-sequence forward; its length."""
    w = max(0, start - c.flank)
    c0 = w // c.block * c.block
    window = seq[w:start] + allele + seq[start + len(ref) : start + len(ref) + c.flank]
    pieces = [tokenizer.encode(s) for s in (seq[max(0, c0 - c.upstream) : c0], seq[c0:w], window)]
    ids = torch.as_tensor(np.concatenate([p.ids for p in pieces]))[None]
    spans, a0 = pieces[2].offsets, start - w
    masked = torch.zeros(ids.shape, dtype=torch.bool)
    masked[0, ids.shape[1] - len(spans) :] = torch.as_tensor(
        (spans[:, 0] < a0 + len(allele)) & (spans[:, 1] > a0)
    )
    with torch.no_grad():
        out = runner(torch.where(masked, tokenizer.mask_id, ids), return_hidden=True)
        log_p = runner.head(out.hidden).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    return float(log_p[masked].sum()), ids.shape[1]


def test_scores_equal_a_brute_force_masked_marginal_in_fp64(
    checkpoint, tmp_path, lambda_genome, seq
):
    runner, tokenizer = load_model(checkpoint)
    runner.double()
    variants = [*small_variants(seq), (3, seq[2], other(seq[2])), (20_000, seq[19_999], "GC")]
    path = write_vcf(tmp_path / "v.vcf", vcf_of(variants))
    records = read_records(path)
    checked = check_records(path, records, lambda_genome, {}, 24, "fail")
    context = Context(upstream=600, flank=24, block=200)
    blocks = plan_blocks(checked, lambda_genome, ["+"], context)
    assert max(len({r.record for r in b.rows}) for b in blocks) >= 3  # a shared context
    cpu = torch.device("cpu")
    got = {}
    for batch_size in (3, 64):
        for chunk in plan_chunks(blocks, batch_size):
            scores = score_chunk(runner, tokenizer, lambda_genome, chunk, batch_size, cpu, None)
            for row, ll in scores:
                got.setdefault((row.record, row.allele), []).append(ll)
    lengths = []
    for (index, allele), (ll, again) in got.items():
        r = records[index]
        bases = r.ref if allele == 0 else r.alts[allele - 1]
        want, length = brute_force(runner, tokenizer, seq, r.start, r.ref, bases, context)
        lengths.append(length)
        assert ll == pytest.approx(want, abs=2e-5), (r, allele)
        assert ll == pytest.approx(again, abs=1e-10)  # batch composition changes nothing
    assert len(got) == 4 * 2 + 3 + 2 * 2 and max(lengths) > 4 * runner.segment_tokens


def without_scores(data: bytes) -> bytes:
    """A scored VCF with the added header line and INFO entries taken out again."""
    kept = []
    for line in data.splitlines(keepends=True):
        if line.startswith(f"##INFO=<ID={KEY},".encode()):
            continue
        if not line.startswith(b"#"):
            body = line.rstrip(b"\n")
            fields = body.split(b"\t")
            entries = [e for e in fields[7].split(b";") if not e.startswith(f"{KEY}=".encode())]
            fields[7] = b";".join(entries) or b"."
            line = b"\t".join(fields) + line[len(body) :]
        kept.append(line)
    return b"".join(kept)


@pytest.mark.parametrize("bgzip", [False, True], ids=["plain", "bgzip+tabix"])
def test_the_scored_vcf_is_the_input_byte_for_byte_with_the_info_field(
    checkpoint, tmp_path, seq, bgzip
):
    header = (f"{HEADER}##contig=<ID={LAMBDA},length=48502>\n"
              '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')  # fmt: skip
    infos = iter(["DP=3", ".", "DP=12", "DP=1", "."])
    rows = [f"{COLUMNS.rstrip()}\tFORMAT\tS1"] + [
        record(*v, rest=f"50\tPASS\t{next(infos)}\tGT\t0/1") for v in small_variants(seq)
    ]
    rows += [record(5000, seq[4999], "<DUP>", rest=".\t.\tDP=2\tGT\t1/1"),
             record(5030, seq[5029], ".", rest=".\t.\t.\tGT\t0/0")]  # fmt: skip
    path = write_vcf(tmp_path / "in.vcf", rows, header, bgzip=bgzip)
    summary = score(checkpoint, path, tmp_path / "out", *FAST)
    out = tmp_path / "out" / ("scored.vcf.gz" if bgzip else "scored.vcf")
    assert summary["outputs"] == [out.name, *([f"{out.name}.tbi"] if bgzip else []), "scores.tsv"]
    source, scored = path.read_bytes(), out.read_bytes()
    if bgzip:
        source, scored = gzip.decompress(source), gzip.decompress(scored)
    assert scored != source and without_scores(scored) == source
    table = tsv(tmp_path / "out" / "scores.tsv")
    statuses = ["scored"] * 5 + ["symbolic", "scored", "symbolic", "no_alt"]
    assert [r["status"] for r in table] == statuses
    llr = iter(None if r["llr"] == "NA" else round(float(r["llr"]), 4) for r in table)
    with pysam.VariantFile(str(out)) as vcf:
        assert vcf.header.info[KEY].number == "A"
        for rec in vcf:
            want = [next(llr) for _ in rec.alts or (".",)]
            got = rec.info.get(KEY) or [None] * len(want)  # no field: nothing scored
            assert [None if v is None else round(v, 4) for v in got] == want
        if bgzip:
            assert len(list(vcf.fetch(LAMBDA, 2999, 3100))) == 3
    assert summary["alts_scored"] == 6 and summary["skipped"]["symbolic"] == 2


def test_a_stopped_run_resumes_to_byte_identical_outputs(checkpoint, tmp_path, seq):
    variants = small_variants(seq, 3000) + small_variants(seq, 9000)
    path = write_vcf(tmp_path / "v.vcf", vcf_of(variants))
    args = [*FAST, "strand=both", "batch_size=2", "save_every=1"]
    straight = score(checkpoint, path, tmp_path / "straight", *args)
    assert straight["chunks"] > 4 and straight["runs"] == 1
    out = tmp_path / "stopped"

    def stop(done: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        score(checkpoint, path, out, *args, after_save=stop)
    assert not (out / "state.pt").exists() and not (out / "scored.vcf").exists()
    [spool] = (out / "spool").glob("*.bin")  # one process: one rank's spool
    assert spool.with_suffix(".pt").exists()
    with spool.open("ab") as handle:
        handle.write(b"half a row written as the kill came")
    summary = score(checkpoint, path, out, *args)
    assert summary["runs"] == 2 and not (out / "spool").exists()
    for name in ("scored.vcf", "scores.tsv"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert score(checkpoint, path, out, *args) == summary  # a finished run stays finished
    with pytest.raises(ValueError, match=r"different configuration \(differs in: config.strand"):
        score(checkpoint, path, out, *FAST, "batch_size=2")


def test_both_strands_average_the_reverse_complement_scored_the_same_way(checkpoint, tmp_path, seq):
    """'-' reads a variant as '+' reads it on the reverse-complemented record, mirrored."""
    n = 8000
    (tmp_path / "fwd.fa").write_text(f">fwd\n{seq[:n]}\n")
    (tmp_path / "rev.fa").write_text(f">rev\n{reverse_complement(seq[:n])}\n")
    variants = [v for v in small_variants(seq) if "<" not in v[2]]
    mirrored = [
        (n - (pos - 1) - len(ref) + 1, reverse_complement(ref), reverse_complement(alt))
        for pos, ref, alt in variants
    ]
    forward = write_vcf(tmp_path / "fwd.vcf", vcf_of(variants, chrom="fwd"))
    reverse = write_vcf(tmp_path / "rev.vcf", vcf_of(mirrored, chrom="rev"))
    results = {}
    for name, vcf, fasta, strand in (("both", forward, "fwd.fa", "both"),
                                     ("plus", forward, "fwd.fa", "plus"),
                                     ("minus", reverse, "rev.fa", "plus")):  # fmt: skip
        score(checkpoint, vcf, tmp_path / name, *FAST, f"strand={strand}",
              fasta=str(tmp_path / fasta))  # fmt: skip
        rows = tsv(tmp_path / name / "scores.tsv")
        results[name] = np.array([[float(r[k]) for k in ("llr", "ref_ll", "alt_ll")] for r in rows])
    np.testing.assert_allclose(results["both"], (results["plus"] + results["minus"]) / 2, atol=1e-4)
    assert np.abs(results["plus"] - results["minus"]).max() > 1e-2  # the strands differ


def test_rmt_score_reports_a_mistake_in_one_line_and_claims_nothing(
    checkpoint, tmp_path, seq, capsys, monkeypatch
):
    path = write_vcf(tmp_path / "v.vcf", vcf_of(small_variants(seq), chrom="NC_001416"))
    out = tmp_path / "out"
    args = [f"checkpoint={checkpoint}", f"variants={path}", f"output={out}",
            "data.fasta=[bundled:lambda]"]  # fmt: skip
    monkeypatch.delenv("RMT_DEBUG", raising=False)
    for extra, expected in (
        (["strnd=both"], "unknown key strnd; did you mean strand?"),
        ([], f"contig(s) 'NC_001416' (first at record 1 (NC_001416:3000 {seq[2999]}>"),
        (["ref_mismatch=maybe"], "ref_mismatch='maybe' is not one of fail, skip"),
    ):
        monkeypatch.setattr(sys, "argv", ["rmt-score", *args, *extra])
        with pytest.raises(SystemExit) as exit_:
            entry.score()
        error = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and error[0].startswith("rmt-score: error: ")
        assert expected in error[0] and len(error) == 2 and "RMT_DEBUG" in error[1]
    assert not out.exists()
    summary = score(checkpoint, path, out, *FAST, "contig_map={NC_001416: NC_001416.1}")
    assert summary["alts_scored"] == 6
