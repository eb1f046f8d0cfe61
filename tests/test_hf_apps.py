"""rmt-train, rmt-finetune and rmt-infer started from a local Hugging Face encoder directory.

Offline: a tiny BertForMaskedLM (GENA-LM's architecture; tests/test_hf_encoder.py's
config) and a BPE trained on phage lambda are saved with save_pretrained as a user's
GENA-LM directory, and one BertModel without an MLM head beside it. The apps run
in-process on configs composed as their main() composes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fast_config import FAST_TRAIN
from test_finetune import FAST_FINETUNE, species_rows, splits
from test_hf_encoder import bert_config, with_specials
from test_infer import LAMBDA, bedgraph, infer, overrides
from test_train import compose_config, options, read_metrics
from transformers import BertForMaskedLM, BertModel

from data import BPETokenizer, Genome
from rmt import load_model
from rmt.api import Embed
from rmt.finetune import finetune
from rmt.finetune_options import finetune_options
from rmt.hf_runner import hf_runner, is_hf_encoder_dir
from rmt.loop import TrainLoop
from rmt.train import build, train

# FAST_TRAIN's shape keys (model.d_model=64, ...) stay: with model.hf they are ignored.
HF_TRAIN = [*FAST_TRAIN, "trainer.memory_gain=false", "trainer.tensorboard=false"]
MEMORY_TOKENS, MAX_POSITIONS = 4, 64  # FAST_TRAIN's memory; bert_config's positions


@pytest.fixture(scope="session")
def lambda_tokenizer(lambda_genome: Genome) -> BPETokenizer:
    return BPETokenizer.train([lambda_genome.fetch(LAMBDA, 0, 20_000)], vocab_size=64)


def save_model(model, path: Path, tokenizer: BPETokenizer) -> Path:
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    return path


@pytest.fixture(scope="session")
def gena_dir(tmp_path_factory, lambda_tokenizer: BPETokenizer) -> Path:
    """A GENA-LM-like directory: BertForMaskedLM weights, config.json, tokenizer.json.

    The MLM head is made far from its initial values, so a head not loaded shows."""
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config(lambda_tokenizer.vocab_size))
    with torch.no_grad():
        for p in model.cls.parameters():
            p.normal_(0.0, 0.5)
    return save_model(model, tmp_path_factory.mktemp("gena"), lambda_tokenizer)


@pytest.fixture(scope="session")
def encoder_only_dir(tmp_path_factory, lambda_tokenizer: BPETokenizer) -> Path:
    """A BertModel saved without any MLM head."""
    torch.manual_seed(1)
    model = BertModel(bert_config(lambda_tokenizer.vocab_size))
    return save_model(model, tmp_path_factory.mktemp("encoder"), lambda_tokenizer)


@pytest.fixture(scope="session")
def hf_run(tmp_path_factory, gena_dir: Path) -> tuple[Path, torch.nn.Module]:
    """rmt-train model.hf=<a copy of gena_dir>, 6 steps at 1 then 2 segments with memory;
    the copy is deleted afterwards, so what uses the run does without the HF directory."""
    root = tmp_path_factory.mktemp("hf-run")
    copy, run_dir = shutil.copytree(gena_dir, root / "gena"), root / "run"
    run = build(options([*HF_TRAIN, f"model.hf={copy}"]), run_dir)
    try:
        TrainLoop(run).run_to_end()
    finally:
        run.sink.close()
    shutil.rmtree(copy)
    return run_dir, run.runner.eval()


def test_the_runner_starts_from_the_directorys_encoder_and_mlm_head(gena_dir, lambda_tokenizer):
    runner = hf_runner(gena_dir, lambda_tokenizer, {"memory_tokens": 0, "segment_tokens": 16})
    bert = BertForMaskedLM.from_pretrained(gena_dir, local_files_only=True).eval()
    ids = torch.as_tensor(lambda_tokenizer.encode("GATTACACCGT" * 12).ids[:16])[None]
    with torch.no_grad():
        logits = runner.head(runner.eval()(ids, return_hidden=True).hidden)
        want = bert(input_ids=with_specials(ids, lambda_tokenizer)).logits[:, 1:-1]
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    assert runner.head.decoder.weight is runner.encoder.embed_tokens.weight  # tied
    assert runner.head.norm.eps == bert.config.layer_norm_eps == 1e-12


@pytest.mark.parametrize("memory_tokens, longest", [(0, MAX_POSITIONS - 2), (4, 64 - 4 - 3)])
def test_an_unset_segment_length_is_the_longest_the_positions_hold(
    gena_dir, lambda_tokenizer, memory_tokens, longest
):
    config = {"memory_tokens": memory_tokens, "segment_tokens": None}
    assert hf_runner(gena_dir, lambda_tokenizer, config).segment_tokens == longest


def test_a_directory_is_a_bare_encoder_only_without_this_projects_format(
    gena_dir, hf_run, tmp_path
):
    run_dir, _ = hf_run
    assert is_hf_encoder_dir(gena_dir)
    assert not is_hf_encoder_dir(run_dir / "checkpoints" / "step-00000006")  # has "format"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rmt-dna"}))  # rmt-export
    assert not is_hf_encoder_dir(tmp_path) and not is_hf_encoder_dir(tmp_path / "nowhere")


def test_train_continues_the_encoder_with_memory_and_its_checkpoint_loads_without_it(hf_run):
    run_dir, trained = hf_run
    steps = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert [r["segments"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert all(len(r["segment_losses"]) == r["segments"] for r in steps)
    config = json.loads((run_dir / "checkpoints" / "step-00000006" / "config.json").read_text())
    assert config["encoder"]["hf"]["model_type"] == "bert"
    assert config["encoder"]["layout"] == "cls_mem_sep" and config["encoder"]["d_model"] == 32
    runner, tokenizer = load_model(run_dir)  # the HF directory is gone (hf_run)
    assert (runner.memory_tokens, runner.segment_tokens) == (MEMORY_TOKENS, 32)
    ids = torch.as_tensor(tokenizer.encode("ACGTTGCAAT" * 30).ids[:64])[None]  # 2 segments
    with torch.no_grad():
        got, want = runner(ids, return_hidden=True), trained(ids, return_hidden=True)
        torch.testing.assert_close(got.hidden, want.hidden, atol=0, rtol=0)
        torch.testing.assert_close(got.memory, want.memory, atol=0, rtol=0)
        assert runner.head.norm.eps == trained.head.norm.eps == 1e-12  # BERT's, not torch's
        torch.testing.assert_close(
            runner.head(got.hidden), trained.head(want.hidden), atol=0, rtol=0
        )


def test_resume_continues_the_same_loss_trajectory_from_the_moved_directory(
    hf_run, gena_dir, tmp_path
):
    """Killed after its step-3 checkpoint, resumed with model.hf at another path (the
    copy it was trained from is gone): the losses of the uninterrupted run."""
    straight, killed = hf_run[0], tmp_path / "killed"
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000006")
    (killed / "checkpoints" / "latest").write_text("step-00000003\n")
    (killed / "eval.json").unlink()
    train(options([*HF_TRAIN, f"model.hf={gena_dir}"]), killed)
    want = [r for r in read_metrics(straight) if r["split"] == "train"]
    got = [r for r in read_metrics(killed) if r["split"] == "train"]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)


@pytest.mark.parametrize(
    "overrides, differs",
    [
        (["model.hf=GENA", "model.layout=mem"], "model.layout='cls_mem_sep' (this run: 'mem')"),
        (["tokenizer.path=GENA/tokenizer.json"], "model.hf='"),  # this project's encoder
    ],
)  # fmt: skip
def test_resume_refuses_another_encoder(hf_run, gena_dir, tmp_path, overrides, differs):
    run_dir = shutil.copytree(hf_run[0], tmp_path / "run")
    overrides = [o.replace("GENA", str(gena_dir)) for o in overrides]
    with pytest.raises(
        ValueError, match=r"^cannot resume from .*step-00000006: it was trained with"
    ) as error:
        train(options([*HF_TRAIN, *overrides]), run_dir)
    assert differs in str(error.value)


def finetune_run(run_dir: Path, checkpoint: Path, genomes, *overrides: str) -> dict:
    data = splits(run_dir.parent, species_rows(genomes), sizes=(8, 4, 4))
    composed = compose_config(
        "finetune",
        [f"checkpoint={checkpoint}", "task=sequence_classification", *FAST_FINETUNE, *data,
         *overrides],
    )  # fmt: skip
    return finetune(finetune_options(composed), run_dir)


def test_finetune_gives_a_bare_encoder_new_memory_and_tests_it(
    gena_dir, lambda_genome, ecoli_genome, tmp_path
):
    genomes = (lambda_genome, ecoli_genome)
    result = finetune_run(tmp_path / "run", gena_dir, genomes, "freeze=encoder")
    report = json.loads((tmp_path / "run" / "test.json").read_text())
    assert report["examples"] == 4 and set(report["memory"]) >= {"carried", "reset"}
    assert result["test_accuracy"] == report["memory"]["carried"]["accuracy"]
    runner, _ = load_model(tmp_path / "run" / "checkpoints" / "best")
    # conf/memory/default.yaml's 8 memory tokens; the longest segment 64 positions hold
    assert (runner.memory_tokens, runner.segment_tokens) == (8, 64 - 8 - 3)
    assert runner.head is None and runner.task_head.config()["kind"] == "classification"
    # The frozen encoder is the directory's, weight for weight.
    pretrained = BertModel.from_pretrained(gena_dir, local_files_only=True).state_dict()
    for name, weight in runner.encoder.model.state_dict().items():
        torch.testing.assert_close(weight, pretrained[name], atol=0, rtol=0)


def test_finetune_keeps_a_checkpoints_memory_size(hf_run, lambda_genome, ecoli_genome, tmp_path):
    message = r"^memory.memory_tokens=8 differs from the 4 memory tokens .* leave it null"
    with pytest.raises(ValueError, match=message):
        genomes = (lambda_genome, ecoli_genome)
        finetune_run(tmp_path / "run", hf_run[0], genomes, "memory.memory_tokens=8")


def test_infer_runs_a_bare_encoder_segment_by_segment_without_memory(
    gena_dir, lambda_tokenizer, lambda_genome, fasta_cache_dir, tmp_path
):
    region, longest = f"regions=[{LAMBDA}:1-3000]", MAX_POSITIONS - 2  # [CLS] ... [SEP]
    args = overrides(gena_dir, tmp_path, fasta_cache_dir, region, "embeddings.dtype=float32")
    summary = infer(*args)
    ids = torch.as_tensor(lambda_tokenizer.encode(lambda_genome.fetch(LAMBDA, 0, 3000)).ids)
    assert summary["segments"] == -(-len(ids) // longest)
    first = with_specials(ids[:longest][None], lambda_tokenizer)
    bert = BertForMaskedLM.from_pretrained(gena_dir, local_files_only=True).eval()
    with torch.no_grad():  # the first segment: exactly the HF model's own outputs
        out = bert(input_ids=first, output_hidden_states=True)
        hidden = out.hidden_states[-1][0, 1:-1]
        logprob = out.logits[0, 1:-1].log_softmax(-1).gather(-1, ids[:longest, None])[:, 0]
    rows = bedgraph(tmp_path / "logprob.plus.bedGraph")[:longest]
    per_token = [v * (e - s) for _, s, e, v in rows]
    np.testing.assert_allclose(per_token, logprob.numpy(), rtol=1e-4, atol=1e-4)
    with h5py.File(tmp_path / "embeddings.h5") as store:
        segments = store["segments"]
        assert segments["memory"].shape == (summary["segments"], 0, 32)
        assert store.attrs["memory_tokens"] == 0 and store.attrs["segment_tokens"] == longest
        got = segments["embedding"][0]
    np.testing.assert_allclose(got, hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert infer(*args) == summary  # the same directory: done already, nothing rerun
    with pytest.raises(ValueError, match=r"differs in: config\.hf\.layout\)"):
        infer(*args, "hf.layout=mem")


def test_infer_writes_embeddings_only_for_an_encoder_without_an_mlm_head(
    encoder_only_dir, fasta_cache_dir, tmp_path
):
    args = overrides(
        encoder_only_dir, tmp_path / "out", fasta_cache_dir, f"regions=[{LAMBDA}:1-2000]"
    )
    with pytest.raises(
        ValueError, match=r"^tracks.masked_stride=2 needs an MLM head and the model in"
    ):
        infer(*args, "tracks.masked_stride=2")
    assert not (tmp_path / "out").exists()
    summary = infer(*args)
    assert summary["outputs"] == ["embeddings.h5"] and summary["tokens"] > 0


def without_tokenizer(gena_dir: Path, tmp_path: Path) -> Path:
    copy = shutil.copytree(gena_dir, tmp_path / "no-tokenizer")
    (copy / "tokenizer.json").unlink()
    return copy


def test_model_hf_that_is_not_a_model_directory_is_one_line_naming_the_key(tmp_path):
    message = r"^model.hf='.*' is not a Hugging Face encoder: .* \(no config.json\); give the"
    with pytest.raises(ValueError, match=message) as error:
        options([*HF_TRAIN, f"model.hf={tmp_path}"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hf=NO_TOKENIZER"], r"^model.hf='.*no-tokenizer' has no tokenizer.json \("),
        (["model.hf=GENA", "memory.segment_tokens=60"],
         r"^memory.segment_tokens=60 does not fit the encoder's positions beside 4 memory "
         r"tokens and its special tokens; use at most 57$"),
    ],
)  # fmt: skip
def test_train_refuses_what_the_directory_cannot_run(gena_dir, tmp_path, overrides, message):
    no_tokenizer = str(without_tokenizer(gena_dir, tmp_path))
    overrides = [o.replace("NO_TOKENIZER", no_tokenizer) for o in overrides]
    overrides = [o.replace("GENA", str(gena_dir)) for o in overrides]
    with pytest.raises(ValueError, match=message):
        train(options([*HF_TRAIN, *overrides]), tmp_path / "run")


def test_finetune_and_infer_name_a_missing_tokenizer(
    gena_dir, lambda_genome, ecoli_genome, fasta_cache_dir, tmp_path
):
    copy = without_tokenizer(gena_dir, tmp_path)
    message = r"^checkpoint='.*no-tokenizer' has no tokenizer.json .* \[CLS\] \[SEP\] \[PAD\]"
    with pytest.raises(ValueError, match=message):
        finetune_run(tmp_path / "run", copy, (lambda_genome, ecoli_genome))
    with pytest.raises(ValueError, match=message):
        infer(*overrides(copy, tmp_path / "out", fasta_cache_dir))


def test_infer_streams_a_model_trained_from_an_hf_encoder(hf_run, fasta_cache_dir, tmp_path):
    summary = infer(*overrides(hf_run[0], tmp_path, fasta_cache_dir, f"regions=[{LAMBDA}:1-3000]"))
    assert "logprob.plus.bw" in summary["outputs"]  # the HF directory is gone (hf_run)
    with h5py.File(tmp_path / "embeddings.h5") as store:
        memory = store["segments"]["memory"][:]
    assert memory.shape == (summary["segments"], MEMORY_TOKENS, 32) and np.isfinite(memory).all()


def test_a_model_saved_in_bf16_is_trained_in_fp32(lambda_tokenizer, tmp_path):
    """The runner's memory and heads are fp32; so are the weights training updates."""
    model = BertForMaskedLM(bert_config(lambda_tokenizer.vocab_size)).to(torch.bfloat16)
    runner = hf_runner(
        save_model(model, tmp_path, lambda_tokenizer), lambda_tokenizer,
        {"memory_tokens": MEMORY_TOKENS, "segment_tokens": 16},
    )  # fmt: skip
    assert {p.dtype for p in runner.parameters()} == {torch.float32}
    ids = torch.as_tensor(lambda_tokenizer.encode("GATTACACCGT" * 12).ids[:32])[None]
    runner(ids, labels=ids).loss.backward()
    assert runner.memory.weight.grad.abs().sum() > 0


def test_embed_reads_a_bare_hf_directory_without_memory(encoder_only_dir, lambda_tokenizer):
    """rmt.api: GENA-LM-style embeddings of a long sequence straight from the HF directory."""
    embed = Embed.from_pretrained(encoder_only_dir, tokens=True)
    assert embed.runner.memory_tokens == 0 and embed.runner.head is None
    seq = "GATTACACCGT" * 60  # several of the longest segments its positions hold
    ids = torch.as_tensor(lambda_tokenizer.encode(seq).ids)
    s = embed.runner.segment_tokens
    assert len(ids) > 2 * s
    bert = BertModel.from_pretrained(encoder_only_dir, local_files_only=True).eval()
    with torch.no_grad():
        want = bert(input_ids=with_specials(ids[s : 2 * s][None], lambda_tokenizer))
    got = embed.predict([seq]).tokens[0][s : 2 * s]  # the second segment, on its own
    np.testing.assert_allclose(got, want.last_hidden_state[0, 1:-1].numpy(), atol=1e-5)
