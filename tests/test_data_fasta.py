"""FASTA opening: validation errors, gzip caching, bgzip, cleaning, record names."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from Bio import bgzf

from data import FastaError, Genome, bundled_genome, clean_sequence, open_fasta
from data.fasta import record_name

TWO_RECORDS = ">chrA first\nACGTACGTAC\nGTACGTAC\n>chrB\nacgtNNNNrykm\nTT\n"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.fa"
    with pytest.raises(FastaError, match=r"not found: .*nope\.fa; check the path"):
        open_fasta(missing, cache_dir=tmp_path)


def test_empty_file(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("empty.fa", "")
    with pytest.raises(FastaError, match=r"empty\.fa is empty"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_blank_only_file_counts_as_empty(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("blank.fa", "\n\n  \n")
    with pytest.raises(FastaError, match=r"blank\.fa is empty"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_text_without_header_is_not_fasta(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("reads.txt", "\nACGTACGT\n>late\nACGT\n")
    with pytest.raises(FastaError) as info:
        open_fasta(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "reads.txt" in message and "line 2" in message and "no FASTA header" in message


def test_record_without_sequence(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("hole.fa", ">one\nACGT\n>two\n\n>three\nACGT\n")
    with pytest.raises(FastaError, match=r"hole\.fa: record 'two' \(header on line 3\)"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_last_record_without_sequence(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("tail.fa", ">one\nACGT\n>last\n")
    with pytest.raises(FastaError, match="record 'last'"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_invalid_character_names_file_record_line_and_char(write_fasta, tmp_path) -> None:
    path = write_fasta("bad.fa", ">ok\nACGT\n>chr2\nACGT\nAC-T\n")
    with pytest.raises(FastaError) as info:
        open_fasta(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    for part in ("bad.fa", "record 'chr2'", "line 5", "column 3", "'-'", "replace or remove"):
        assert part in message
    assert not Path(f"{path}.fai").exists(), "no index may be written for an invalid file"


def test_invalid_character_in_gzip_leaves_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "bad.fa.gz"
    path.write_bytes(gzip.compress(b">r1\nACGT\nACXT\n"))
    cache = tmp_path / "cache"
    with pytest.raises(FastaError, match=r"bad\.fa\.gz: record 'r1', line 3.*'X'"):
        open_fasta(path, cache_dir=cache)
    assert list(cache.iterdir()) == [], "a failed decompression must leave nothing behind"


def test_duplicate_record_in_one_file(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("dup.fa", ">a\nACGT\n>a\nACGT\n")
    with pytest.raises(FastaError, match=r"dup\.fa: record name 'a' appears twice \(lines 1 and 3"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_inconsistent_line_lengths_are_wrapped(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("ragged.fa", ">a\nACGTACGT\nAC\nACGTACGT\n")
    with pytest.raises(FastaError, match=r"ragged\.fa: pyfaidx cannot index.*rewrap"):
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ragged.fa"]


def test_other_compression_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "genome.fa.bz2"
    path.write_bytes(b"BZh91AY&SY" + b"\0" * 20)
    with pytest.raises(FastaError, match=r"genome\.fa\.bz2 is bzip2-compressed.*bgzip"):
        open_fasta(path, cache_dir=tmp_path)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(gzip.compress(b">r\n" + b"ACGT" * 5000 + b"\n")[:-40])
    with pytest.raises(FastaError, match=r"cut\.fa\.gz could not be decompressed"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_multi_record_uncompressed(write_fasta, tmp_path: Path) -> None:
    fa = open_fasta(write_fasta("two.fa", TWO_RECORDS), cache_dir=tmp_path / "cache")
    assert {name: len(rec) for name, rec in fa.records.items()} == {"chrA": 18, "chrB": 14}
    assert fa["chrA"][8:12] == "ACGT"  # crosses the line break
    assert fa["chrB"][0:4] == "acgt"  # pyfaidx keeps case; cleaning is explicit
    assert not (tmp_path / "cache").exists(), "uncompressed FASTA needs no cache"


def test_plain_gzip_is_cached_once_and_matches_uncompressed(tmp_path: Path) -> None:
    plain = tmp_path / "two.fa"
    plain.write_text(TWO_RECORDS)
    packed = tmp_path / "two.fa.gz"
    packed.write_bytes(gzip.compress(TWO_RECORDS.encode()))
    cache = tmp_path / "cache"

    first = open_fasta(packed, cache_dir=cache)
    cached = [p for p in cache.iterdir() if p.suffix == ".fa"]
    assert len(cached) == 1 and cached[0].read_text() == TWO_RECORDS
    before = cached[0].stat()
    second = open_fasta(packed, cache_dir=cache)
    after = cached[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [cached[0].name, cached[0].name + ".fai"]
    ), "no temporary files may remain"

    reference = open_fasta(plain, cache_dir=cache)
    for fa in (first, second):
        for name in ("chrA", "chrB"):
            assert fa[name][0 : len(fa[name])] == reference[name][0 : len(reference[name])]


def test_changed_gzip_source_gets_a_new_cache_entry(tmp_path: Path) -> None:
    packed = tmp_path / "g.fa.gz"
    cache = tmp_path / "cache"
    packed.write_bytes(gzip.compress(b">r\nACGT\n"))
    assert open_fasta(packed, cache_dir=cache)["r"][0:4] == "ACGT"
    packed.write_bytes(gzip.compress(b">r\nTTTTGG\n"))
    os.utime(packed, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    assert open_fasta(packed, cache_dir=cache)["r"][0:6] == "TTTTGG"


def test_cache_dir_defaults_to_rmt_cache_dir(tmp_path: Path, monkeypatch) -> None:
    packed = tmp_path / "g.fa.gz"
    packed.write_bytes(gzip.compress(b">r\nACGT\n"))
    monkeypatch.setenv("RMT_CACHE_DIR", str(tmp_path / "root"))
    open_fasta(packed)
    assert len(list((tmp_path / "root" / "fasta").glob("g.*.fa"))) == 1


def test_bgzip_is_read_directly(tmp_path: Path) -> None:
    text = ">chr1\n" + "\n".join(["ACGTTGCA" * 8] * 300) + "\n>chr2\n" + "GGCC" * 10 + "\n"
    path = tmp_path / "g.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as writer:
        writer.write(text.encode())
    cache = tmp_path / "cache"
    fa = open_fasta(path, cache_dir=cache)
    assert len(fa["chr1"]) == 64 * 300 and len(fa["chr2"]) == 40
    assert fa["chr1"][60:70] == ("ACGTTGCA" * 3)[60 % 8 : 60 % 8 + 10]
    assert fa["chr2"][0:8] == "GGCCGGCC"
    assert Path(f"{path}.fai").exists() and Path(f"{path}.gzi").exists()
    assert not cache.exists(), "bgzip must not be decompressed into the cache"


def test_bgzip_with_invalid_character_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as writer:
        writer.write(b">x\nACGT\nAC T\n")
    with pytest.raises(FastaError, match=r"record 'x', line 3, column 3: invalid character ' '"):
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert not Path(f"{path}.fai").exists() and not Path(f"{path}.gzi").exists()


def test_clean_sequence_uppercases_and_maps_iupac_to_n() -> None:
    assert clean_sequence("acgtn") == "ACGTN"
    assert clean_sequence("RYSWKMBDHVryswkmbdhvNn") == "N" * 22
    assert clean_sequence("ACGU") == "ACGT"
    assert clean_sequence("AC-X") == "AC-X", "non-IUPAC characters are the validator's job"


def test_soft_masked_and_ambiguous_bases_come_out_clean(write_fasta, tmp_path: Path) -> None:
    path = write_fasta("mask.fa", ">r\nACGTacgtRYkm\n")
    genome = Genome(path, cache_dir=tmp_path / "cache")
    assert genome.fetch("r", 0, 12) == "ACGTACGTNNNN"


def test_ncbi_gi_names_become_accessions(fasta_cache_dir: Path) -> None:
    assert record_name("gi|9626243|ref|NC_001416.1|") == "NC_001416.1"
    assert record_name("chr1") == "chr1"
    assert record_name("gi|broken") == "gi|broken"
    fa = open_fasta(bundled_genome("lambda"), cache_dir=fasta_cache_dir)
    assert list(fa.keys()) == ["NC_001416.1"] and len(fa["NC_001416.1"]) == 48_502


def test_bundled_plasmids_have_three_records(fasta_cache_dir: Path) -> None:
    fa = open_fasta(bundled_genome("plasmids"), cache_dir=fasta_cache_dir)
    assert {k: len(v) for k, v in fa.records.items()} == {
        "NC_016833.1": 215_774,
        "NC_016823.1": 5_153,
        "NC_016834.1": 8_953,
    }


def test_unknown_bundled_genome_lists_names() -> None:
    with pytest.raises(ValueError, match="ecoli, lambda, plasmids"):
        bundled_genome("yeast")


def test_read_only_directory_puts_index_in_cache(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write to read-only directories")
    src = tmp_path / "ro"
    src.mkdir()
    (src / "plain.fa").write_text(TWO_RECORDS)
    src.chmod(0o555)
    try:
        fa = open_fasta(src / "plain.fa", cache_dir=tmp_path / "cache")
        assert len(fa["chrA"]) == 18
        assert list((tmp_path / "cache").glob("plain.fa.*.fai"))
    finally:
        src.chmod(0o755)
