"""rmt-finetune in-process: each task kind on CSVs of real sequence, best checkpoint,
resume, freezing, and one-line errors (real Hydra composition, a real pre-trained run)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fast_config import FAST_TRAIN
from hydra import compose, initialize_config_module
from safetensors.torch import load_file
from sklearn.metrics import log_loss, mean_squared_error

from data import ECOLI_HELDOUT, Genome, bundled_genome
from data.labelled import LabelledData
from rmt.api import SequenceClassification
from rmt.checkpoint import build_runner, load_model
from rmt.encoder import EncoderConfig
from rmt.finetune import finetune, make_task_head
from rmt.finetune_options import finetune_options
from rmt.options import train_options
from rmt.train import train

FAST_FINETUNE = [
    "curriculum.stages=[{segments: 1, steps: 2}, {segments: 2, steps: 2}]",
    "trainer.tokens_per_step=256",
    "trainer.micro_batch_tokens=128",
    "trainer.warmup_steps=1",
    "trainer.log_every=1",
    "trainer.eval_every=2",
    "trainer.save_every=2",
    "trainer.eval_batch_size=8",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "eval.max_segments=4",
]


def compose_config(name: str, overrides) -> object:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory, fasta_cache_dir: Path) -> Path:
    """A tiny model pre-trained for two steps on phage lambda (once per session)."""
    run_dir = tmp_path_factory.mktemp("pretrained")
    overrides = [*FAST_TRAIN, "trainer.max_steps=2", "trainer.memory_gain=false",
                 "trainer.tensorboard=false"]  # fmt: skip
    train(train_options(compose_config("train", overrides)), run_dir)
    return run_dir


def windows(genome: Genome, count: int, seed: int) -> list[str]:
    """`count` windows of 150-450 bp from `genome`, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [genome.sample_window(int(rng.integers(150, 450)), rng).seq for _ in range(count)]


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def gc(seq: str) -> float:
    return (seq.count("G") + seq.count("C")) / len(seq)


def splits(tmp_path: Path, rows_of, sizes=(16, 6, 6)) -> list[str]:
    """data.train/valid/test overrides of CSVs whose rows `rows_of(count, seed)` gives."""
    header, _ = rows_of(0, 0)
    names = ("train", "valid", "test")
    return [
        f"data.{name}=" + write_csv(tmp_path / f"{name}.csv", header, rows_of(n, seed)[1])
        for seed, (name, n) in enumerate(zip(names, sizes, strict=True))
    ]


@pytest.fixture(scope="session")
def genomes(fasta_cache_dir: Path) -> tuple[Genome, Genome]:
    lam = Genome(bundled_genome("lambda"), cache_dir=fasta_cache_dir)
    ecoli = Genome(bundled_genome("ecoli"), exclude=[ECOLI_HELDOUT], cache_dir=fasta_cache_dir)
    return lam, ecoli


def species_rows(genomes):
    """sequence,label: windows of phage lambda and of E. coli, alternating."""

    def rows(count: int, seed: int):
        half = [windows(g, (count + 1) // 2, seed) for g in genomes]
        out = [[half[i % 2][i // 2], ("lambda", "ecoli")[i % 2]] for i in range(count)]
        return ["sequence", "label"], out

    return rows


def gc_rows(genomes):
    def rows(count: int, seed: int):
        return ["sequence", "label"], [
            [s, f"{gc(s):.4f}"] for s in windows(genomes[0], count, seed)
        ]

    return rows


def strong_base_rows(genomes):
    """sequence,labels: one digit per base, 1 for G or C, 0 for A or T."""

    def rows(count: int, seed: int):
        seqs = windows(genomes[0], count, seed)
        return ["sequence", "labels"], [
            [s, s.translate(str.maketrans("ACGT", "0110"))] for s in seqs
        ]

    return rows


def run(run_dir: Path, pretrained: Path, overrides) -> dict:
    options = [f"checkpoint={pretrained}", *FAST_FINETUNE, *overrides]
    return finetune(finetune_options(compose_config("finetune", options)), run_dir)


def records(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_sequence_classification_keeps_the_best_checkpoint_and_tests_it(
    tmp_path, pretrained, genomes
):
    data = splits(tmp_path, species_rows(genomes))
    result = run(tmp_path / "run", pretrained, ["task=sequence_classification", *data])
    run_dir = tmp_path / "run"
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3, 4]
    evals = records(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]  # the last step is evaluated for best
    # checkpoints/best is the evaluation with the highest MCC (the first of equals).
    trained = evals[1:]
    top = max(range(len(trained)), key=lambda i: (trained[i]["mcc"], -i))
    config = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())
    assert config["best"] == {"metric": "mcc", "value": trained[top]["mcc"],
                              "step": trained[top]["step"]}  # fmt: skip
    assert config["task_head"]["names"] == ["ecoli", "lambda"]
    report = json.loads((run_dir / "test.json").read_text())
    assert report["best"]["step"] == trained[top]["step"] and report["examples"] == 6
    assert set(report["memory"]) == {"carried", "reset", "segment_average"}
    carried = report["memory"]["carried"]
    assert set(carried) >= {"loss", "accuracy", "mcc", "f1_macro", "auroc", "auprc", "f1"}
    assert result["test_accuracy"] == carried["accuracy"] and result["steps"] == 4


def test_sequence_regression_reports_the_best_models_predictions(tmp_path, pretrained, genomes):
    data = splits(tmp_path, gc_rows(genomes))
    overrides = ["task=sequence_regression", "task.pool=mean", *data]
    run(tmp_path / "run", pretrained, overrides)
    report = json.loads((tmp_path / "run" / "test.json").read_text())
    assert report["best"]["metric"] == "pearson" and report["names"] == ["label"]
    # test.json's MSE is the library's on the best checkpoint's own predictions.
    model, tokenizer = load_model(tmp_path / "run" / "checkpoints" / "best")
    rows = read_csv(tmp_path / "test.csv")
    predictions = []
    for row in rows:
        ids = torch.as_tensor(tokenizer.encode(row["sequence"]).ids[: 4 * 32])[None]
        with torch.no_grad():
            out = model(ids, torch.ones_like(ids, dtype=torch.bool), final_head=model.task_head)
        predictions.append(float(out.final_outputs[0, 0]))
    truth = [float(r["label"]) for r in rows]
    mse = report["memory"]["carried"]["mse"]
    assert mse == pytest.approx(mean_squared_error(truth, predictions), rel=1e-4)


def test_token_classification_scores_every_labelled_base(tmp_path, pretrained, genomes):
    data = splits(tmp_path, strong_base_rows(genomes))
    overrides = ["task=token_classification", "eval.max_segments=null", *data]
    result = run(tmp_path / "run", pretrained, overrides)
    report = json.loads((tmp_path / "run" / "test.json").read_text())
    test_bp = sum(len(r["sequence"]) for r in read_csv(tmp_path / "test.csv"))
    carried = report["memory"]["carried"]
    assert carried["bases"] == test_bp and set(report["memory"]) == {"carried", "reset"}
    support = {name: c["support"] for name, c in carried["per_class"].items()}
    assert set(support) == {"0", "1"} and sum(support.values()) == test_bp
    assert report["best"]["metric"] == "f1_macro" and result["test_f1_macro"] >= 0
    train_steps = records(tmp_path / "run", "train")
    assert all(len(r["segment_losses"]) == r["segments"] for r in train_steps)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, pretrained, genomes):
    data = splits(tmp_path, species_rows(genomes))
    overrides = ["task=sequence_classification", *data]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(straight, pretrained, overrides)
    # Killed right after step 2, with checkpoints/best as it was then: the resumed run
    # must know step 2's value, or its first evaluation (step 4) would replace it.
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000004")
    (killed / "checkpoints" / "latest").write_text("step-00000002\n")
    (killed / "test.json").unlink()
    best = json.loads((straight / "checkpoints" / "best" / "config.json").read_text())["best"]
    assert best["step"] == 2  # (seeded: step 4 scores no better on the valid split)
    run(killed, pretrained, overrides)
    final = "checkpoints/step-00000004/model.safetensors"
    want, got = load_file(straight / final), load_file(killed / final)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0, msg=name)
    assert json.loads((killed / "test.json").read_text()) == json.loads(
        (straight / "test.json").read_text()
    )


def test_freeze_encoder_leaves_its_weights_bit_identical(tmp_path, pretrained, genomes):
    data = splits(tmp_path, gc_rows(genomes))
    run(tmp_path / "run", pretrained, ["task=sequence_regression", "freeze=encoder", *data])
    before = load_file(next((pretrained / "checkpoints").glob("step-*")) / "model.safetensors")
    after = load_file(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors")
    encoder = [name for name in after if name.startswith("encoder.")]
    assert encoder and all(torch.equal(after[n], before[n]) for n in encoder)
    assert not torch.equal(after["memory.weight"], before["memory.weight"])


def test_a_linear_probe_trains_only_its_linear_head_and_reloads_through_the_api(
    tmp_path, pretrained, genomes
):
    data = splits(tmp_path, species_rows(genomes))
    overrides = ["task=sequence_classification", "freeze=all", "task.head=linear",
                 "eval.max_segments=null", *data]  # fmt: skip
    run(tmp_path / "run", pretrained, overrides)
    checkpoints = tmp_path / "run" / "checkpoints"
    before = load_file(next((pretrained / "checkpoints").glob("step-*")) / "model.safetensors")
    middle = load_file(checkpoints / "step-00000002" / "model.safetensors")
    after = load_file(checkpoints / "step-00000004" / "model.safetensors")
    head = {name for name in after if name.startswith("task_head.")}
    assert head == {"task_head.linear.weight", "task_head.linear.bias",
                    "task_head.target_mean", "task_head.target_std"}  # fmt: skip
    frozen = after.keys() - head
    assert "memory.weight" in frozen and any(n.startswith("encoder.") for n in frozen)
    assert all(torch.equal(after[n], before[n]) for n in frozen)  # encoder and memory
    assert not torch.equal(after["task_head.linear.weight"], middle["task_head.linear.weight"])
    # The best checkpoint reloads through the API as the same one Linear; its predictions
    # on the test split give test.json's log loss (both read whole sequences, memory carried).
    model = SequenceClassification.from_pretrained(tmp_path / "run")
    assert model.head.config()["head"] == "linear"
    assert [type(m) for m in model.head.children()] == [torch.nn.Linear]
    rows = read_csv(tmp_path / "test.csv")
    got = model.predict([r["sequence"] for r in rows], batch_size=4)
    truth = [model.names.index(r["label"]) for r in rows]
    report = json.loads((tmp_path / "run" / "test.json").read_text())["memory"]["carried"]
    probabilities = got.probabilities.astype(np.float64)
    probabilities /= probabilities.sum(1, keepdims=True)  # fp32 rows sum to 1 within 1e-7
    loss = log_loss(truth, probabilities, labels=[0, 1])
    assert loss == pytest.approx(report["loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=sequence_classification"],
         "checkpoint is not set: give it a value (checkpoint=...)"),
        (["checkpoint=CKPT", "task=sequence_classification", "task.kind=classify"],
         "task.kind='classify' is not a fine-tuning task; choose one of sequence_classification"),
        (["checkpoint=CKPT", "task=sequence_classification", "task.pool=max"],
         "task.pool='max' is not a pooling; choose one of"),
        (["checkpoint=CKPT", "task=token_classification", "task.head=deep"],
         "task.head='deep' is not a task head; choose one of mlp, linear"),
        (["checkpoint=CKPT", "task=sequence_regression", "best_metric=auroc"],
         "best_metric='auroc' is not a sequence_regression metric; choose one of pearson"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_line_naming_the_key(overrides, message, pretrained):
    overrides = [o.replace("CKPT", str(pretrained)) for o in overrides]
    cfg = compose_config("finetune", ["data.train=a.csv", *overrides])
    with pytest.raises(ValueError) as error:
        finetune_options(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_checkpoint_that_is_not_there_is_one_line(tmp_path, genomes):
    data = splits(tmp_path, species_rows(genomes), sizes=(4, 2, 2))
    cfg = compose_config("finetune", [f"checkpoint={tmp_path / 'nowhere'}",
                                      "task=sequence_classification", *data])  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint at .*nowhere: expected"):
        finetune(finetune_options(cfg), tmp_path / "run")


@pytest.mark.slow
def test_cli_reports_a_bad_task_kind_without_a_traceback(tmp_path, pretrained):
    proc = subprocess.run(
        [sys.executable, "-m", "rmt.finetune", f"checkpoint={pretrained}", "task=nope",
         "data.train=a.csv", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "sequence_classification" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("pool", ["memory", "both"])
def test_a_memory_pool_on_a_model_without_memory_is_one_line(pool, lambda_bpe):
    config = EncoderConfig(vocab_size=lambda_bpe.vocab_size, d_model=32, n_layers=1, n_heads=2)
    runner = build_runner(config, {"memory_tokens": 0, "segment_tokens": 8}, kernels="torch")
    data = LabelledData(train=[], valid=[], test=[], classes=["a", "b"], targets=None)
    message = rf"^task.pool={pool} reads the memory, .* use task.pool=mean$"
    with pytest.raises(ValueError, match=message):
        make_task_head("sequence_classification", data, runner, lambda_bpe, pool)
    head = make_task_head("sequence_classification", data, runner, lambda_bpe, "mean")
    assert head.config()["pool"] == "mean"
