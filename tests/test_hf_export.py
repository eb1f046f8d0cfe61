"""This project's models the Hugging Face way (rmt.hf, rmt-export), offline and tiny.

Round trips (save_pretrained -> Auto*.from_pretrained) must give the very same outputs as
the runner itself, for this project's encoder and for a wrapped tiny BertModel; the MLM
head's tie to the embeddings must survive them; an exported run loads with transformers
and with rmt.checkpoint.load_model alike; PEFT (LoRA) and Trainer train the models.

CI runs this module under transformers 5.x (the venv) and 4.57.x (an overlay on
PYTHONPATH); RMT_EXPECT_TRANSFORMERS=<major> makes it insist on the one it expects.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from hydra import compose, initialize_config_module
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertModel,
)

import rmt.hf
from data import BPETokenizer
from data.masking import IGNORE_INDEX
from rmt.checkpoint import build_runner, load_model, mlm_head, save_checkpoint, write_latest
from rmt.encoder import EncoderConfig
from rmt.export import export, hf_model, main
from rmt.heads import SequenceHead, TokenClassificationHead
from rmt.hf import (
    RMTConfig,
    RMTForMaskedLM,
    RMTForTokenClassification,
    RMTModel,
)
from rmt.hf.modeling import TIES_AS_DICT
from rmt.hf_encoder import HFEncoder, hf_encoder_config
from rmt.infer import infer_options, run_inference
from rmt.runner import MemoryRunner
from rmt.token_bases import base_predictions, max_token_bases, token_base_labels

D, MEMORY, SEGMENT, CLASSES = 32, 2, 8, 3
ENCODERS = ("native", "bert")


def test_transformers_version() -> None:
    """The version in use (printed for the CI log), and the tie form it reads."""
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    print(f"transformers {transformers.__version__} from {transformers.__file__}")
    expected = os.environ.get("RMT_EXPECT_TRANSFORMERS")
    if expected is not None:
        assert version[0] == int(expected), f"expected transformers {expected}.x"
    assert (version[0] >= 5) == TIES_AS_DICT


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    rng = random.Random(0)
    return BPETokenizer.train(["".join(rng.choices("ACGT", k=4000))], vocab_size=48)


def perturbed(runner: MemoryRunner) -> MemoryRunner:
    """Every weight (and buffer) moved off its initial value: a dropped one shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in [*runner.parameters(), *runner.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    return runner.eval()


def make_runner(encoder_kind: str, tokenizer: BPETokenizer, task: str = "mlm") -> MemoryRunner:
    """A tiny runner: this project's encoder or a wrapped BertModel; MLM head, or a
    fine-tuned task head without it (as rmt-finetune saves them)."""
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    runner_options = {"memory_tokens": MEMORY, "segment_tokens": SEGMENT}
    if encoder_kind == "native":
        runner = build_runner(
            EncoderConfig(vocab, d_model=D, n_layers=2, n_heads=2), runner_options
        )
    else:
        config = BertConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=2 * D,
                            max_position_embeddings=32, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)  # fmt: skip
        encoder = HFEncoder(BertModel(config), hf_encoder_config(config, tokenizer))
        runner = MemoryRunner(encoder, head=mlm_head(encoder), **runner_options)
    if task != "mlm":
        runner.head = None
        runner.task_head = task_head(task, tokenizer)
    return perturbed(runner)


def task_head(task: str, tokenizer: BPETokenizer) -> torch.nn.Module:
    names = ["exon", "intron", "intergenic"]
    if task == "classification":
        return SequenceHead(D, CLASSES, "classification", pool="both", names=names)
    if task == "regression":
        return SequenceHead(D, 2, "regression", pool="mean", names=["tm", "gc"])
    return TokenClassificationHead(D, CLASSES, max_token_bases(tokenizer), names=names)


def sequences(n: int = 3, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("ACGT", k=rng.randint(120, 260))) for _ in range(n)]


def collate(tokenizer: BPETokenizer, seqs: list[str]):
    """Right-padded ids and mask (b, T) and each sequence's token offsets."""
    encodings = [tokenizer.encode(seq) for seq in seqs]
    width = max(len(enc) for enc in encodings)
    ids = torch.full((len(seqs), width), tokenizer.pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, enc in enumerate(encodings):
        ids[i, : len(enc)], mask[i, : len(enc)] = torch.as_tensor(enc.ids), 1
    # several segments, so memory is carried; more tokens than the BertModel has positions
    assert width > 4 * SEGMENT and width > 32
    return ids, mask, [enc.offsets for enc in encodings]


def round_trip(model, tmp_path, auto_class):
    model.save_pretrained(tmp_path / "hf")
    loaded = auto_class.from_pretrained(tmp_path / "hf")
    assert type(loaded) is type(model)
    return loaded.eval()


@pytest.mark.parametrize("encoder_kind", ENCODERS)
def test_masked_lm_round_trip(encoder_kind, tokenizer, tmp_path) -> None:
    runner = make_runner(encoder_kind, tokenizer)
    ids, mask, _ = collate(tokenizer, sequences())
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    labels = torch.where(chosen & (mask == 1), ids, -100)  # -100: not scored, as in HF
    with torch.no_grad():
        reference = runner.head(runner(ids, mask, return_hidden=True).hidden)
        model = hf_model(runner, tokenizer)
        assert isinstance(model, RMTForMaskedLM)
        before = model(ids, mask, labels=labels)
        loaded = round_trip(model, tmp_path, AutoModelForMaskedLM)
        after = loaded(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(before.logits, reference, rtol=0, atol=0)
    torch.testing.assert_close(after.logits, reference, rtol=0, atol=0)
    scored = labels != -100  # the loss is the mean over labelled tokens only
    expected = F.cross_entropy(reference[scored], labels[scored])
    torch.testing.assert_close(after.loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(after.loss, before.loss)


@pytest.mark.parametrize("encoder_kind", ENCODERS)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sequence_round_trip(encoder_kind, task, tokenizer, tmp_path) -> None:
    runner = make_runner(encoder_kind, tokenizer, task)
    ids, mask, _ = collate(tokenizer, sequences())
    with torch.no_grad():
        reference = runner(ids, mask, final_head=runner.task_head).final_outputs
        loaded = round_trip(
            hf_model(runner, tokenizer), tmp_path, AutoModelForSequenceClassification
        )
        logits = loaded(ids, mask).logits
    # fp32 rounding, not bits: the final head runs on each sample's rows at its last
    # segment in one path and in one batch in the other, and a BLAS may round the two
    # shapes differently (seen on an AVX2 EPYC)
    torch.testing.assert_close(logits, reference, rtol=1e-6, atol=1e-6)
    config = loaded.config
    if task == "classification":
        assert (config.num_labels, config.problem_type) == (CLASSES, "single_label_classification")
        assert config.id2label == {0: "exon", 1: "intron", 2: "intergenic"}
        labels = torch.tensor([0, 2, 1])
        loss = loaded(ids, mask, labels=labels).loss
        torch.testing.assert_close(loss, F.cross_entropy(reference, labels))
    else:  # values in the targets' units: the normalisation buffers came back too
        assert (config.num_labels, config.problem_type) == (2, "regression")
        assert torch.equal(loaded.runner.task_head.target_std, runner.task_head.target_std)


@pytest.mark.parametrize("encoder_kind", ENCODERS)
def test_token_classification_round_trip(encoder_kind, tokenizer, tmp_path) -> None:
    """Per-base logits through the token offsets, and the loss over labelled bases."""
    runner = make_runner(encoder_kind, tokenizer, "token")
    seqs = sequences()
    ids, mask, offsets = collate(tokenizer, seqs)
    bases = runner.task_head.max_token_bases
    labels = torch.full((*ids.shape, bases), IGNORE_INDEX)
    rng = np.random.default_rng(0)
    for i, seq in enumerate(seqs):
        per_base = rng.integers(0, CLASSES, len(seq))
        labels[i, : len(offsets[i])] = torch.as_tensor(
            token_base_labels(offsets[i], per_base, bases)
        )
    with torch.no_grad():
        hidden = runner(ids, mask, return_hidden=True).hidden
        reference = runner.task_head(hidden)
        expected_loss = runner(ids, mask, labels, head=runner.task_head).loss
        loaded = round_trip(hf_model(runner, tokenizer), tmp_path, AutoModelForTokenClassification)
        out = loaded(ids, mask, labels=labels)
    assert out.logits.shape == (*ids.shape, bases, CLASSES)
    for i, seq in enumerate(seqs):
        n = len(offsets[i])
        got = base_predictions(offsets[i], out.logits[i, :n].numpy(), len(seq))
        want = base_predictions(offsets[i], reference[i, :n].numpy(), len(seq))
        np.testing.assert_array_equal(got, want)
    torch.testing.assert_close(out.loss, expected_loss, rtol=0, atol=0)
    assert loaded.config.num_labels == CLASSES


@pytest.mark.parametrize("encoder_kind", ENCODERS)
def test_tie_survives_round_trip(encoder_kind, tokenizer, tmp_path) -> None:
    model = hf_model(make_runner(encoder_kind, tokenizer), tokenizer)
    loaded = round_trip(model, tmp_path, AutoModelForMaskedLM)
    embedding, decoder = loaded.get_input_embeddings().weight, loaded.runner.head.decoder.weight
    assert decoder is embedding and decoder.data_ptr() == embedding.data_ptr()
    with torch.no_grad():
        embedding[3, 0] += 1.0
    assert decoder[3, 0] == embedding[3, 0]
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "runner.head.decoder.weight" not in names  # stored once, as the embedding
    assert any(name.endswith("embed_tokens.weight") or "word_embeddings" in name for name in names)


def test_auto_classes_find_the_models(tokenizer, tmp_path) -> None:
    model = hf_model(make_runner("native", tokenizer), tokenizer)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, RMTConfig) and config.model_type == "rmt-dna"
    assert config.model_config()["runner"]["segment_tokens"] == SEGMENT
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, RMTModel)
    ids, mask, _ = collate(tokenizer, sequences(2))
    out = base(ids, mask)
    assert out.last_hidden_state.shape == (*ids.shape, D)
    assert out.memory.shape == (2, MEMORY, D)
    assert isinstance(base(ids, mask, return_dict=False), tuple)
    with pytest.raises(TypeError, match="output_hidden_states"):
        base(ids, mask, output_hidden_states=True)
    with pytest.raises(ValueError, match="rmt-finetune task=sequence_classification"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_registering_twice_is_harmless() -> None:
    importlib.reload(rmt.hf)
    assert AutoConfig.for_model("rmt-dna").__class__.__name__ == "RMTConfig"


def test_import_rmt_leaves_transformers_out() -> None:
    code = "import sys, rmt; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_labels_follow_the_head(tokenizer, tmp_path) -> None:
    model = hf_model(make_runner("native", tokenizer, "classification"), tokenizer)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"num_labels=5.*3 outputs"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    with pytest.raises(ValueError, match="without its MLM head"):
        AutoModelForMaskedLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not the TokenClassificationHead"):
        RMTForTokenClassification.from_pretrained(tmp_path)


def run_dir(tmp_path, runner: MemoryRunner, tokenizer: BPETokenizer, best=None):
    """A run directory as training leaves it: checkpoints/step-*, latest, and (a
    fine-tuning run) checkpoints/best."""
    run, name = tmp_path / "run", "step-00000002"
    save_checkpoint(run / "checkpoints" / name, runner, tokenizer, metadata={"step": 2})
    write_latest(run / "checkpoints", name, keep=2)
    if best is not None:
        save_checkpoint(run / "checkpoints" / "best", best, tokenizer, metadata={"step": 1})
    return run


@pytest.mark.parametrize("task", ["mlm", "classification"])
def test_export_run_loads_both_ways(task, tokenizer, tmp_path) -> None:
    """A fine-tuning run exports its best model (the one its test.json scores)."""
    runner = make_runner("native", tokenizer, task)
    if task == "mlm":
        run = run_dir(tmp_path, runner, tokenizer)
    else:  # its latest step holds another model (perturbed once more) than its best
        latest = perturbed(make_runner("native", tokenizer, task))
        run = run_dir(tmp_path, latest, tokenizer, best=runner)
    out = export(run, tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "manifest.json"
    }  # fmt: skip
    assert json.loads((out / "config.json").read_text())["format"] == "rmt-dna/1"
    ids, mask, _ = collate(tokenizer, sequences())
    reloaded, reloaded_tokenizer = load_model(out)
    assert reloaded_tokenizer.fingerprint() == tokenizer.fingerprint()
    with torch.no_grad():
        if task == "mlm":
            expected = runner.head(runner(ids, mask, return_hidden=True).hidden)
            via_hf = AutoModelForMaskedLM.from_pretrained(out).eval()(ids, mask).logits
            via_rmt = reloaded.head(reloaded(ids, mask, return_hidden=True).hidden)
        else:
            expected = runner(ids, mask, final_head=runner.task_head).final_outputs
            model = AutoModelForSequenceClassification.from_pretrained(out).eval()
            via_hf = model(ids, mask).logits
            via_rmt = reloaded(ids, mask, final_head=reloaded.task_head).final_outputs
    torch.testing.assert_close(via_hf, expected, rtol=1e-6, atol=1e-6)  # as above
    torch.testing.assert_close(via_rmt, expected, rtol=1e-6, atol=1e-6)


def test_rmt_infer_reads_an_exported_dir(tokenizer, tmp_path, fasta_cache_dir) -> None:
    """checkpoint=OUT: the tracks of the exported model are the checkpoint's, byte for byte."""
    runner = make_runner("native", tokenizer)
    checkpoint = save_checkpoint(tmp_path / "ckpt", runner, tokenizer)
    tracks = {}
    for name, source in (("ckpt", checkpoint), ("hf", export(checkpoint, tmp_path / "hf"))):
        output = tmp_path / f"infer-{name}"
        options = [f"checkpoint={source}", f"output={output}", f"data.cache_dir={fasta_cache_dir}",
                   "data.fasta=[bundled:lambda]", "regions=[NC_001416.1:1001-2000]", "threads=1",
                   "progress=false"]  # fmt: skip
        with initialize_config_module(config_module="conf", version_base="1.3"):
            run_inference(infer_options(compose("infer", options)))
        tracks[name] = (output / "logprob.plus.bedGraph").read_text()
    assert tracks["hf"] == tracks["ckpt"] and tracks["ckpt"].count("\n") > 100


def test_export_refuses_a_non_empty_out_and_leaves_nothing_on_failure(
    tokenizer, tmp_path, capsys
) -> None:
    run = run_dir(tmp_path, make_runner("native", tokenizer), tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), str(out)])
    assert exit_info.value.code == 2
    assert f"{out} already exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # A damaged checkpoint fails the export: no OUT, and no temp directory beside it.
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    before = set(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        export(run, tmp_path / "fresh")
    assert set(tmp_path.iterdir()) == before
    main(
        [
            str(run_dir(tmp_path / "good", make_runner("native", tokenizer), tokenizer)),
            str(out / "x"),
        ]
    )
    assert "rmt-export: wrote" in capsys.readouterr().out


def test_lora_trains_only_adapters(tokenizer) -> None:
    """LoRA on the native encoder's attention (qkv) plus the task head as modules_to_save:
    the loss goes down and no other weight moves."""
    peft = pytest.importorskip("peft")
    model = hf_model(make_runner("native", tokenizer, "classification"), tokenizer)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], modules_to_save=["task_head"])
    model = peft.get_peft_model(model, lora)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids, mask, _ = collate(tokenizer, sequences(4))
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed
    assert any("qkv.lora_" in n for n in changed)


def test_trainer_runs(tokenizer, tmp_path) -> None:
    """HF Trainer: two steps of RMTForSequenceClassification on a tiny dataset."""
    pytest.importorskip("accelerate")  # what Trainer needs (the test extra has it)
    model = hf_model(make_runner("native", tokenizer, "classification"), tokenizer)
    ids, mask, _ = collate(tokenizer, sequences(4))
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(i % CLASSES)}
            for i in range(4)]  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    before = model.runner.task_head.mlp[1].weight.detach().clone()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(np.isfinite(logged))
    assert not torch.equal(model.runner.task_head.mlp[1].weight, before)
