"""rmt-generate: filtering, the KV-cache loop against brute force, the FASTA, flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from data import BPETokenizer, DNATokenizer, NucleotideTokenizer
from rmt.checkpoint import build_runner, load_model, save_checkpoint
from rmt.encoder import EncoderConfig
from rmt.generate import GenerateOptions, generate_options, run_generation
from rmt.generate.prompt import read_prompt
from rmt.generate.sample import (
    Sampling,
    banned_tokens,
    choose,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from rmt.infer.stream import peak_rss_mb
from rmt.runner import MemoryRunner

SEG, MEM = 16, 3


def causal_runner(tokenizer: DNATokenizer, causal: bool = True) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=2,
                           causal=causal, init_std=0.2)  # fmt: skip
    return build_runner(config, {"memory_tokens": MEM, "segment_tokens": SEG}, kernels="torch")


def checkpoint(directory: Path, tokenizer: DNATokenizer, causal: bool = True) -> Path:
    return save_checkpoint(directory, causal_runner(tokenizer, causal), tokenizer)


def generate(tmp_path: Path, ckpt: Path, name: str = "out.fa", **settings) -> dict[str, str]:
    """Run rmt-generate; its FASTA as {record name: sequence}."""
    output = tmp_path / name
    run_generation(GenerateOptions(checkpoint=str(ckpt), output=str(output), progress=False,
                                   **settings))  # fmt: skip
    return read_fasta(output)


def read_fasta(path: Path) -> dict[str, str]:
    records: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:]
            records[name] = ""
        else:
            records[name] += line
    return records


# -- filtering and choosing -------------------------------------------------------------
PROBS = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]])


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero()[:, 0].tolist()


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = PROBS.log()
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert kept(top_k_filter(logits, 0)) == [0, 1, 2, 3, 4]
    assert kept(top_p_filter(logits, 0.4)) == [1]  # the most likely alone holds 0.5
    assert kept(top_p_filter(logits, 0.7)) == [1, 3]  # 0.5 + 0.3 reaches 0.7
    assert kept(top_p_filter(logits, 0.85)) == [0, 1, 3]  # ... + 0.1 reaches 0.85
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2, 3, 4]


def test_sampling_draws_from_the_renormalised_nucleus():
    generator = torch.Generator().manual_seed(0)
    logits = PROBS.log().repeat(20000, 1)
    draws = choose(logits, Sampling(top_p=0.7), generator)
    counts = torch.bincount(draws, minlength=5) / len(draws)
    torch.testing.assert_close(counts, torch.tensor([0, 0.625, 0, 0.375, 0]), atol=0.01, rtol=0)
    # Temperature 2 flattens: p ~ sqrt(p) within the top 2.
    draws = choose(logits, Sampling(temperature=2.0, top_k=2), generator)
    share = float((draws == 3).float().mean())
    assert share == pytest.approx(0.3**0.5 / (0.3**0.5 + 0.5**0.5), abs=0.01)
    for greedy in (Sampling(temperature=0.0), Sampling(top_k=1)):
        assert choose(PROBS.log(), greedy, generator).tolist() == [1]


# -- what may be drawn ------------------------------------------------------------------
def test_only_tokens_spelling_acgt_may_be_drawn():
    assert banned_tokens(NucleotideTokenizer()).tolist() == [True] * 5 + [False] * 4 + [True]
    bpe = BPETokenizer.train(["ACGTTNNNNNGGCANNACGT" * 40, "ACGGTTAC" * 40], 40)
    pieces = [bpe.decode([i]) for i in range(bpe.vocab_size)]
    banned = banned_tokens(bpe).tolist()
    with_n = [i for i, piece in enumerate(pieces) if "N" in piece]
    assert any(len(pieces[i]) > 1 for i in with_n)  # merges that hold an N ...
    assert all(banned[i] for i in with_n)  # ... are banned, as are N and the specials
    assert all(banned[i] for i in bpe.special_ids) and not banned[bpe.token_to_id("A")]
    allowed = [piece for piece, ban in zip(pieces, banned, strict=True) if not ban]
    assert any(len(piece) > 1 for piece in allowed) and all(set(p) <= set("ACGT") for p in allowed)


class GapsOnly(NucleotideTokenizer):
    """A vocabulary of specials and N alone."""

    def decode(self, ids) -> str:
        return "".join("N" for i in ids if i >= 5)


def test_a_vocabulary_without_bases_is_refused():
    with pytest.raises(ValueError, match=r"has no token that spells only A, C, G and T"):
        banned_tokens(GapsOnly())


def test_n_and_special_tokens_are_never_drawn_even_when_the_most_likely(tmp_path):
    tokenizer = NucleotideTokenizer()
    runner = causal_runner(tokenizer)
    with torch.no_grad():  # N and every special token far above the bases, always
        runner.head.decoder.bias[:5] = 30.0
        runner.head.decoder.bias[tokenizer.token_to_id("N")] = 40.0
    ckpt = save_checkpoint(tmp_path / "ckpt", runner, tokenizer)
    for name, temperature in (("greedy.fa", 0.0), ("hot.fa", 3.0)):
        records = generate(tmp_path, ckpt, name, length=200, batch=2, temperature=temperature)
        assert all(len(seq) == 200 and set(seq) <= set("ACGT") for seq in records.values())


# -- the token loop ---------------------------------------------------------------------
def brute_force_greedy(runner: MemoryRunner, ids: torch.Tensor, steps: int, ban) -> list[int]:
    """Greedy decoding by the runner's full forward over the whole growing sequence."""
    out = []
    for _ in range(steps):
        hidden = runner(ids, return_hidden=True).hidden[:, -1]
        logits = runner.head(hidden).masked_fill(ban, float("-inf"))
        token = logits.argmax(-1)
        out.append(int(token))
        ids = torch.cat([ids, token[:, None]], 1)
    return out


def test_greedy_sampling_equals_brute_force_argmax_over_the_full_forward():
    tokenizer = NucleotideTokenizer()
    runner = causal_runner(tokenizer).double().eval()
    prompt = torch.as_tensor(tokenizer.encode("ACGTA").ids)[None]
    steps = 40  # 5 + 40 tokens: two segment boundaries (16, 32) crossed while sampling
    want = brute_force_greedy(runner, prompt, steps, banned_tokens(tokenizer))
    assert len(set(want)) > 1 and all(5 <= token <= 8 for token in want)  # A C G T only
    for greedy in (Sampling(temperature=0.0), Sampling(top_k=1)):
        generator = torch.Generator().manual_seed(0)
        tokens = sample_tokens(runner, prompt, greedy, banned_tokens(tokenizer), generator)
        assert [int(next(tokens)) for _ in range(steps)] == want


# -- the app ----------------------------------------------------------------------------
def test_same_seed_same_sequences_another_seed_others(tmp_path):
    ckpt = checkpoint(tmp_path / "ckpt", NucleotideTokenizer())
    first = generate(tmp_path, ckpt, "a.fa", length=300, batch=2, seed=0)
    again = generate(tmp_path, ckpt, "b.fa", length=300, batch=2, seed=0)
    other = generate(tmp_path, ckpt, "c.fa", length=300, batch=2, seed=1)
    assert list(first) == ["generated_1", "generated_2"]
    assert first == again
    assert first["generated_1"] != other["generated_1"]
    assert first["generated_1"] != first["generated_2"]


def test_the_fasta_has_exact_lengths_lines_and_bases(tmp_path, lambda_bpe):
    ckpt = checkpoint(tmp_path / "ckpt", lambda_bpe)
    settings = {"length": 1003, "batch": 3, "line_width": 50, "record_name": "rmt"}
    records = generate(tmp_path, ckpt, **settings, temperature=0.9, top_p=0.95)
    assert list(records) == ["rmt_1", "rmt_2", "rmt_3"]
    assert all(len(seq) == 1003 and set(seq) <= set("ACGT") for seq in records.values())
    lines = (tmp_path / "out.fa").read_text().splitlines()
    sequence_lines = [line for line in lines if not line.startswith(">")]
    assert [len(line) for line in sequence_lines] == ([50] * 20 + [3]) * 3
    summary = json.loads((tmp_path / "generate.json").read_text())
    assert summary["bp_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["settings"]["top_p"] == 0.95 and summary["tokens_per_record"] < 1003
    # Nothing else is left beside the outputs (the spools are gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "generate.json", "out.fa"]


def test_a_fasta_region_prompt_is_read_and_continued(tmp_path, write_fasta):
    tokenizer = NucleotideTokenizer()
    fasta = write_fasta("ref.fa", ">chr1 test\nACGTACGGTT\nCCAAGGTTAA\n>chr2\nGGGG\n")
    assert read_prompt(f"{fasta}:chr1:5-14") == "ACGGTTCCAA"
    assert read_prompt("acgtn") == "ACGTN" and read_prompt(None) == ""
    assert read_prompt("bundled:lambda:NC_001416.1:1-12") == "GGGCGGCGACCT"
    with pytest.raises(ValueError, match=r"prompt=.*ends at 14 but record 'chr2' is only 4"):
        read_prompt(f"{fasta}:chr2:1-14")
    with pytest.raises(ValueError, match=r"prompt=.*nowhere\.fa"):
        read_prompt(f"{tmp_path}/nowhere.fa:chr1:1-4")
    # Greedy, the output is the cached loop's continuation of the prompt's tokens.
    ckpt = checkpoint(tmp_path / "ckpt", tokenizer)
    records = generate(tmp_path, ckpt, prompt=f"{fasta}:chr1:5-14", length=40, temperature=0.0)
    runner, _ = load_model(ckpt, kernels="torch")
    ids = torch.as_tensor(tokenizer.encode("ACGGTTCCAA").ids)[None]
    steps = sample_tokens(runner, ids, Sampling(0.0), banned_tokens(tokenizer), torch.Generator())
    assert records["generated"] == tokenizer.decode([int(next(steps)) for _ in range(40)])


def test_options_refuse_bad_values_by_key():
    base = {"checkpoint": "runs/x", "output": "gen.fa"}
    cases = {
        "output=.*is not a FASTA path": {"output": "gen.txt"},
        "prompt='ACGU' is neither": {"prompt": "ACGU"},
        "temperature=-1.0 must be >= 0": {"temperature": -1.0},
        r"top_p=0.0 must be in \(0, 1\]": {"top_p": 0.0},
        "length=0 must be >= 1": {"length": 0},
        "record_name='my seq' must be a FASTA name": {"record_name": "my seq"},
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            GenerateOptions(**{**base, **change})
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="generate", overrides=["output=x.fa"])
        with pytest.raises(ValueError, match="checkpoint is required"):
            generate_options(cfg)
        cfg = compose(config_name="generate", overrides=["checkpoint=c", "output=x.fa"])
    assert generate_options(cfg).summary_path == Path("generate.json")


@pytest.mark.slow
def test_cli_refuses_a_bidirectional_checkpoint_in_one_line(tmp_path):
    ckpt = checkpoint(tmp_path / "mlm", NucleotideTokenizer(), causal=False)
    proc = subprocess.run(
        [sys.executable, "-m", "rmt.generate", f"checkpoint={ckpt}", "output=gen.fa"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "is bidirectional (masked-LM) and cannot generate" in proc.stderr
    assert "task=clm model.causal=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gen.fa").exists()


def long_token_bpe() -> BPETokenizer:
    """A BPE of ~64 bp tokens (learnt on a repeat), so 100 kb is a few thousand tokens."""
    unit = "".join(np.random.default_rng(0).choice(list("ACGT"), 50))
    return BPETokenizer.train([unit * 400], 256)


def test_memory_stays_flat_however_long_the_output(tmp_path):
    ckpt = checkpoint(tmp_path / "ckpt", long_token_bpe())
    peaks = {}
    for length in (20_000, 100_000):
        try:  # reset this process's peak RSS (VmHWM) to what it holds now
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pytest.skip("this system cannot reset a process's peak RSS (/proc/self/clear_refs)")
        records = generate(tmp_path, ckpt, f"{length}.fa", length=length)
        assert len(records["generated"]) == length
        peaks[length] = peak_rss_mb()
    assert peaks[100_000] < 1.1 * peaks[20_000] + 16, peaks
