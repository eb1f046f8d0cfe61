"""Command-line mistakes of every app end in exit 2 and one line naming the key and fix.

The config mistakes Hydra finds while composing (wrong type, unknown key, no such group
option, a malformed override) go through `rmt.entry.run_app`; the console scripts and
`python -m` must read the same. rmt-bench without its `bench` extra refuses at once.
Every case is a real subprocess of the installed app, failing before any work starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from benchmarks import report
from benchmarks.report import check_extras
from data import NucleotideTokenizer
from rmt import entry, export, sweep_summary
from rmt.checkpoint import build_runner, save_checkpoint
from rmt.encoder import EncoderConfig
from rmt.install import CONFIG_PATH

pytestmark = pytest.mark.slow  # each test starts an app in a subprocess

BIN = Path(sys.executable).parent
PY = [sys.executable, "-m"]
INT = "expected an integer"


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RMT_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        command, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def the_error(proc: subprocess.CompletedProcess, program: str) -> str:
    """The one error line (asserting exit 2, no traceback, nothing else but the hint)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "set RMT_DEBUG=1" not in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{program}: error: ")
    return lines[0].removeprefix(f"{program}: error: ")


TRAIN, INFER, TOKENIZER, BENCH = "rmt-train", "rmt-infer", "rmt-tokenizer", "rmt-bench"
FINETUNE, SCORE = "rmt-finetune", "rmt-score"
CASES = {
    "wrong type": (TRAIN, ["memory.memory_tokens=abc"], f"memory.memory_tokens=abc: {INT}"),
    "wrong type, --cfg job": (
        TRAIN, ["--cfg", "job", "trainer.lr=fast"], "trainer.lr=fast: expected a number",
    ),
    "not a bool": (TRAIN, ["trainer.progress=maybe"], "trainer.progress=maybe: expected true"),
    "unknown key": (
        TRAIN, ["memory.num_tokens=4"],
        "unknown key memory.num_tokens; did you mean memory.memory_tokens?",
    ),
    "unknown key, multirun": (
        TRAIN, ["-m", "memory.num_tokens=4", "seed=1,2"], "did you mean memory.memory_tokens?",
    ),
    "unknown top-level key": (TRAIN, ["memroy.x=1"], "unknown key memroy; did you mean memory?"),
    "no such group option": (
        TRAIN, ["model=huge"],
        "model=huge: no such option in model/; choose one of base, dnafm, dnafm_7b",
    ),
    "a value for a group": (TRAIN, ["memory=3"], "takes the name of one of its options"),
    "malformed override": (TRAIN, ["trainer.lr=[1"], "cannot parse the override 'trainer.lr=[1'"),
    "no equals sign": (TRAIN, ["trainer"], "cannot parse the override 'trainer': write key=value"),
    "rmt-infer": (INFER, ["strnd=both"], "unknown key strnd; did you mean strand?"),
    "rmt-score": (SCORE, ["strnd=both"], "unknown key strnd; did you mean strand?"),
    "rmt-tokenizer": (TOKENIZER, ["tokenizer.vocab_size=big"], f"tokenizer.vocab_size=big: {INT}"),
    "rmt-bench": (BENCH, ["batch_size=two"], f"batch_size=two: {INT}"),
    "rmt-finetune": (FINETUNE, ["task=sequence_clasification"],
                     "task=sequence_clasification: no such option in task/"),
    "rmt-finetune, no task": (FINETUNE, ["checkpoint=x"], "You must specify 'task'"),
}  # fmt: skip
ENTRIES = {
    TRAIN: entry.train, INFER: entry.infer, TOKENIZER: entry.tokenizer, BENCH: entry.bench,
    FINETUNE: entry.finetune, SCORE: entry.score,
}  # fmt: skip


def in_process(program: str, args: list[str], capsys, monkeypatch) -> str:
    """Run the app's console entry in this process (Hydra composes for real); its error."""
    monkeypatch.setattr(sys, "argv", [program, *args])
    with pytest.raises(SystemExit) as exit_:
        ENTRIES[program]()
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, exit_.value.code, captured.out, captured.err)
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # given back
    return the_error(proc, program)


@pytest.mark.parametrize("case", CASES)
def test_a_config_mistake_is_one_line_naming_the_key(case, capsys, monkeypatch, tmp_path):
    program, args, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    assert expected in in_process(program, args, capsys, monkeypatch)
    assert list(tmp_path.iterdir()) == []  # it failed before a run directory was made


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("memory:\n  num_tokens: 3", "unknown key memory.num_tokens in experiment/mine.yaml; "
         "did you mean memory.memory_tokens?"),
        ("memory:\n  memory_tokens: lots",
         f"memory.memory_tokens=lots in experiment/mine.yaml: {INT}"),
    ],
    ids=["unknown key", "wrong type"],
)  # fmt: skip
def test_a_mistake_in_a_users_config_file_names_the_file(
    body, expected, capsys, monkeypatch, tmp_path
):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(f"# @package _global_\n{body}\n")
    args = ["--config-dir", str(tmp_path), "experiment=mine", "--cfg", "job"]
    assert in_process(TRAIN, args, capsys, monkeypatch) == expected


def causal_checkpoint(directory: Path) -> Path:
    """A tiny untrained decoder RMT (model.causal=true), as rmt-train task=clm saves one."""
    config = EncoderConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=2, causal=True)
    runner = build_runner(config, {"memory_tokens": 2, "segment_tokens": 16}, kernels="torch")
    return save_checkpoint(directory, runner, NucleotideTokenizer())


def finetune_data(directory: Path) -> str:
    rows = "".join(f"{'ACGTTGCA' * 8},{label}\n" for label in "ab")
    (directory / "train.csv").write_text("sequence,label\n" + rows)
    return f"data.train={directory / 'train.csv'}"


MASKED_LM_APPS = {
    INFER: lambda ckpt, tmp: [f"checkpoint={ckpt}", f"output={tmp / 'out'}"],
    SCORE: lambda ckpt, tmp: [f"checkpoint={ckpt}", f"variants={tmp / 'v.vcf'}",
                              f"output={tmp / 'out'}"],
    FINETUNE: lambda ckpt, tmp: [f"checkpoint={ckpt}", "task=sequence_classification",
                                 finetune_data(tmp), f"hydra.run.dir={tmp / 'run'}"],
    "rmt-export": lambda ckpt, tmp: [str(ckpt), str(tmp / "out")],
}  # fmt: skip


@pytest.mark.parametrize("program", MASKED_LM_APPS)
def test_the_masked_lm_apps_refuse_a_causal_checkpoint(program, capsys, monkeypatch, tmp_path):
    ckpt = causal_checkpoint(tmp_path / "clm")
    monkeypatch.chdir(tmp_path)
    args = MASKED_LM_APPS[program](ckpt, tmp_path)
    if program == "rmt-export":
        with pytest.raises(SystemExit) as exit_:
            export.main(args)
        captured = capsys.readouterr()
        proc = subprocess.CompletedProcess(args, exit_.value.code, captured.out, captured.err)
        error, given = the_error(proc, program), str(ckpt)
    else:
        error, given = in_process(program, args, capsys, monkeypatch), f"checkpoint={ckpt}"
    assert error == (
        f"{given} holds a causal model (model.causal=true, trained with task=clm): {program} "
        "needs a masked-LM encoder; sample from it with rmt-generate"
    )
    assert not (tmp_path / "out").exists()  # refused before any output


SCRIPTS = [
    [str(BIN / TRAIN), "memory.num_tokens=4"],
    [*PY, "rmt.train", "memory.num_tokens=4"],
    [str(BIN / INFER), "strnd=both"],
    [str(BIN / TOKENIZER), "tokenizer.vocab_sise=8"],
    [str(BIN / BENCH), "model=huge"],
]


@pytest.mark.parametrize("command", SCRIPTS, ids=lambda c: Path(c[0]).name + "-" + c[-1])
def test_console_scripts_and_python_m_report_the_same(command, tmp_path):
    program = TRAIN if command[:2] == PY else Path(command[0]).name
    error = the_error(run(command, tmp_path), program)
    assert error.startswith(("unknown key", "model=huge: no such option"))
    models = "base, dnafm, dnafm_7b, gena_base, genos_medium, genos_small, small, tiny"
    assert "did you mean" in error or f"choose one of {models}" in error


SUMMARIES = {"rmt-sweep-summary": sweep_summary.main, "rmt-bench-summary": report.main}


@pytest.mark.parametrize("program", SUMMARIES)
def test_the_summary_apps_name_what_is_wrong(program, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        SUMMARIES[program]([str(tmp_path / "nowhere")])
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess([], exit_.value.code, captured.out, captured.err)
    assert the_error(proc, program) == f"no sweep directory at {tmp_path / 'nowhere'}"
    with pytest.raises(SystemExit) as exit_:  # argparse's own: its usage line, then the error
        SUMMARIES[program](["--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{program}: error: ")


def test_rmt_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("RMT_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", [TRAIN, "model=huge"])
    with pytest.raises(ValueError, match="model=huge: no such option") as raised:
        entry.train()
    assert isinstance(raised.value.__cause__, MissingConfigException)  # Hydra's own, chained


def test_help_and_cfg_job_still_work(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [TRAIN, "--cfg", "job", "memory.memory_tokens=4"])
    entry.train()
    assert "memory_tokens: 4" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [INFER, "--help"])
    with pytest.raises(SystemExit) as exit_:
        entry.infer()
    assert exit_.value.code == 0 and "checkpoint: ???" in capsys.readouterr().out


MISSING = [["transformers"], ["matplotlib"], ["matplotlib", "transformers"]]


@pytest.mark.parametrize("missing", MISSING)
def test_rmt_bench_without_its_extra_refuses_at_once(missing, capsys, monkeypatch, tmp_path):
    """Simulated as missing: None in sys.modules, so find_spec reports it not installed."""
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    error = in_process(BENCH, [f"hydra.run.dir={tmp_path}"], capsys, monkeypatch)
    assert "pip install 'rmt-dna[bench]'" in error
    assert all(f"{name} (for " in error for name in missing)
    assert ("leave bert_infer, bert_train out of methods" in error) == (missing == ["transformers"])
    assert not (tmp_path / "points.jsonl").exists()  # nothing was measured


def test_rmt_bench_without_transformers_in_a_fresh_process(tmp_path):
    code = (
        "import sys\nsys.modules['transformers'] = None\n"
        "sys.argv = ['rmt-bench', 'hydra.run.dir=run']\n"
        "from rmt.entry import bench\nbench()\n"
    )
    error = the_error(run([sys.executable, "-c", code], tmp_path), BENCH)
    assert error.startswith("transformers (for bert_infer, bert_train) not installed")


def test_only_what_the_methods_need_is_required(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setattr(sys, "argv", [BENCH, "--cfg", "job", "methods=[rmt_infer]"])
    entry.bench()  # composes; main, where the check is, would run the benchmark
    check_extras(["rmt_infer", "whole_train"])  # no bert method: transformers not needed
    with pytest.raises(ValueError, match="transformers"):
        check_extras(["bert_train"])


TOY_APP = """
import os, subprocess, sys
import hydra
from rmt.entry import run_app
CHILD = "import os; print(os.environ.get('HYDRA_FULL_ERROR'))"


@hydra.main(config_path=".", config_name="toy", version_base="1.3")
def main(cfg):
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    print(f"job {cfg.x}: task={os.environ.get('HYDRA_FULL_ERROR')} child={child.stdout.strip()}")
    if cfg.fail:
        raise RuntimeError("a bug in the task")


run_app(main, "toy")
"""
TOY_CONFIG = """
x: 1
fail: false
hydra:
  callbacks:
    composed:
      _target_: rmt.entry.ComposedCallback
  run: {dir: run}
  sweep: {dir: sweep}
"""


@pytest.fixture
def toy_app(tmp_path: Path) -> list[str]:
    (tmp_path / "toy.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    return [sys.executable, str(tmp_path / "toy.py")]


def test_the_task_and_its_children_never_see_hydra_full_error(toy_app, tmp_path):
    sweep = run([*toy_app, "-m", "x=1,2"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    assert "job 1: task=None child=None" in sweep.stdout
    assert "job 2: task=None child=None" in sweep.stdout


def test_a_bug_in_the_task_keeps_hydras_report(toy_app, tmp_path):
    proc = run([*toy_app, "fail=true"], tmp_path, HYDRA_FULL_ERROR="0")
    assert "job 1: task=0 child=0" in proc.stdout  # a user's own value is given back
    assert proc.returncode == 1
    assert "RuntimeError: a bug in the task" in proc.stderr
    assert "HYDRA_FULL_ERROR=1 for a complete stack trace" in proc.stderr


@pytest.mark.parametrize("app", ["train", "infer", "tokenizer", "bench"])
def test_every_app_restores_the_variable_first(app):
    """The callback that gives HYDRA_FULL_ERROR back comes before any other callback."""
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        overrides = ["checkpoint=x", "output=y"] if app == "infer" else []
        cfg = compose(app, overrides=overrides, return_hydra_config=True)
    callbacks = list(cfg.hydra.callbacks.values())
    assert callbacks[0]["_target_"] == "rmt.entry.ComposedCallback"
