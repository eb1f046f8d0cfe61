"""Memory gain: the same windows and masks scored with memory carried and with it reset.

A model that must use its memory (segment 2's bases are drawn from two bases that only
segment 1 shows) gains clearly; one whose memory path is cut gains exactly 0; the
numbers rmt-train writes into eval.json equal a computation from the runner's own loss.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from fast_config import FAST_TRAIN
from hydra import compose, initialize_config_module

from benchmarks.memory_gain import main as memory_gain_report
from curriculum import build_curriculum
from data import IGNORE_INDEX, Batch, MLMBatches, NucleotideTokenizer
from rmt.checkpoint import build_runner, load_model
from rmt.data_config import heldout_regions, make_genome
from rmt.encoder import EncoderConfig
from rmt.evaluate import MEMORY_KEYS, evaluate, summarize, window_scores
from rmt.metrics import scalars
from rmt.options import train_options
from rmt.sweep_summary import summarize as summarize_sweep
from rmt.train import make_task, train

SEG = 16


def options(overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return train_options(compose(config_name="train", overrides=list(overrides)))


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and do not fight other tests for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_base_batch(tokenizer, generator: torch.Generator, rows: int) -> Batch:
    """Two segments drawn from the same 2 of the 4 bases: segment 1 shown, segment 2 all
    masked and scored. Only the memory can tell segment 2 which two bases it holds."""
    bases = torch.tensor([tokenizer.token_to_id(b) for b in "ACGT"])
    pairs = torch.tensor(list(itertools.combinations(range(4), 2)))
    which = pairs[torch.randint(len(pairs), (rows,), generator=generator)]
    ids = bases[which.gather(1, torch.randint(2, (rows, 2 * SEG), generator=generator))]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, SEG:] = ids[:, SEG:]
    inputs = ids.clone()
    inputs[:, SEG:] = tokenizer.mask_id
    return Batch(inputs, torch.ones_like(ids, dtype=torch.bool), labels, [])


def small_runner(vocab_size: int, memory_tokens: int = 2):
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2)
    return build_runner(config, {"memory_tokens": memory_tokens, "segment_tokens": SEG})


def test_a_model_that_needs_its_memory_gains_clearly(one_thread):
    tokenizer = NucleotideTokenizer()
    runner = small_runner(tokenizer.vocab_size)
    # lr 3e-3: at 1e-2 and above some CPUs' rounding sends every seed to the memoryless
    # optimum (loss log 4), where the memory gain is exactly 0.
    optimizer = torch.optim.AdamW(runner.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):
        batch = two_base_batch(tokenizer, generator, 32)
        loss = runner(batch.input_ids, batch.attention_mask, batch.labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    runner.eval()
    heldout = two_base_batch(tokenizer, torch.Generator().manual_seed(1), 64)
    with torch.no_grad():
        result = summarize(window_scores(runner, heldout), "all", False, True)
    # The memory tells which two bases are in play: a loss well under log 4 (log 2 at
    # best), which resetting the memory loses again.
    assert result["loss"] < math.log(4) - 0.3
    assert result["memory_gain"] > 0.3
    assert result["memory_gain"] > 5 * result["memory_gain_se"]
    # Segment 1 is unscored here, so the gain is the whole loss difference.
    assert result["memory_gain"] == pytest.approx(result["loss_memory_reset"] - result["loss"])


@pytest.fixture
def lambda_eval(lambda_genome, lambda_bpe):
    batches = MLMBatches(lambda_genome, lambda_bpe, seed=0)
    kwargs = {"segments": 3, "batch_size": 4, "max_tokens": 1024}
    return lambda runner, **more: evaluate(
        runner, batches, [lambda_genome.intervals[0]], **kwargs, **more
    )


def test_disconnected_memory_gains_exactly_zero(lambda_eval, lambda_bpe):
    runner = small_runner(lambda_bpe.vocab_size, memory_tokens=4)
    connected = lambda_eval(runner)
    assert connected["memory_gain"] != 0.0  # the reset pass does differ
    # With every attention output projection zero, no position reads another: outputs
    # cannot depend on the memory, so both passes must agree to the last bit.
    with torch.no_grad():
        for block in runner.encoder.blocks:
            block.attn.out.weight.zero_()
    result = lambda_eval(runner)
    assert result["memory_gain"] == 0.0 and result["memory_gain_se"] == 0.0
    assert result["segment_losses_memory_reset"] == result["segment_losses"]
    assert result["loss_memory_reset"] == result["loss"]


def test_both_passes_score_the_same_masked_tokens(lambda_eval, lambda_bpe):
    runner = small_runner(lambda_bpe.vocab_size, memory_tokens=4)
    first, again = lambda_eval(runner), lambda_eval(runner)
    assert first == again  # fixed masks: every evaluation scores the same tokens
    # Segment 1 reads the initial memory in both passes: the same tokens, the same loss.
    assert first["segment_losses_memory_reset"][0] == first["segment_losses"][0]
    assert first["segment_losses_memory_reset"][1:] != first["segment_losses"][1:]


def test_no_memory_or_switched_off_reports_null(lambda_eval, lambda_bpe):
    runner = small_runner(lambda_bpe.vocab_size, memory_tokens=4)
    off = lambda_eval(runner, memory_gain=False)
    none = lambda_eval(small_runner(lambda_bpe.vocab_size, memory_tokens=0))
    for result in (off, none):
        assert all(result[key] is None for key in MEMORY_KEYS)
    assert off["loss"] == lambda_eval(runner)["loss"]  # the carried pass is unchanged
    board = scalars({"split": "eval", "step": 3, **off})
    assert "eval/loss" in board and not any("memory" in tag for tag in board)
    board = scalars({"split": "eval", "step": 3, **lambda_eval(runner)})
    assert {"eval/memory_gain", "eval/memory_gain_se", "eval/loss_memory_reset"} <= set(board)
    assert "eval/segment_losses_memory_reset/2" in board


def direct(runner, batches, region, segments, batch_size, max_tokens):
    """Per-window segment loss sums and counts from the runner's own (fused) loss: the whole
    window with memory carried, and every segment alone (a one-segment forward)."""
    carried, alone, counts, tokens = [], [], [], 0
    seg = runner.segment_tokens
    for batch in batches.tile(region, batch_size, segments * seg):
        for row in range(batch.input_ids.shape[0]):
            rows = (batch.input_ids, batch.attention_mask, batch.labels)
            ids, mask, labels = (x[row : row + 1] for x in rows)
            out = runner(ids, mask, labels)
            carried.append(out.segment_sums.double())
            counts.append(out.segment_counts.double())
            pieces = zip(ids.split(seg, 1), mask.split(seg, 1), labels.split(seg, 1), strict=True)
            alone.append(torch.cat([runner(*p).segment_sums.double() for p in pieces]))
        tokens += int(batch.attention_mask.sum())
        if tokens >= max_tokens:
            break
    return torch.stack(carried), torch.stack(alone), torch.stack(counts)


def test_eval_json_equals_a_direct_computation(tmp_path, one_thread):
    cfg = options(FAST_TRAIN)
    result = train(cfg, tmp_path)
    final = json.loads((tmp_path / "eval.json").read_text())["final"]
    assert result["eval_memory_gain"] == final["memory_gain"]
    runner, tokenizer = load_model(tmp_path)
    heldout = heldout_regions(cfg.data)
    genome = make_genome(cfg.data, heldout)
    task = make_task(cfg, runner, tokenizer, genome, heldout, torch.device("cpu"), None)
    t = cfg.trainer
    with torch.no_grad():
        carried, alone, counts = direct(
            runner, task.eval_batches, heldout[0], final["segments"], t.eval_batch_size,
            t.eval_max_tokens,
        )  # fmt: skip
    total = counts.sum(0)
    assert final["segment_losses"] == pytest.approx((carried.sum(0) / total).tolist(), rel=1e-5)
    want_reset = (alone.sum(0) / total).tolist()
    assert final["segment_losses_memory_reset"] == pytest.approx(want_reset, rel=1e-5)
    d, c = (alone - carried)[:, 1:].sum(1), counts[:, 1:].sum(1)
    d, c = d[c > 0], c[c > 0]
    gain = float(d.sum() / c.sum())
    n = len(c)
    se = float(((d - gain * c) ** 2).sum().sqrt() / c.sum() * (n / (n - 1)) ** 0.5)
    # A difference of two ~5-nat fp32 sums: machines' SIMD paths differ in the 7th digit.
    assert final["memory_gain"] == pytest.approx(gain, rel=1e-4, abs=1e-6)
    assert final["memory_gain_se"] == pytest.approx(se, rel=1e-3, abs=1e-6)
    assert final["loss_memory_reset"] == pytest.approx(float(alone.sum() / counts.sum()), rel=1e-5)
    assert final["segments"] == 2 and final["unigram_loss"] > 0
    # benchmarks/memory_gain.py turns the same run into the figures a README quotes.
    memory_gain_report([str(tmp_path), "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "memory_gain.json").read_text())
    assert report["final"]["memory_gain"] == final["memory_gain"]
    # Evaluations at steps 0 and 3, both at 2 segments: the stage table keeps the last.
    assert [(s["step"], s["segments"]) for s in report["stages"]] == [(3, 2)]


def test_threshold_curriculum_advances_on_memory_gain():
    stages = [{"segments": s, "steps": 10} for s in (1, 2, 4)]
    cfg = options(["curriculum=threshold", "curriculum.metric=memory_gain", "curriculum.target=0"])
    assert cfg.curriculum.metric == "memory_gain"
    c = build_curriculum({"policy": "threshold", "metric": "memory_gain", "target": 0.01,
                          "stages": stages})  # fmt: skip
    assert c.observe({"memory_gain": None}) is None  # one segment: nothing to measure yet
    assert c.observe({"memory_gain": 0.005}) is None
    assert c.observe({"memory_gain": 0.02})["segments"] == 2


def test_sweep_summary_has_a_memory_gain_column(tmp_path):
    for job, gain in (("0", 0.012), ("1", None)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- memory.memory_tokens={job}\n")
        status = {"status": "finished", "eval_loss": 5.0, "eval_memory_gain": gain}
        (tmp_path / job / "status.json").write_text(json.dumps(status))
    summarize_sweep(tmp_path)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert "eval_memory_gain" in header
    assert "| 0.012 |" in (tmp_path / "summary.md").read_text()
