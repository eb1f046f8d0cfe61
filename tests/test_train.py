"""Hydra composition, in-process training, checkpoints and the command-line apps."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fast_config import FAST_TRAIN
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from data import bundled_genome, parse_region
from kernels import get_ops
from rmt import load_model
from rmt.options import train_options
from rmt.train import train

# A run small enough for seconds on 2 cores: phage lambda, a narrow model, short segments.


def compose_config(name: str = "train", overrides=()):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def options(overrides=()):
    """The typed options rmt-train's main() hands to `train`."""
    return train_options(compose_config(overrides=overrides))


@pytest.mark.parametrize("model", ["tiny", "small", "base"])
@pytest.mark.parametrize("curriculum", ["short", "doubling", "threshold"])
def test_train_configs_compose(model, curriculum):
    cfg = compose_config(overrides=[f"model={model}", f"curriculum={curriculum}"])
    assert cfg.model.d_model == {"tiny": 256, "small": 512, "base": 768}[model]
    assert cfg.memory.segment_tokens > 0 and cfg.kernels == "auto"
    assert OmegaConf.missing_keys(cfg) == set()


def test_default_config_trains_on_the_bundled_genome_with_a_short_schedule():
    cfg = compose_config()
    assert list(cfg.data.fasta) == ["bundled:ecoli"]
    assert [s["segments"] for s in cfg.curriculum.stages] == [1, 2, 4]
    assert cfg.task.name == "mlm"
    assert bundled_genome("ecoli").is_file()


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_metrics_checkpoints_and_eval(tmp_path):
    result = train(options(FAST_TRAIN), tmp_path)
    records = read_metrics(tmp_path)
    steps = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["segments"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert all(len(r["segment_losses"]) == r["segments"] for r in steps)
    assert all(r["tokens_per_s"] > 0 for r in steps)
    # The share of a step spent waiting for data (prepared ahead in a background thread).
    assert all(0 <= r["data_wait_s"] <= r["step_time_s"] for r in steps)
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # The token budget is constant across stages: 8 one-segment or 4 two-segment samples.
    assert all(r["samples"] * r["segments"] * 32 == 256 for r in steps)
    assert all(r["micro_batches"] == 2 and 0 < r["tokens"] <= 256 for r in steps)
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3]
    transitions = [r for r in records if r["split"] == "curriculum"]
    assert transitions == [
        {"split": "curriculum", "step": 3, "from_stage": 0, "to_stage": 1, "segments": 2,
         "reason": "steps"}
    ]  # fmt: skip
    final = [r for r in records if r["split"] == "final"]
    assert final[0]["eval_loss"] == pytest.approx(result["eval_loss"])
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["final"]["loss"] == pytest.approx(result["eval_loss"])
    assert summary["initial"]["masked_tokens"] > 0
    # The unigram baseline scores the same masked tokens and beats a uniform guess.
    assert 0 < summary["final"]["unigram_loss"] < math.log(256)
    held = parse_region(summary["regions"][0])
    assert held.end == 48502 and held.start == 48502 - 4850
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000003",
        "step-00000006",
    ]


def test_checkpoint_reloads_to_identical_outputs(tmp_path):
    train(options(FAST_TRAIN), tmp_path)
    runner, tokenizer = load_model(tmp_path)
    again, _ = load_model(tmp_path / "checkpoints" / "step-00000006")
    seq = "ACGTTGCA" * 40
    ids = torch.as_tensor(tokenizer.encode(seq).ids)[None]
    with torch.no_grad():
        a, b = runner(ids, return_hidden=True), again(ids, return_hidden=True)
    torch.testing.assert_close(a.hidden, b.hidden, atol=0, rtol=0)
    state = torch.load(
        tmp_path / "checkpoints" / "step-00000006" / "trainer_state.pt", weights_only=False
    )
    assert state["step"] == 6 and runner.segment_tokens == 32 and runner.memory_tokens == 4


def test_a_model_trained_with_triton_kernels_loads_where_they_cannot_run(tmp_path, monkeypatch):
    """The kernel backend belongs to the machine, not the checkpoint."""
    train(options([*FAST_TRAIN, "kernels=torch"]), tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-00000006"
    config = json.loads((ckpt / "config.json").read_text())
    assert "kernels" not in config["encoder"]  # not saved: a constructor argument
    config["encoder"]["kernels"] = "triton"  # as files written before 0.2 had it
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "manifest.json").unlink(missing_ok=True)  # nor had they a manifest
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU without the interpreter
    runner, _ = load_model(ckpt)
    assert runner.encoder.final_norm.ops == get_ops("torch")
    with pytest.raises(ValueError, match="kernels=triton needs a CUDA GPU"):
        load_model(ckpt, kernels="triton")


def test_resume_continues_the_same_loss_trajectory(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(options(FAST_TRAIN), straight)
    # A run killed right after its step-3 checkpoint: the directory as it was then.
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000006")
    (killed / "checkpoints" / "latest").write_text("step-00000003\n")
    (killed / "eval.json").unlink()
    train(options(FAST_TRAIN), killed)
    want = [r for r in read_metrics(straight) if r["split"] == "train"]
    # The records the first run wrote past step 3 were dropped at resume: one trajectory.
    got = [r for r in read_metrics(killed) if r["split"] == "train"]
    assert [(r["step"], r["stage"], r["segments"]) for r in got] == [
        (1, 0, 1), (2, 0, 1), (3, 0, 1), (4, 1, 2), (5, 1, 2), (6, 1, 2),
    ]  # fmt: skip
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    assert [r["split"] for r in read_metrics(killed)].count("final") == 1
    resumed_eval = json.loads((killed / "eval.json").read_text())
    assert resumed_eval == json.loads((straight / "eval.json").read_text())


def test_a_plan_changed_by_an_evaluation_gets_its_own_batch(tmp_path):
    """Step 4's batch is prepared during step 3 for 1 segment; the evaluation after step 3
    moves the curriculum on to 2 segments, so that batch must not be used."""
    overrides = [
        *FAST_TRAIN, "curriculum=threshold", "curriculum.metric=loss",
        "curriculum.higher_is_better=false", "curriculum.target=1000", "curriculum.mix_fraction=0",
        "curriculum.stages=[{segments: 1, steps: 6}, {segments: 2, steps: 3}]",
    ]  # fmt: skip
    train(options(overrides), tmp_path)
    steps = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r["segments"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert [len(r["segment_losses"]) for r in steps] == [1, 1, 1, 2, 2, 2]
    assert all(r["samples"] * r["segments"] * 32 == 256 for r in steps)


def test_truncated_and_replay_modes_train(tmp_path):
    for i, mode in enumerate(["memory.bptt_depth=1", "memory.backprop=replay"]):
        overrides = [*FAST_TRAIN, "curriculum.stages=[{segments: 3, steps: 2}]", mode]
        result = train(options(overrides), tmp_path / str(i))
        assert result["steps"] == 2 and result["eval_loss"] > 0


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_reports_a_missing_fasta_without_a_traceback(tmp_path):
    proc = run_cli(
        "rmt.train", "data.fasta=[nowhere.fa]", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "nowhere.fa" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_reports_a_bad_config_value_by_key(tmp_path):
    proc = run_cli("rmt.train", "model.activation=relu", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.activation" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_rejects_an_unknown_key(tmp_path):
    proc = run_cli("rmt.train", "model.widht=3", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "widht" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tokenizer_cli_trains_a_loadable_bpe(tmp_path):
    out = tmp_path / "tok.json"
    proc = run_cli(
        "rmt.tokenizer_cli",
        "data=lambda",
        "tokenizer.vocab_size=300",
        f"tokenizer.out={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    from data import load_tokenizer

    tokenizer = load_tokenizer(out)
    assert tokenizer.vocab_size == 300
    assert not (tmp_path / ".hydra").exists()
