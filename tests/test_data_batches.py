"""MLM batches: shapes, padding, trimmed windows, determinism, resume, evaluation tiling."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from data import (
    Batch,
    BPETokenizer,
    DNATokenizer,
    Genome,
    MLMBatches,
    NucleotideTokenizer,
    Region,
)

LAMBDA = "NC_001416.1"


def original_ids(batch: Batch) -> torch.Tensor:
    """Undo masking: labels hold the original id wherever a token was selected."""
    return torch.where(batch.labels != -100, batch.labels, batch.input_ids)


def spelled(tok: DNATokenizer, batch: Batch, row: int) -> str:
    ids = original_ids(batch)[row][batch.attention_mask[row]]
    return tok.decode(ids.numpy())


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.labels, b.labels)
    assert a.windows == b.windows


def test_sample_shapes_and_windows(lambda_genome: Genome, lambda_bpe: BPETokenizer) -> None:
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=3)
    batch = batches.sample(6, 256)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (6, 256)
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long
    assert batch.attention_mask.dtype == torch.bool and batch.attention_mask.all()
    assert 0.05 < (batch.labels != -100).float().mean().item() < 0.3
    assert (batch.input_ids == lambda_bpe.mask_id).any()
    assert len(batch.windows) == 6
    for row, window in enumerate(batch.windows):
        # each window is trimmed to exactly the bases its 256 tokens spell
        assert spelled(lambda_bpe, batch, row) == window.seq
        assert window.seq == lambda_genome.fetch(
            window.chrom, window.start, window.end, window.strand
        )
    assert {w.strand for w in MLMBatches(lambda_genome, lambda_bpe).sample(32, 16).windows} == {
        "+",
        "-",
    }


def test_measured_bp_per_token(lambda_genome: Genome, lambda_bpe: BPETokenizer) -> None:
    whole = lambda_genome.fetch(LAMBDA, 0, lambda_genome.lengths[LAMBDA])
    measured = MLMBatches(lambda_genome, lambda_bpe).bp_per_token
    assert measured == pytest.approx(lambda_bpe.bp_per_token(whole), rel=0.15)
    nucleotide = MLMBatches(lambda_genome, NucleotideTokenizer(), headroom=1.5)
    assert nucleotide.bp_per_token == 1.0 and nucleotide.window_bp(100) == 150


def test_short_record_is_padded(write_fasta, tmp_path) -> None:
    genome = Genome(write_fasta("short.fa", ">tiny\n" + "ACGT" * 75 + "\n"), cache_dir=tmp_path)
    tok = NucleotideTokenizer()
    batch = MLMBatches(genome, tok, bp_per_token=1.0, seed=0).sample(2, 512)
    assert batch.attention_mask.sum(dim=1).tolist() == [300, 300]
    assert (batch.input_ids[:, 300:] == tok.pad_id).all()
    assert (batch.labels[:, 300:] == -100).all()
    assert all((w.start, w.end) == (0, 300) for w in batch.windows)


def test_same_seed_same_batches(lambda_genome: Genome, lambda_bpe: BPETokenizer) -> None:
    a = MLMBatches(lambda_genome, lambda_bpe, seed=11)
    b = MLMBatches(lambda_genome, lambda_bpe, seed=11)
    for _ in range(2):
        assert_same(a.sample(3, 64), b.sample(3, 64))
    c = MLMBatches(lambda_genome, lambda_bpe, seed=12)
    assert (
        c.sample(3, 64).windows
        != MLMBatches(lambda_genome, lambda_bpe, seed=11).sample(3, 64).windows
    )


def test_state_dict_resume(lambda_genome: Genome, lambda_bpe: BPETokenizer) -> None:
    reference = MLMBatches(lambda_genome, lambda_bpe, seed=5)
    expected = [reference.sample(4, 128) for _ in range(3)]

    run = MLMBatches(lambda_genome, lambda_bpe, seed=5)
    assert_same(run.sample(4, 128), expected[0])
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)  # as in a training checkpoint
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = MLMBatches(lambda_genome, lambda_bpe, seed=999, bp_per_token=1.0)
    resumed.load_state_dict(state)
    assert resumed.bp_per_token == run.bp_per_token
    assert_same(resumed.sample(4, 128), expected[1])
    assert_same(resumed.sample(4, 128), expected[2])


def test_tile_covers_region_with_fixed_masks(
    lambda_genome: Genome, lambda_bpe: BPETokenizer
) -> None:
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=0)
    state_before = batches.state_dict()["numpy_rng"]
    region = Region(LAMBDA, 1_000, 21_000)
    tiles = list(batches.tile(str(region), batch_size=3, num_tokens=128))
    windows = [w for batch in tiles for w in batch.windows]
    assert windows[0].start == region.start and windows[-1].end == region.end
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(w.strand == "+" for w in windows)
    assert all(b.input_ids.shape[0] == 3 for b in tiles[:-1]) and tiles[-1].input_ids.shape[0] <= 3
    text = "".join(spelled(lambda_bpe, b, r) for b in tiles for r in range(len(b.windows)))
    assert text == lambda_genome.fetch(LAMBDA, region.start, region.end)
    masks = torch.cat([b.attention_mask for b in tiles])
    assert masks[:-1].all() and not masks[-1].all(), "only the very last row is padded"

    again = list(batches.tile(region, batch_size=3, num_tokens=128))
    for a, b in zip(tiles, again, strict=True):
        assert_same(a, b)
    other = list(batches.tile(region, batch_size=3, num_tokens=128, mask_seed=99))
    assert not torch.equal(other[0].labels, tiles[0].labels)
    assert batches.state_dict()["numpy_rng"] == state_before, "evaluation must not move training"


def test_batch_to_and_argument_checks(lambda_genome: Genome) -> None:
    batches = MLMBatches(lambda_genome, NucleotideTokenizer(), seed=0)
    batch = batches.sample(2, 8).to("cpu")
    assert batch.input_ids.device.type == "cpu" and len(batch.windows) == 2
    with pytest.raises(ValueError, match="batch_size and num_tokens"):
        batches.sample(0, 8)
    with pytest.raises(ValueError, match="headroom"):
        MLMBatches(lambda_genome, NucleotideTokenizer(), headroom=0.5)
    assert np.isclose(batches.bp_per_token, 1.0)


def test_sample_keys_rows_depend_only_on_their_keys(
    lambda_genome: Genome, lambda_bpe: BPETokenizer
) -> None:
    """What lets every data-parallel rank build only its own rows of a global batch."""
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=7)
    keys = [(3, i) for i in range(6)]
    whole = batches.sample_keys(keys, 96)
    # Two "ranks", each with every other row, in a fresh object (no stream state).
    ranks = [
        MLMBatches(lambda_genome, lambda_bpe, seed=7).sample_keys(keys[r::2], 96) for r in (0, 1)
    ]
    for r, part in enumerate(ranks):
        assert torch.equal(part.input_ids, whole.input_ids[r::2])
        assert torch.equal(part.labels, whole.labels[r::2])
        assert torch.equal(part.attention_mask, whole.attention_mask[r::2])
        assert part.windows == whole.windows[r::2]
    for row, window in enumerate(whole.windows):
        assert spelled(lambda_bpe, whole, row) == window.seq
    assert 0.05 < (whole.labels != -100).float().mean().item() < 0.3
    # Another step, another index or another seed: other windows and masks.
    assert batches.sample_keys([(4, 0)], 96).windows != whole.windows[:1]
    assert batches.sample_keys([(3, 6)], 96).windows != whole.windows[:1]
    other_seed = MLMBatches(lambda_genome, lambda_bpe, seed=8, bp_per_token=batches.bp_per_token)
    assert other_seed.sample_keys(keys[:1], 96).windows != whole.windows[:1]
    assert (
        batches.state_dict()["numpy_rng"]
        == MLMBatches(lambda_genome, lambda_bpe, seed=7).state_dict()["numpy_rng"]
    ), "keyed sampling must not move the stream"
