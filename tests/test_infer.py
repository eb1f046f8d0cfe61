"""rmt-infer: streamed scores match the model, outputs are well-formed, runs resume exactly."""

from __future__ import annotations

import filecmp
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyBigWig
import pytest
import torch
from hydra import compose, initialize_config_module

from data import BPETokenizer, Genome, reverse_complement
from rmt import EncoderConfig, build_runner, load_model, save_checkpoint
from rmt.infer import InferOptions, infer_options, run_inference
from rmt.infer.plan import plan_jobs
from rmt.infer.stream import Streamer
from rmt.writers import read_blocks

LAMBDA = "NC_001416.1"
REPO = Path(__file__).resolve().parents[1]
FINAL = [
    "logprob.plus.bedGraph",
    "logprob.plus.bw",
    "logprob.minus.bedGraph",
    "logprob.minus.bw",
    "embeddings.h5",
]


def tiny_checkpoint(folder: Path, tokenizer: BPETokenizer) -> Path:
    """A randomly initialised tiny RMT (4 memory tokens, 32-token segments) and its BPE."""
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=2)
    runner = build_runner(config, {"memory_tokens": 4, "segment_tokens": 32})
    return save_checkpoint(folder / "model", runner, tokenizer)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, lambda_bpe: BPETokenizer) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), lambda_bpe)


@pytest.fixture(scope="session")
def three_records(tmp_path_factory, lambda_genome) -> Path:
    """A FASTA of three lambda slices, one of them soft-masked with a run of N."""
    seq = lambda_genome.fetch(LAMBDA, 0, 6000)
    records = {"chrA": seq[:3000], "chrB": seq[3000:3100].lower() + "N" * 50, "chrC": seq[4000:]}
    path = tmp_path_factory.mktemp("fasta") / "three.fa"
    path.write_text("".join(f">{name}\n{body}\n" for name, body in records.items()))
    return path


def overrides(checkpoint: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"checkpoint={checkpoint}",
        f"output={out}",
        f"data.cache_dir={cache}",
        "data.fasta=[bundled:lambda]",
        "threads=1",
        "progress=false",
        *extra,
    ]


def infer_options_for(*args) -> InferOptions:
    """The typed options of ``overrides(*args)``, composed as the app composes them."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return infer_options(compose("infer", overrides(*args)))


def infer(*args: str) -> dict:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return run_inference(infer_options(compose("infer", list(args))))


def bedgraph(path: Path) -> list[tuple[str, int, int, float]]:
    rows = (line.split("\t") for line in path.read_text().splitlines())
    return [(c, int(s), int(e), float(v)) for c, s, e, v in rows]


def direct_logprobs(checkpoint: Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-token log p(observed) of ``seq`` from one whole-sequence forward, and the spans."""
    runner, tokenizer = load_model(checkpoint)
    encoding = tokenizer.encode(seq)
    ids = torch.as_tensor(encoding.ids)[None]
    with torch.no_grad():
        hidden = runner(ids, return_hidden=True).hidden
        logprob = runner.head(hidden).log_softmax(-1).gather(-1, ids[..., None])[0, :, 0]
    return logprob.numpy(), encoding.offsets


def test_tracks_are_the_models_streamed_log_probabilities_on_both_strands(
    checkpoint, tmp_path, fasta_cache_dir, lambda_genome
):
    region = (LAMBDA, 20_000, 23_000)
    summary = infer(
        *overrides(checkpoint, tmp_path, fasta_cache_dir, "strand=both"),
        f"regions=[{LAMBDA}:{region[1] + 1}-{region[2]}]",
    )
    seq = lambda_genome.fetch(*region)
    tokens = 0
    for strand, sequence in (("plus", seq), ("minus", reverse_complement(seq))):
        want, spans = direct_logprobs(checkpoint, sequence)
        if strand == "minus":  # rc span [a, b) is forward [end - b, end - a)
            want, spans = want[::-1], region[2] - spans[::-1, ::-1]
        else:
            spans = spans + region[1]
        rows = bedgraph(tmp_path / f"logprob.{strand}.bedGraph")
        np.testing.assert_array_equal([(s, e) for _, s, e, _ in rows], spans)
        per_token = np.array([v * (e - s) for _, s, e, v in rows])
        np.testing.assert_allclose(per_token, want, rtol=1e-4, atol=1e-4)
        tokens += len(want)
    assert summary["strand_bp"] == 2 * 3000 and summary["tokens"] == tokens
    assert summary["region_bp"] == summary["bp_per_strand"] == 3000
    assert summary["n_bp_skipped"] == 0
    assert summary["bp_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert not (tmp_path / "spool").exists()


def test_multi_record_fasta_gives_per_record_tracks_bigwig_and_store(
    checkpoint, tmp_path, fasta_cache_dir, three_records
):
    args = overrides(checkpoint, tmp_path, fasta_cache_dir, f"data.fasta=[{three_records}]")
    summary = infer(*args, "embeddings.dtype=float32")
    sizes = {"chrA": 3000, "chrB": 150, "chrC": 2000}
    scored = {"chrA": 3000, "chrB": 100, "chrC": 2000}  # chrB ends in 50 N: not scored
    assert summary["regions"] == [f"{name}:1-{n}" for name, n in sizes.items()]
    assert summary["n_bp_skipped"] == 50 and summary["bp_per_strand"] == 5100
    rows = bedgraph(tmp_path / "logprob.plus.bedGraph")
    bw = pyBigWig.open(str(tmp_path / "logprob.plus.bw"))
    assert bw.chroms() == sizes
    for name, length in scored.items():
        mine = [r for r in rows if r[0] == name]
        assert mine[0][1] == 0 and mine[-1][2] == length  # every base, once
        assert all(a[2] == b[1] for a, b in itertools.pairwise(mine))
        values = np.array(bw.values(name, 0, length))
        per_base = np.repeat([v for *_, v in mine], [e - s for _, s, e, _ in mine])
        np.testing.assert_allclose(values, per_base, rtol=1e-5)
    assert np.isnan(bw.values("chrB", 100, 150)).all()
    bw.close()
    with h5py.File(tmp_path / "embeddings.h5") as store:
        names = [c.decode() for c in store["chroms"][:]]
        assert names == list(sizes) and list(store["chrom_lengths"][:]) == list(sizes.values())
        seg = store["segments"]
        assert seg["embedding"].shape == (summary["segments"], 32)
        assert seg["memory"].shape == (summary["segments"], 4, 32)
        assert list(np.unique(seg["chrom"][:], return_counts=True)[0]) == [0, 1, 2]
        assert (seg["strand"][:] == 1).all() and (seg["end"][:] > seg["start"][:]).all()
        # In genome order: a record's segments tile it; the next record starts again at 0.
        starts, ends = seg["start"][:], seg["end"][:]
        assert list(starts[1:] == ends[:-1]).count(False) == 2
        assert np.isfinite(seg["memory"][:]).all()


def test_masked_track_scores_each_token_with_it_masked(
    checkpoint, tmp_path, fasta_cache_dir, lambda_genome
):
    k = 3  # 100 bp is one segment, so every pass reads the initial memory
    args = overrides(checkpoint, tmp_path, fasta_cache_dir, f"regions=[{LAMBDA}:1001-1100]")
    infer(*args, f"tracks.masked_stride={k}")
    runner, tokenizer = load_model(checkpoint)
    ids = torch.as_tensor(tokenizer.encode(lambda_genome.fetch(LAMBDA, 1000, 1100)).ids)[None]
    assert ids.shape[1] <= runner.segment_tokens
    want = torch.zeros(ids.shape[1])
    with torch.no_grad():
        for r in range(k):
            masked = ids.clone()
            masked[0, r::k] = tokenizer.mask_id
            logits = runner.head(runner(masked, return_hidden=True).hidden)
            scores = logits.log_softmax(-1).gather(-1, ids[..., None])[0, :, 0]
            want[r::k] = scores[r::k]
    rows = bedgraph(tmp_path / "masked.plus.bedGraph")
    got = [v * (e - s) for _, s, e, v in rows]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    unmasked = [v * (e - s) for _, s, e, v in bedgraph(tmp_path / "logprob.plus.bedGraph")]
    assert not np.allclose(got, unmasked, atol=1e-3)


def test_per_token_embeddings_for_a_small_region(checkpoint, tmp_path, fasta_cache_dir):
    args = overrides(checkpoint, tmp_path, fasta_cache_dir, f"regions=[{LAMBDA}:1-2000]")
    summary = infer(*args, "embeddings.tokens=true", "strand=-")
    with h5py.File(tmp_path / "embeddings.h5") as store:
        tokens = store["tokens"]
        assert tokens["embedding"].shape == (summary["tokens"], 32)
        assert (tokens["strand"][:] == -1).all() and tokens["end"][-1] == 2000
        assert (np.diff(tokens["start"][:]) > 0).all()
    with pytest.raises(ValueError, match="max_token_bp"):
        infer(*args, "embeddings.tokens=true", "embeddings.max_token_bp=1000", "overwrite=true")


def test_parallel_parts_keep_the_tokens_and_warm_up_the_memory(
    checkpoint, tmp_path, fasta_cache_dir
):
    single = infer(*overrides(checkpoint, tmp_path / "single", fasta_cache_dir))
    split = ["parallel.streams=4", "parallel.min_bp=1000", "batch_size=4"]
    runs = {
        burn_in: infer(
            *overrides(checkpoint, tmp_path / str(burn_in), fasta_cache_dir, *split),
            f"parallel.burn_in={burn_in}",
        )
        for burn_in in (1, 10_000)
    }
    want = bedgraph(tmp_path / "single" / "logprob.plus.bedGraph")
    for burn_in, summary in runs.items():
        got = bedgraph(tmp_path / str(burn_in) / "logprob.plus.bedGraph")
        assert [r[:3] for r in got] == [r[:3] for r in want]  # the same tokens, once each
        assert summary["streams"] == 4 and summary["segments"] == single["segments"]
        assert summary["burn_in_segments"] > 0
        difference = np.abs(np.array([r[3] for r in got]) - [r[3] for r in want])
        if burn_in == 1:  # one segment of warm-up only approximates the memory
            assert difference.max() > 1e-3
        else:  # a burn-in back to the start reproduces the single stream
            assert difference.max() < 1e-4


def test_steps_that_only_warm_up_do_not_end_the_run(checkpoint, tmp_path, fasta_cache_dir):
    """One slot and parts with burn-in: the first steps of every later part emit nothing."""
    split = ["parallel.streams=3", "parallel.min_bp=1000", "parallel.burn_in=2", "batch_size=1"]
    summary = infer(*overrides(checkpoint, tmp_path, fasta_cache_dir, *split))
    assert summary["streams"] == 3 and summary["burn_in_segments"] == 2 * 2
    rows = bedgraph(tmp_path / "logprob.plus.bedGraph")
    assert summary["strand_bp"] == 48_502 and (rows[0][1], rows[-1][2]) == (0, 48_502)
    assert all(a[2] == b[1] for a, b in itertools.pairwise(rows))


@pytest.mark.slow
def test_a_killed_run_resumes_to_byte_identical_outputs(checkpoint, tmp_path, fasta_cache_dir):
    args = ["strand=both", "batch_size=2", "save_every=3", "parallel.min_bp=20000"]
    args += ["parallel.streams=2", "parallel.burn_in=2", "embeddings.dtype=float32"]
    infer(*overrides(checkpoint, tmp_path / "straight", fasta_cache_dir, *args))
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "rmt.infer"]
    command += overrides(checkpoint, killed, fasta_cache_dir, *args)
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "spool" / "shard-0000.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no resume state appeared"
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read()
    assert not (killed / "summary.json").exists() and (killed / "spool").is_dir()
    summary = infer(*overrides(checkpoint, killed, fasta_cache_dir, *args))
    attempts = summary["attempts"]
    assert summary["runs"] == len(attempts) == 2 and attempts[0]["wall_s"] > 0
    assert sum(a["strand_bp"] for a in attempts) == summary["strand_bp"] == 2 * 48_502
    assert summary["wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts), abs=2e-3)
    for name in FINAL:
        assert filecmp.cmp(tmp_path / "straight" / name, killed / name, shallow=False), name
    # Rerunning a finished run changes nothing.
    again = infer(*overrides(checkpoint, killed, fasta_cache_dir, *args))
    assert again == summary


def test_a_different_config_into_the_same_output_is_refused(checkpoint, tmp_path, fasta_cache_dir):
    region = f"regions=[{LAMBDA}:1-3000]"
    infer(*overrides(checkpoint, tmp_path, fasta_cache_dir, region))
    with pytest.raises(ValueError, match=r"different configuration \(differs in: config.strand"):
        infer(*overrides(checkpoint, tmp_path, fasta_cache_dir, region, "strand=-"))
    summary = infer(
        *overrides(checkpoint, tmp_path, fasta_cache_dir, region, "strand=-"), "overwrite=true"
    )
    assert summary["strand"] == "-" and not (tmp_path / "logprob.plus.bw").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("regions=[chrNope:1-10]", "chrNope"),
        (f"regions=[{LAMBDA}:1-48503]", "48,502 bp"),
        (f"regions=[{LAMBDA}:1-500,{LAMBDA}:400-900]", "overlap"),
        ("data.fasta=[missing.fa]", "missing.fa"),
        ("strand=up", "strand"),
    ],
)
def test_bad_inputs_name_the_culprit(checkpoint, tmp_path, fasta_cache_dir, override, named):
    with pytest.raises(ValueError, match=named):
        infer(*overrides(checkpoint, tmp_path / "out", fasta_cache_dir, override))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path, fasta_cache_dir):
    command = [sys.executable, "-m", "rmt.infer"]
    command += overrides(tmp_path / "nowhere", tmp_path / "out", fasta_cache_dir)
    env = {k: v for k, v in os.environ.items() if k != "RMT_DEBUG"}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "rmt-infer: error: no checkpoint at" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_slot_starts_each_new_job_from_the_initial_memory(
    checkpoint, tmp_path, fasta_cache_dir, three_records
):
    """One slot runs the three records one after another; three slots run them side by
    side. The tracks agree only if the slot's memory row is re-initialised per job."""
    args = overrides(checkpoint, tmp_path, fasta_cache_dir, f"data.fasta=[{three_records}]")
    tracks = {}
    for batch in (1, 3):
        infer(*args, f"output={tmp_path / str(batch)}", f"batch_size={batch}")
        tracks[batch] = bedgraph(tmp_path / str(batch) / "logprob.plus.bedGraph")
    assert [r[:3] for r in tracks[1]] == [r[:3] for r in tracks[3]]
    np.testing.assert_allclose(
        [r[3] for r in tracks[1]], [r[3] for r in tracks[3]], rtol=1e-5, atol=1e-6
    )


def test_the_slots_memory_is_preallocated_and_empty_slots_are_skipped(
    checkpoint, tmp_path, fasta_cache_dir, three_records
):
    options = infer_options_for(
        checkpoint, tmp_path, fasta_cache_dir, f"data.fasta=[{three_records}]", "batch_size=4"
    )
    runner, tokenizer = load_model(checkpoint)
    genome = Genome([str(three_records)], cache_dir=fasta_cache_dir)
    plan = plan_jobs(options, genome, tokenizer, runner.segment_tokens)
    cpu = torch.device("cpu")
    streamer = Streamer(options, runner, tokenizer, genome, plan, 0, tmp_path, cpu, None)
    storage, shape = streamer.memory.data_ptr(), streamer.memory.shape
    occupied = []
    while streamer.step() is not None:
        occupied.append(sum(lane is not None for lane in streamer.slots))
        assert streamer.memory.data_ptr() == storage and streamer.memory.shape == shape
    assert shape == (4, runner.memory_tokens, runner.encoder.config.d_model)
    assert occupied[0] == 3 and occupied[-1] == 1  # 3 jobs in 4 slots; chrA runs longest
    assert streamer.slots == [None] * 4 and streamer.stats["segments"] == sum(occupied)


@pytest.mark.parametrize("reverse", [False, True])
def test_spools_larger_than_one_read_block_come_back_whole(tmp_path, reverse):
    """A chromosome's spool spans many read blocks (a 21 Mbp arm: hundreds of MB); every
    block, the partial last one included, comes back in order."""
    dtype = np.dtype([("start", "<i8"), ("mean", "<f4", (3,))])
    rows = np.zeros(1000, dtype)
    rows["start"] = np.arange(1000)
    rows["mean"] = np.random.default_rng(0).random((1000, 3), dtype=np.float32)
    path = tmp_path / "rows.bin"
    path.write_bytes(rows.tobytes())
    blocks = list(read_blocks(path, dtype, reverse=reverse, block_bytes=7 * dtype.itemsize))
    assert len(blocks) == -(-1000 // 7)
    np.testing.assert_array_equal(np.concatenate(blocks), rows[::-1] if reverse else rows)
