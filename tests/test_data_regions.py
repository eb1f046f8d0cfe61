"""Region parsing: samtools coordinates, validation against records, odd record names."""

from __future__ import annotations

import pytest

from data import ECOLI_HELDOUT, FastaError, Region, parse_region

LENGTHS = {"chr1": 1_000_000, "HLA-A*01:01:01:01": 3_503, "chrUn:KI270302v1": 2_274}


def test_one_based_inclusive_becomes_zero_based_half_open() -> None:
    region = parse_region("chr1:1-100")
    assert region == Region("chr1", 0, 100)
    assert len(region) == 100


def test_commas_and_whitespace_are_accepted() -> None:
    assert parse_region(" chr1:1,000-2,000 ") == Region("chr1", 999, 2000)


@pytest.mark.parametrize(
    "text", ["chr1:1-1", "chr1:5-10", "HLA-A*01:01:01:01:10-20", "NC_008253.1:4692001-4938920"]
)
def test_str_round_trip(text: str) -> None:
    region = parse_region(text)
    assert str(region) == text
    assert parse_region(str(region)) == region


def test_heldout_constant_is_the_last_246920_bp() -> None:
    assert str(ECOLI_HELDOUT) == "NC_008253.1:4692001-4938920"
    assert len(ECOLI_HELDOUT) == 246_920


def test_bare_record_means_whole_record_and_needs_lengths() -> None:
    assert parse_region("chr1", LENGTHS) == Region("chr1", 0, 1_000_000)
    with pytest.raises(FastaError, match="lengths"):
        parse_region("chr1")


def test_colons_in_names_split_only_before_a_range() -> None:
    assert parse_region("HLA-A*01:01:01:01", LENGTHS) == Region("HLA-A*01:01:01:01", 0, 3_503)
    assert parse_region("HLA-A*01:01:01:01:11-20", LENGTHS) == Region("HLA-A*01:01:01:01", 10, 20)
    assert parse_region("chrUn:KI270302v1:1-10", LENGTHS) == Region("chrUn:KI270302v1", 0, 10)


def test_record_named_like_a_range_is_found() -> None:
    assert parse_region("x:1-5", {"x:1-5": 50}) == Region("x:1-5", 0, 50)


def test_end_past_record_names_region_and_length() -> None:
    with pytest.raises(FastaError) as info:
        parse_region("chr1:999,000-1,000,001", LENGTHS)
    message = str(info.value)
    assert "chr1:999000-1000001" in message and "1,000,000 bp" in message


def test_unknown_record_lists_known_records() -> None:
    with pytest.raises(FastaError, match=r"'chrX'.*known records: chr1"):
        parse_region("chrX:1-10", LENGTHS)
    with pytest.raises(FastaError, match="neither"):
        parse_region("chrX", LENGTHS)


@pytest.mark.parametrize("text", ["chr1:0-10", "chr1:10-9", ""])
def test_invalid_coordinates(text: str) -> None:
    with pytest.raises(FastaError):
        parse_region(text, LENGTHS)


def test_region_rejects_empty_or_negative_intervals() -> None:
    with pytest.raises(FastaError):
        Region("chr1", 5, 5)
    with pytest.raises(FastaError):
        Region("chr1", -1, 5)


def test_overlaps() -> None:
    a = Region("c", 10, 20)
    assert a.overlaps(Region("c", 19, 30)) and not a.overlaps(Region("c", 20, 30))
    assert not a.overlaps(Region("d", 10, 20))
