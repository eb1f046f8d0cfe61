"""Streaming tokenization (data.streaming): token for token what tokenizing at once gives."""

from __future__ import annotations

import numpy as np
import pytest

from data import (
    BPETokenizer,
    Encoding,
    Genome,
    NucleotideTokenizer,
    Region,
    bundled_genome,
    reverse_complement,
)
from data.streaming import StreamTokenizer, TokenStream, plan_parts

LAMBDA = "NC_001416.1"
ECOLI = "NC_008253.1"
ECOLI_SLICE = Region(ECOLI, 2_000_000, 2_500_000)


@pytest.fixture(scope="session")
def ecoli_bpe(ecoli_genome: Genome) -> BPETokenizer:
    """A 2,048-token BPE (longer tokens than lambda's) trained away from the tested slice."""
    return BPETokenizer.train([ecoli_genome.fetch(ECOLI, 0, 400_000)], 2048)


@pytest.fixture(scope="session")
def plasmids(fasta_cache_dir) -> Genome:
    return Genome(bundled_genome("plasmids"), cache_dir=fasta_cache_dir)


def streamed(tokenizer, seq: str, chunk: int, margin: int) -> Encoding:
    stream = StreamTokenizer(tokenizer, margin)
    pieces = [stream.feed(seq[i : i + chunk]) for i in range(0, len(seq), chunk)]
    pieces.append(stream.finish())
    return concat(pieces)


def concat(pieces: list[Encoding]) -> Encoding:
    return Encoding(
        np.concatenate([p.ids for p in pieces]), np.concatenate([p.offsets for p in pieces])
    )


def assert_same(got: Encoding, want: Encoding) -> None:
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.offsets, want.offsets)


def assert_tiles(offsets: np.ndarray, start: int, end: int) -> None:
    """Spans cover [start, end) exactly once, in order, without gaps or overlaps."""
    assert offsets[0, 0] == start and offsets[-1, 1] == end
    np.testing.assert_array_equal(offsets[1:, 0], offsets[:-1, 1])
    assert (offsets[:, 1] > offsets[:, 0]).all()


@pytest.mark.parametrize("chunk", [1000, 3333, 20_000])
@pytest.mark.parametrize("margin", [0, 256])
def test_streamed_bpe_equals_whole_tokenization_of_lambda(lambda_genome, lambda_bpe, chunk, margin):
    seq = lambda_genome.fetch(LAMBDA, 0, lambda_genome.lengths[LAMBDA])
    got = streamed(lambda_bpe, seq, chunk, margin)
    assert_same(got, lambda_bpe.encode(seq))
    assert_tiles(got.offsets, 0, len(seq))


@pytest.mark.parametrize("chunk", [1000, 3333])
def test_streamed_bpe_equals_whole_tokenization_of_an_ecoli_slice(ecoli_genome, ecoli_bpe, chunk):
    seq = ecoli_genome.fetch(ECOLI, ECOLI_SLICE.start, ECOLI_SLICE.end)
    assert_same(streamed(ecoli_bpe, seq, chunk, margin=64), ecoli_bpe.encode(seq))


@pytest.mark.parametrize("tokenizer", ["ecoli_bpe", "nucleotide"])
def test_streamed_tokens_equal_whole_tokenization_of_every_plasmid(plasmids, request, tokenizer):
    tok = NucleotideTokenizer() if tokenizer == "nucleotide" else request.getfixturevalue(tokenizer)
    for name, length in plasmids.lengths.items():
        seq = plasmids.fetch(name, 0, length)
        got = streamed(tok, seq, 3333, 256)
        assert_same(got, tok.encode(seq))
        assert_tiles(got.offsets, 0, length)


def test_soft_masked_and_ambiguous_bases_stream_like_the_whole():
    tok = NucleotideTokenizer()
    seq = "acgtRYNNNNacgt" * 50
    assert_same(streamed(tok, seq, 7, 3), tok.encode(seq))


def take_all(stream: TokenStream, n: int = 100) -> Encoding:
    pieces = []
    while len(piece := stream.take(n)):
        pieces.append(Encoding(piece.ids, stream.forward(piece.offsets)))
    return concat(pieces)


def test_plus_stream_has_absolute_coordinates(lambda_genome, lambda_bpe):
    region = Region(LAMBDA, 10_000, 17_000)
    got = take_all(TokenStream(lambda_genome, region, "+", lambda_bpe, chunk_bp=1000))
    want = lambda_bpe.encode(lambda_genome.fetch(LAMBDA, region.start, region.end))
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.offsets, want.offsets + region.start)


def test_minus_stream_tokenizes_the_reverse_complement_and_maps_back(lambda_genome, lambda_bpe):
    region = Region(LAMBDA, 10_000, 17_000)
    forward = lambda_genome.fetch(LAMBDA, 0, lambda_genome.lengths[LAMBDA])
    got = take_all(TokenStream(lambda_genome, region, "-", lambda_bpe, chunk_bp=999))
    np.testing.assert_array_equal(
        got.ids, lambda_bpe.encode(reverse_complement(forward[region.start : region.end])).ids
    )
    # '-' tokens run from the region's end to its start and tile it exactly once.
    assert_tiles(got.offsets[::-1], region.start, region.end)
    for token, (start, end) in zip(got.ids, got.offsets, strict=True):
        assert lambda_bpe.decode([token]) == reverse_complement(forward[start:end])


@pytest.mark.parametrize("strand", ["+", "-"])
def test_a_stream_resumed_from_its_state_continues_identically(lambda_genome, lambda_bpe, strand):
    region = Region(LAMBDA, 0, 20_000)
    whole = take_all(TokenStream(lambda_genome, region, strand, lambda_bpe, chunk_bp=777), 64)
    first = TokenStream(lambda_genome, region, strand, lambda_bpe, chunk_bp=777)
    head = [first.take(64) for _ in range(37)]
    resumed = TokenStream(lambda_genome, region, strand, lambda_bpe, 777, state=first.state())
    head = concat([Encoding(p.ids, first.forward(p.offsets)) for p in head])
    assert_same(concat([head, take_all(resumed, 64)]), whole)


@pytest.mark.parametrize("strand", ["+", "-"])
def test_parallel_parts_cover_the_stream_on_segment_boundaries(lambda_genome, lambda_bpe, strand):
    region, segment, burn_in = Region(LAMBDA, 0, 48_502), 32, 3

    def stream(origin: int = 0) -> TokenStream:
        return TokenStream(lambda_genome, region, strand, lambda_bpe, 2000, origin=origin)

    whole = take_all(stream())
    parts = plan_parts(stream(), 4, segment, burn_in)
    assert len(parts) == 4 and parts[0].origin == 0 and parts[-1].tokens is None
    pieces, first_token = [], 0
    for part in parts:
        tokens = take_all(stream(part.origin))
        assert part.burn_in == min(burn_in, first_token // segment) * segment
        assert first_token % segment == 0
        emitted = tokens.ids[part.burn_in :][: part.tokens]
        pieces.append(Encoding(emitted, tokens.offsets[part.burn_in :][: part.tokens]))
        # The burn-in is the whole-stream tokens just before the part: same ids, same spans.
        warm = slice(first_token - part.burn_in, first_token)
        np.testing.assert_array_equal(tokens.ids[: part.burn_in], whole.ids[warm])
        first_token += len(emitted)
    assert_same(concat(pieces), whole)


def test_bad_arguments_are_refused(lambda_genome, lambda_bpe):
    with pytest.raises(ValueError, match="margin_bp"):
        StreamTokenizer(lambda_bpe, margin_bp=-1)
    with pytest.raises(ValueError, match="strand"):
        TokenStream(lambda_genome, Region(LAMBDA, 0, 100), "x", lambda_bpe)
    with pytest.raises(ValueError, match="parts"):
        plan_parts(TokenStream(lambda_genome, Region(LAMBDA, 0, 100), "+", lambda_bpe), 0, 32, 1)
