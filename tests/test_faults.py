"""Fault suite: checkpoints, FASTA, tokenizers and sweeps under the faults users hit.

Each test injects one fault (a damaged file, a stale index, a kill, a bad value) and
asserts the error type (or exit code), that the message names the culprit, and what is
on disk afterwards: nothing lost, nothing half-written. Models are tiny and built
in-process; the one kill test uses a real SIGKILL during a checkpoint save.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import bgzf
from tokenizers import Tokenizer, models, trainers

from data import BPETokenizer, FastaError, Genome, TokenizerError, open_fasta, train_bpe
from data.tokenizers import NucleotideTokenizer
from data.vocab_checks import check_dna_vocabulary, max_bpe_vocab, unknown_fraction
from rmt import EncoderConfig, build_runner, load_model, save_checkpoint
from rmt.checkpoint import (
    CheckpointError,
    load_weights,
    remove_stale_temps,
    resolve_checkpoint,
    verify_tokenizer,
    write_latest,
)
from rmt.sweep_summary import summarize

REPO = Path(__file__).resolve().parents[1]


def tiny_runner(vocab_size: int, d_model: int = 32, n_layers: int = 1):
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=2)
    return build_runner(config, {"memory_tokens": 2, "segment_tokens": 16})


@pytest.fixture
def run(tmp_path, lambda_bpe) -> Path:
    """A run directory with two checkpoints; `latest` names step-00000002."""
    checkpoints = tmp_path / "run" / "checkpoints"
    runner = tiny_runner(lambda_bpe.vocab_size)
    for step in (1, 2):
        name = f"step-{step:08d}"
        save_checkpoint(checkpoints / name, runner, lambda_bpe, {"step": step}, {"step": step})
        write_latest(checkpoints, name, keep=3)
    return tmp_path / "run"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def other_bpe(lambda_genome, vocab_size: int) -> BPETokenizer:
    """A BPE trained on another stretch of lambda: same layout, other merges."""
    return BPETokenizer.train([lambda_genome.fetch("NC_001416.1", 20_000, 30_000)], vocab_size)


# -- checkpoints ------------------------------------------------------------------------


def test_non_finite_weights_are_never_written(tmp_path, lambda_bpe):
    runner = tiny_runner(lambda_bpe.vocab_size)
    name = next(n for n, p in runner.named_parameters() if p.ndim == 2)
    with torch.no_grad():
        dict(runner.named_parameters())[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"refusing to write .*step-1.*{name}.*1 NaN"):
        save_checkpoint(tmp_path / "step-1", runner, lambda_bpe)
    assert listing(tmp_path) == [], "no checkpoint and no temp directory"


def test_manifest_lists_every_file_and_the_model_loads_back(run, lambda_bpe):
    ckpt = run / "checkpoints" / "step-00000002"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert set(manifest["files"]) == set(listing(ckpt)) - {"manifest.json"}
    assert (
        manifest["files"]["model.safetensors"]["bytes"]
        == (ckpt / "model.safetensors").stat().st_size
    )
    runner, tokenizer = load_model(run)
    torch.testing.assert_close(runner.state_dict(), tiny_runner(lambda_bpe.vocab_size).state_dict())
    assert tokenizer.fingerprint() == lambda_bpe.fingerprint()


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), r"model\.safetensors is [\d,]+ bytes but"),
        (lambda p: p.write_bytes(b"\0" + p.read_bytes()[1:]), r"model\.safetensors has changed"),
        (lambda p: p.unlink(), r"model\.safetensors missing"),
    ],
    ids=["truncated", "changed", "missing"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(run, damage, named):
    ckpt = run / "checkpoints" / "step-00000002"
    damage(ckpt / "model.safetensors")
    before = listing(ckpt)
    with pytest.raises(CheckpointError, match=named):
        load_model(ckpt)
    assert listing(ckpt) == before, "a refused checkpoint is left as it is"


def test_corrupt_latest_falls_back_to_the_newest_intact_checkpoint(run, caplog):
    checkpoints = run / "checkpoints"
    (checkpoints / "step-00000002" / "config.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(run) == checkpoints / "step-00000001"
        load_model(run)
    assert "step-00000002/config.json is 9 bytes but was written as" in caplog.text
    assert "using the newest intact checkpoint" in caplog.text and "retrain" not in caplog.text
    assert listing(checkpoints) == ["latest", "step-00000001", "step-00000002"], "nothing deleted"


def test_latest_naming_a_vanished_directory_falls_back(run, caplog):
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(run).name == "step-00000001"
    assert "step-00000002 is not a complete checkpoint" in caplog.text


def test_no_intact_checkpoint_says_how_to_start_over(run):
    for step in ("step-00000001", "step-00000002"):
        (run / "checkpoints" / step / "tokenizer.json").write_text("{}")
    with pytest.raises(
        CheckpointError,
        match=r"holds no other intact checkpoint; remove .*checkpoints to start over",
    ):
        resolve_checkpoint(run)


def test_checkpoint_without_manifest_loads_with_a_warning(run, caplog):
    ckpt = run / "checkpoints" / "step-00000002"
    (ckpt / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        load_model(ckpt)
    assert "has no manifest.json" in caplog.text
    weights = ckpt / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-64])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors is [\d,]+ bytes, its header says"
    ):
        load_model(ckpt)
    weights.write_bytes(intact)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is unreadable"):
        load_model(ckpt)


def test_swapped_tokenizer_is_refused(run, lambda_genome, lambda_bpe):
    ckpt = run / "checkpoints" / "step-00000002"
    same_size = other_bpe(lambda_genome, lambda_bpe.vocab_size)
    same_size.save(ckpt / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json (is [\d,]+ bytes|has changed)"):
        load_model(ckpt)  # the manifest catches it
    (ckpt / "manifest.json").unlink()  # and without one, the fingerprint does
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*not the tokenizer.*fingerprint"):
        load_model(ckpt)
    other_bpe(lambda_genome, lambda_bpe.vocab_size + 40).save(ckpt / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"552 ids, the model has 512"):
        load_model(ckpt)


def test_resume_can_check_its_tokenizer_against_the_checkpoint(run, lambda_genome, lambda_bpe):
    ckpt = resolve_checkpoint(run)
    verify_tokenizer(ckpt, lambda_bpe)
    with pytest.raises(CheckpointError, match="fingerprint differs"):
        verify_tokenizer(ckpt, other_bpe(lambda_genome, lambda_bpe.vocab_size))
    with pytest.raises(CheckpointError, match="10 ids, the model has 512"):
        verify_tokenizer(ckpt, NucleotideTokenizer())


def test_weights_of_another_model_name_the_file_and_shapes(run, lambda_bpe):
    other = tiny_runner(lambda_bpe.vocab_size, d_model=64)
    weights = resolve_checkpoint(run) / "model.safetensors"
    with pytest.raises(
        ValueError, match=r"model\.safetensors: weights have other shapes.*\(model "
    ):
        load_weights(other, weights)


def test_keep_below_one_is_refused_before_anything_changes(run):
    checkpoints = run / "checkpoints"
    before = listing(checkpoints), (checkpoints / "latest").read_text()
    with pytest.raises(ValueError, match="keep=0 must be >= 1"):
        write_latest(checkpoints, "step-00000002", keep=0)
    assert (listing(checkpoints), (checkpoints / "latest").read_text()) == before


def test_pruning_keeps_what_latest_names_and_the_newest(run, lambda_bpe):
    checkpoints = run / "checkpoints"
    save_checkpoint(checkpoints / "step-00000003", tiny_runner(lambda_bpe.vocab_size), lambda_bpe)
    write_latest(checkpoints, "step-00000001", keep=1)  # e.g. after a fallback resume
    assert listing(checkpoints) == ["latest", "step-00000001", "step-00000003"]
    assert resolve_checkpoint(run).name == "step-00000001"


def test_rewriting_a_checkpoint_leaves_no_leftovers(run, lambda_bpe):
    checkpoints = run / "checkpoints"
    save_checkpoint(checkpoints / "step-00000002", tiny_runner(lambda_bpe.vocab_size), lambda_bpe)
    assert listing(checkpoints) == ["latest", "step-00000001", "step-00000002"]


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from data import NucleotideTokenizer
from rmt import EncoderConfig, build_runner, save_checkpoint
from rmt.checkpoint import write_latest

checkpoints = Path(sys.argv[1])
config = EncoderConfig(vocab_size=10, d_model=256, n_layers=4, n_heads=4)
runner = build_runner(config, {"memory_tokens": 2, "segment_tokens": 16})
state = {"optimizer": torch.randn(4_000_000)}  # ~16 MB more to write per save
for step in range(1, 10_000):
    name = f"step-{step:08d}"
    save_checkpoint(checkpoints / name, runner, NucleotideTokenizer(), state, {"step": step})
    write_latest(checkpoints, name, keep=2)
"""


def kill_during_a_save(checkpoints: Path) -> list[Path]:
    """SIGKILL the save loop while a temp directory exists; the entries left behind."""
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(checkpoints)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "latest").exists():  # wait for one complete checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, "save loop died"
            time.sleep(0.05)
        while not any(p.name.startswith(".step-") for p in checkpoints.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "save loop died"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return [p for p in checkpoints.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_a_temp_dir_that_cleanup_removes(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    for _ in range(5):  # the kill can land just after a save completes; then try again
        leftovers = kill_during_a_save(checkpoints)
        if any(p.name.startswith(".step-") for p in leftovers):
            break
    assert any(p.is_dir() and p.name.startswith(".step-") for p in leftovers), leftovers
    removed = remove_stale_temps(checkpoints)
    assert sorted(removed) == sorted(leftovers)
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]
    ckpt = resolve_checkpoint(tmp_path / "run")
    runner, tokenizer = load_model(ckpt)
    assert isinstance(tokenizer, NucleotideTokenizer) and runner.encoder.config.d_model == 256
    assert remove_stale_temps(tmp_path / "nowhere") == []


# -- FASTA ------------------------------------------------------------------------------


def wrapped(seq: str, width: int) -> str:
    return "\n".join(seq[i : i + width] for i in range(0, len(seq), width)) + "\n"


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def replace_with_older_copy(path: Path, text: str, bgzip: bool = False) -> None:
    """What `cp -p old.fa genome.fa` does: new content, an mtime older than the index."""
    if bgzip:
        with bgzf.BgzfWriter(str(path), "wb") as writer:
            writer.write(text.encode())
    else:
        path.write_text(text)
    os.utime(path, ns=(10**18, 10**18))  # 2001: older than any index written today


A = {"chr1": random_dna(1000, 0), "chr2": random_dna(300, 1)}
OLDER_COPIES = {
    "other records": ">chrX desc\n" + wrapped(random_dna(900, 2), 70),
    "same size, records swapped": ">chr2\n" + wrapped(A["chr2"], 60)
    + ">chr1\n" + wrapped(A["chr1"], 60),
    "same size, longer header": ">chr1 a longer description\n" + wrapped(A["chr1"][21:], 60)
    + ">chr2\n" + wrapped(A["chr2"], 60),
}  # fmt: skip


@pytest.mark.parametrize("bgzip", [False, True], ids=["plain", "bgzip"])
@pytest.mark.parametrize("copy", list(OLDER_COPIES))
def test_fasta_replaced_by_an_older_copy_is_reindexed(tmp_path, copy, bgzip):
    path = tmp_path / ("g.fa.gz" if bgzip else "g.fa")
    replace_with_older_copy(path, "".join(f">{n}\n{wrapped(s, 60)}" for n, s in A.items()), bgzip)
    os.utime(path)  # the first version is new; the index is built for it
    assert open_fasta(path, cache_dir=tmp_path / "cache")["chr1"][0:1000] == A["chr1"]
    new = OLDER_COPIES[copy]
    replace_with_older_copy(path, new, bgzip)
    fasta = open_fasta(path, cache_dir=tmp_path / "cache")
    records = [r.split("\n", 1) for r in new.split(">")[1:]]
    for header, body in records:
        name, seq = header.split()[0], body.replace("\n", "")
        assert fasta[name][0 : len(seq)] == seq, "sequence, not header bytes"
    assert list(fasta.keys()) == [h.split()[0] for h, _ in records]


def test_an_index_that_still_matches_is_trusted_whatever_its_age(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(">chr1\n" + wrapped(A["chr1"], 60))
    open_fasta(path, cache_dir=tmp_path)
    fai = Path(f"{path}.fai")
    before = fai.stat()
    os.utime(path, ns=(before.st_mtime_ns + 10**10,) * 2)  # touched: newer than its index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_fasta(path, cache_dir=tmp_path)["chr1"][0:1000] == A["chr1"]
    after = fai.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "not rebuilt"


def test_a_directory_given_as_fasta_is_named_a_directory(tmp_path):
    folder = tmp_path / "genomes"
    folder.mkdir()
    with pytest.raises(FastaError, match=r"genomes is a directory, not a FASTA file"):
        open_fasta(folder, cache_dir=tmp_path / "cache")
    assert listing(tmp_path) == ["genomes"]


def test_block_truncated_bgzip_names_the_fasta(tmp_path):
    text = ">chr1\n" + wrapped(random_dna(200_000, 3), 60)
    whole = tmp_path / "whole.fa.gz"
    with bgzf.BgzfWriter(str(whole), "wb") as writer:
        writer.write(text.encode())
    blocks = list(bgzf.BgzfBlocks(whole.open("rb")))
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(whole.read_bytes()[: blocks[2][0]])  # cut at a block boundary
    with pytest.raises(FastaError) as info:
        open_fasta(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert message.startswith(f"{path} is truncated") and ".tmp" not in message
    assert listing(tmp_path) == ["cut.fa.gz", "whole.fa.gz"], "no index, no temp file"


def suggested_fix(path: Path, cache: Path) -> str:
    """The shell command a FASTA error suggests (between backticks)."""
    with pytest.raises(FastaError) as info:
        open_fasta(path, cache_dir=cache)
    return str(info.value).split("`")[1]


@pytest.mark.skipif(shutil.which("sed") is None, reason="runs the suggested sed")
def test_layout_characters_get_a_fix_that_inserts_no_bases(write_fasta, tmp_path):
    seq = random_dna(150, 4)
    text = f">r\n{seq[:60]}  \n61 {seq[60:120]}\t\n{seq[120:150]}\n"  # GenBank-ish layout
    path = write_fasta("in.fa", text)
    with pytest.raises(FastaError, match="line 2, column 61: invalid character ' '") as info:
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert "remove spaces, tabs and digits" in str(info.value) and "/N/g" not in str(info.value)
    subprocess.run(suggested_fix(path, tmp_path), shell=True, cwd=tmp_path, check=True)
    fixed = open_fasta(tmp_path / "out.fa", cache_dir=tmp_path / "cache")
    assert fixed["r"][0:150] == seq and len(fixed["r"]) == 150, "layout removed, no N inserted"


@pytest.mark.skipif(shutil.which("sed") is None, reason="runs the suggested sed")
def test_the_general_fix_maps_only_non_layout_characters_to_n(write_fasta, tmp_path):
    path = write_fasta("in.fa", ">r\nACGT-ACGT 12\nAC*T\n")
    with pytest.raises(FastaError, match=r"column 5: invalid character '-'.*replace or remove"):
        open_fasta(path, cache_dir=tmp_path / "cache")
    subprocess.run(suggested_fix(path, tmp_path), shell=True, cwd=tmp_path, check=True)
    assert (
        open_fasta(tmp_path / "out.fa", cache_dir=tmp_path / "cache")["r"][0:13] == "ACGTNACGTACNT"
    )


def test_a_protein_fasta_is_called_protein(write_fasta, tmp_path):
    path = write_fasta(
        "p.fa", ">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF\n"
    )
    with pytest.raises(FastaError, match=r"p\.fa: record .* this looks like protein, not DNA"):
        open_fasta(path, cache_dir=tmp_path / "cache")
    dna = write_fasta("typo.fa", ">r\nACGTACGTACGTEACGT\n")
    with pytest.raises(FastaError, match="replace or remove") as info:
        open_fasta(dna, cache_dir=tmp_path / "cache")
    assert "looks like protein" not in str(info.value), "one stray letter is not a protein"


STILL_CAUGHT = {
    "empty": ("", r"is empty"),
    "no header": ("ACGT\n", r"line 1 should be a FASTA header"),
    "duplicate": (">a\nAC\n>a\nGT\n", r"record name 'a' appears twice"),
    "no sequence": (">a\n>b\nAC\n", r"record 'a' \(header on line 1\) has no sequence"),
    "ragged lines": (">a\nACGTACGT\nAC\nACGTACGT\n", r"cannot index.*rewrap"),
    "missing": (None, r"FASTA file not found"),
}


@pytest.mark.parametrize("case", list(STILL_CAUGHT))
def test_bad_fasta_that_was_already_caught_still_is(tmp_path, case):
    text, named = STILL_CAUGHT[case]
    path = tmp_path / "in.fa"
    if text is not None:
        path.write_text(text)
    with pytest.raises(FastaError, match=named) as info:
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)
    assert listing(tmp_path) == (["in.fa"] if text is not None else []), "no index left"


def test_truncated_plain_gzip_leaves_no_cache(tmp_path):
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(gzip.compress(b">r\n" + random_dna(20_000, 5).encode() + b"\n")[:-40])
    with pytest.raises(FastaError, match=r"cut\.fa\.gz could not be decompressed"):
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert listing(tmp_path / "cache") == []


# -- tokenizers -------------------------------------------------------------------------


def english_bpe() -> BPETokenizer:
    """A tokenizer with every special token and no DNA vocabulary (lowercase letters)."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(
        vocab_size=80, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return BPETokenizer(tok, "english.json")


def test_a_tokenizer_without_dna_vocabulary_is_refused(lambda_genome, lambda_bpe):
    assert unknown_fraction(lambda_bpe, lambda_genome.fetch("NC_001416.1", 0, 5000)) == 0
    assert unknown_fraction(NucleotideTokenizer(), "ACGTNRY") == 0
    assert check_dna_vocabulary(lambda_bpe, lambda_genome) == 0
    with pytest.raises(TokenizerError) as info:
        check_dna_vocabulary(english_bpe(), lambda_genome)
    message = str(info.value)
    assert "english.json" in message and "encodes 100.0%" in message and "'ACGT'" in message


def test_a_tokenizer_lacking_n_is_refused_on_a_gapped_genome(write_fasta, tmp_path):
    seq = random_dna(6000, 6)
    genome = Genome(write_fasta("gap.fa", f">r\n{seq[:3000]}{'N' * 2000}{seq[3000:]}\n"),
                    cache_dir=tmp_path, max_n_fraction=1.0)  # fmt: skip
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(
        vocab_size=40, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        initial_alphabet=list("ACGT"), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator([seq[:3000]], trainer)
    no_n = BPETokenizer(tok, "no_n.json")
    assert unknown_fraction(no_n, "ACGTNN") == pytest.approx(2 / 6)
    with pytest.raises(TokenizerError, match=r"no_n\.json.* encodes 25\.0%.*lacks: 'N'"):
        check_dna_vocabulary(no_n, genome)


def test_a_vocabulary_larger_than_the_data_can_give_is_refused_at_once(lambda_genome, tmp_path):
    bound = max_bpe_vocab(48_502)
    started = time.perf_counter()
    with pytest.raises(TokenizerError, match=rf"vocab_size=10,000,000 .* at most {bound:,}"):
        train_bpe(lambda_genome, 10_000_000, out=tmp_path / "tok.json")
    assert time.perf_counter() - started < 1 and listing(tmp_path) == []
    with pytest.raises(TokenizerError, match=r"at most 322 .*larger max_bp"):
        train_bpe(lambda_genome, 400, max_bp=20_000)
    assert train_bpe(lambda_genome, bound).vocab_size == bound


# -- sweeps -----------------------------------------------------------------------------

SWEEP_APP = """
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from rmt.cli import user_errors
from rmt.sweep_summary import run_job


def job(cfg):
    if cfg.fail == "user":
        raise ValueError("fail=user: a user error, named")
    if cfg.fail == "bug":
        raise RuntimeError("an unexpected bug")
    return {"eval_loss": 1.5}


@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg):
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors("app"):
        return run_job(lambda: job(cfg), run_dir, "app")


main()
"""
SWEEP_CONFIG = """
fail: none
hydra:
  callbacks:
    summary:
      _target_: rmt.sweep_summary.SummaryCallback
  run:
    dir: {root}/run
  sweep:
    dir: {root}/sweep
    subdir: ${{hydra.job.num}}
"""


def hydra_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "app.py").write_text(SWEEP_APP)
    (tmp_path / "app.yaml").write_text(SWEEP_CONFIG.format(root=tmp_path))
    command = [sys.executable, str(tmp_path / "app.py"), *args]
    env = {k: v for k, v in os.environ.items() if k != "RMT_DEBUG"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = hydra_app(tmp_path, "-m", "fail=none,user,bug,none")
    assert proc.returncode == 1, proc.stderr
    statuses = [json.loads((tmp_path / "sweep" / str(i) / "status.json").read_text())
                for i in range(4)]  # fmt: skip
    assert [s["status"] for s in statuses] == ["finished", "failed", "failed", "finished"]
    assert statuses[1]["error"] == "ValueError: fail=user: a user error, named"
    assert "app: job 1 failed: fail=user: a user error, named" in proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("Traceback") == 1, "only the unexpected bug gets a traceback"
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "Jobs that did not finish (2)" in summary and "job 2 (`fail=bug`) failed" in summary
    assert "2 job(s) did not finish (1, 2)" in proc.stderr


@pytest.mark.slow
def test_a_single_run_user_error_is_one_line_exit_2(tmp_path):
    proc = hydra_app(tmp_path, "fail=user")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "app: error: fail=user: a user error, named" in proc.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {"status": "failed", "error": "ValueError: fail=user: a user error, named"}


def test_the_summary_is_written_whatever_the_job_directories_hold(tmp_path):
    for job, status in [("0", '{"status": "finished", "eval_loss": 1.0}'), ("1", "{cut"),
                        ("2", None)]:  # fmt: skip
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        if status is not None:
            (tmp_path / job / "status.json").write_text(status)
    records = summarize(tmp_path)
    assert [r["status"] for r in records] == ["finished", "unreadable", "unfinished"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Jobs that did not finish (2)" in summary and "job 1 (`seed=1`) unreadable" in summary
    assert "status.json" in records[1]["error"]
