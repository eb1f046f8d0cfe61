"""Tokenizers: BPE training and loading (GENA-LM style files), nucleotide, offsets, I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from data import (
    SPECIAL_TOKENS,
    BPETokenizer,
    DNATokenizer,
    Genome,
    NucleotideTokenizer,
    TokenizerError,
    clean_sequence,
    load_tokenizer,
    train_bpe,
)

LAMBDA = "NC_001416.1"


def assert_offsets_exact(tok: DNATokenizer, seq: str) -> None:
    """Offsets are contiguous, cover ``seq`` and each spells exactly its token."""
    enc = tok.encode(seq)
    assert enc.ids.dtype == np.int64 and enc.offsets.dtype == np.int64
    assert enc.offsets.shape == (len(enc.ids), 2)
    assert enc.offsets[0, 0] == 0 and enc.offsets[-1, 1] == len(seq)
    assert np.array_equal(enc.offsets[1:, 0], enc.offsets[:-1, 1])
    cleaned = clean_sequence(seq)
    for token_id, (start, end) in zip(enc.ids, enc.offsets, strict=True):
        assert cleaned[start:end] == tok.decode([token_id])


def hf_bpe(texts: list[str], specials: list[str], vocab_size: int = 200) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def lambda_seq(lambda_genome: Genome) -> str:
    return lambda_genome.fetch(LAMBDA, 0, lambda_genome.lengths[LAMBDA])


def test_trained_bpe_layout(lambda_bpe: BPETokenizer) -> None:
    assert lambda_bpe.name == "bpe"
    assert lambda_bpe.vocab_size == 512
    assert [lambda_bpe.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (lambda_bpe.unk_id, lambda_bpe.cls_id, lambda_bpe.sep_id) == (0, 1, 2)
    assert (lambda_bpe.pad_id, lambda_bpe.mask_id) == (3, 4)
    assert lambda_bpe.special_ids == frozenset(range(5))
    assert all(lambda_bpe.token_to_id(base) is not None for base in "ACGTN")


def test_bpe_round_trip_and_offsets(lambda_bpe: BPETokenizer, lambda_seq: str) -> None:
    enc = lambda_bpe.encode(lambda_seq)
    assert lambda_bpe.decode(enc.ids) == lambda_seq
    assert lambda_bpe.bp_per_token(lambda_seq) > 2.0, "BPE must compress DNA"
    assert_offsets_exact(lambda_bpe, lambda_seq[:5_000])


def test_encode_cleans_but_keeps_input_positions(lambda_bpe: BPETokenizer) -> None:
    raw = "acgtRYacgttgcaNNnnACGT"
    enc = lambda_bpe.encode(raw)
    assert lambda_bpe.decode(enc.ids) == clean_sequence(raw) == "ACGTNNACGTTGCANNNNACGT"
    assert not set(enc.ids.tolist()) & lambda_bpe.special_ids
    assert_offsets_exact(lambda_bpe, raw)


def test_bpe_save_load_round_trip(lambda_bpe: BPETokenizer, lambda_seq: str, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    lambda_bpe.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"], "no temp file remains"
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer)
    sample = lambda_seq[10_000:20_000]
    assert np.array_equal(loaded.encode(sample).ids, lambda_bpe.encode(sample).ids)
    assert np.array_equal(load_tokenizer(tmp_path).encode(sample).ids, loaded.encode(sample).ids)


def test_gena_style_tokenizer_json_adds_no_specials(lambda_seq: str, tmp_path: Path) -> None:
    chunks = [lambda_seq[i : i + 1000] for i in range(0, 20_000, 1000)]
    tok = hf_bpe(chunks, list(SPECIAL_TOKENS), vocab_size=300)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    tok.enable_truncation(max_length=512)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]", length=512)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    seq = lambda_seq[30_000:36_000]
    raw = Tokenizer.from_file(str(path)).encode(seq)
    assert raw.tokens[0] == "[CLS]" and len(raw.ids) == 512  # the file really is GENA-like

    loaded = load_tokenizer(path)
    enc = loaded.encode(seq)
    assert len(enc.ids) > 600, "truncation from the file must be disabled"
    assert not set(enc.ids.tolist()) & loaded.special_ids
    assert loaded.decode(enc.ids) == seq
    assert_offsets_exact(loaded, seq[:3_000])


def test_template_processing_and_lowercase_vocab(lambda_seq: str, tmp_path: Path) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # a different id order
    chunks = [lambda_seq[i : i + 1000].lower() for i in range(0, 20_000, 1000)]
    tok = hf_bpe(chunks, specials, vocab_size=300)
    tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    path = tmp_path / "lower.json"
    tok.save(str(path))
    loaded = BPETokenizer.from_file(path)
    assert (loaded.pad_id, loaded.unk_id, loaded.mask_id) == (0, 1, 4)
    seq = lambda_seq[40_000:42_000]
    enc = loaded.encode(seq)
    assert loaded.unk_id not in enc.ids
    assert loaded.decode(enc.ids) == seq
    assert_offsets_exact(loaded, seq)


def test_missing_special_token_names_file_and_token(lambda_seq: str, tmp_path: Path) -> None:
    tok = hf_bpe([lambda_seq[:5_000]], ["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    path = tmp_path / "nomask.json"
    tok.save(str(path))
    with pytest.raises(TokenizerError, match=r"nomask\.json lacks the special token\(s\) \[MASK\]"):
        load_tokenizer(path)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"not found: .*missing\.json; give load_tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"broken\.json is not valid JSON"):
        load_tokenizer(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(TokenizerError, match=r"other\.json is not a Hugging Face tokenizer"):
        load_tokenizer(other)


def test_nucleotide_tokenizer(tmp_path: Path) -> None:
    tok = load_tokenizer("nucleotide")
    assert isinstance(tok, NucleotideTokenizer) and tok.name == "nucleotide"
    assert tok.vocab_size == 10 and tok.special_ids == frozenset(range(5))
    enc = tok.encode("ACGTNacgtrX")
    assert enc.ids.tolist() == [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 0]
    assert enc.offsets.tolist() == [[i, i + 1] for i in range(11)]
    assert tok.decode(enc.ids) == "ACGTNACGTN", "[UNK] decodes to nothing"
    assert tok.decode([3, 5, 6, 3]) == "AC", "padding decodes to nothing"
    assert tok.bp_per_token("ACGTACGT") == 1.0
    assert_offsets_exact(tok, "ggattacaNNRY")
    with pytest.raises(TokenizerError, match="ids must be in"):
        tok.decode([10])


def test_nucleotide_save_load(tmp_path: Path) -> None:
    path = tmp_path / "nt.json"
    NucleotideTokenizer().save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, NucleotideTokenizer)
    assert np.array_equal(loaded.encode("GATTACA").ids, NucleotideTokenizer().encode("GATTACA").ids)


def test_train_bpe_never_sees_excluded_region(write_fasta, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    background = "".join(rng.choice(list("ACGT"), size=60_000))
    motif = "GATTACACCGGTTAAC" * 1_250  # 20 kbp of one repeated 16-mer
    path = write_fasta("g.fa", f">bg\n{background}\n>rep\n{motif}\n")
    with_rep = train_bpe(Genome(path, cache_dir=tmp_path), 400)
    held_out = train_bpe(
        Genome(path, exclude=["rep"], cache_dir=tmp_path), 400, out=tmp_path / "held.json"
    )
    assert with_rep.bp_per_token(motif) > 8, "the motif is learned when it is seen"
    assert held_out.bp_per_token(motif) < 4, "an excluded region must not shape the vocab"
    assert isinstance(load_tokenizer(tmp_path / "held.json"), BPETokenizer)


def test_train_bpe_max_bp_samples_across_the_genome(write_fasta, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    background = "".join(rng.choice(list("ACGT"), size=80_000))
    motif = "GATTACACCGGTTAAC" * 1_250
    genome = Genome(write_fasta("g.fa", f">bg\n{background}\n>rep\n{motif}\n"), cache_dir=tmp_path)
    capped = train_bpe(genome, 300, max_bp=20_000)
    # the first 20 kbp are all background: learning the motif proves the sample is spread
    assert capped.bp_per_token(motif) > 8


def test_train_rejects_tiny_vocab() -> None:
    with pytest.raises(TokenizerError, match="must exceed 10"):
        BPETokenizer.train(["ACGT"], vocab_size=8)


def test_genos_sized_bpe_of_128_tokens(lambda_genome: Genome, lambda_seq: str) -> None:
    """experiment=genos_cpu's vocabulary: 5 specials, A C G T N and 118 merges, lossless."""
    tok = train_bpe(lambda_genome, 128)
    assert tok.vocab_size == 128
    pieces = [tok.decode([i]) for i in range(tok.vocab_size) if i not in tok.special_ids]
    assert len(pieces) == 123 and len(set(pieces)) == 123
    assert all(set(piece) <= set("ACGTN") for piece in pieces)
    assert max(map(len, pieces)) > 2  # merges of merges, not only dinucleotides
    assert_offsets_exact(tok, lambda_seq[:20_000])
