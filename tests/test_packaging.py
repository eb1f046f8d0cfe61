"""The installed distribution finds its own files, whatever the working directory holds.

A user's own `data/`, `conf/`, `kernels.py`, ... must not replace this distribution's
packages (`python -m` puts the working directory first on sys.path): the apps stop at
import with one line naming the file and the fix. The configs are found by absolute
path from the installed package, so the apps run from an empty directory.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

import conf
from rmt.install import CONFIG_DIR, CONFIG_PATH, ROOT

pytestmark = pytest.mark.slow  # each test starts an app in a subprocess

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command as a user would: no RMT_DEBUG, no PYTHONPATH unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("RMT_DEBUG", "PYTHONPATH")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_refusal(result: subprocess.CompletedProcess, culprit: Path, fix: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"rmt-dna: error: {culprit.resolve()} shadows rmt-dna's `")
    assert fix in lines[0]


@pytest.mark.parametrize(
    ("package", "culprit"),
    [("data", "data/__init__.py"), ("conf", "conf/__init__.py"), ("kernels", "kernels.py")],
)
def test_python_m_refuses_a_package_in_the_working_directory(
    tmp_path: Path, package: str, culprit: str
) -> None:
    shadow = tmp_path / culprit
    shadow.parent.mkdir(parents=True, exist_ok=True)
    shadow.write_text("raise RuntimeError('the user package was imported')\n")
    result = run([sys.executable, "-m", "rmt.train", "--cfg", "job"], cwd=tmp_path)
    assert_one_line_refusal(result, shadow, "`torchrun --no-python ... rmt-train`")
    assert f"rmt-dna's `{package}` package ({ROOT / package})" in result.stderr
    assert "the user package was imported" not in result.stderr


def test_a_conf_directory_of_yaml_files_is_never_read(tmp_path: Path) -> None:
    """A user's own Hydra configs in `conf/` (no __init__.py): a namespace directory.

    A wheel's `conf` package on sys.path wins over it and ours is read; an editable
    install's packages come after sys.path, so it would win, and is refused.
    """
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("seed: 123\n")
    result = run([sys.executable, "-m", "rmt.train", "--cfg", "job"], cwd=tmp_path)
    site_packages = {Path(p).resolve() for p in site.getsitepackages()}
    if ROOT not in site_packages:  # an editable install (or a bare checkout)
        assert_one_line_refusal(result, tmp_path / "conf", "run from another directory")
    else:
        assert result.returncode == 0, result.stderr
        assert "seed: 0" in result.stdout


def test_console_scripts_refuse_a_package_on_pythonpath(tmp_path: Path) -> None:
    """rmt-bench goes through rmt, so even `benchmarks` itself is checked first."""
    (tmp_path / "lib" / "benchmarks").mkdir(parents=True)
    shadow = tmp_path / "lib" / "benchmarks" / "__init__.py"
    shadow.write_text("")
    result = run([str(BIN / "rmt-bench"), "--cfg", "job"], tmp_path, pythonpath=tmp_path / "lib")
    assert_one_line_refusal(result, shadow, "take its directory off PYTHONPATH")


def test_configs_are_found_by_absolute_path(tmp_path: Path) -> None:
    assert Path(CONFIG_PATH).is_absolute()
    assert Path(conf.__file__).resolve().parent == CONFIG_DIR
    assert (CONFIG_DIR / "train.yaml").is_file()
    search = run([str(BIN / "rmt-infer"), "--info", "searchpath"], cwd=tmp_path)
    assert search.returncode == 0, search.stderr
    assert f"file://{CONFIG_PATH} " in search.stdout
    assert "pkg://conf" not in search.stdout


@pytest.mark.parametrize(
    ("app", "override", "expected"),
    [
        ("rmt-train", "model=small", "d_model: 512"),
        ("rmt-infer", "batch_size=3", "batch_size: 3"),
        ("rmt-score", "batch_size=3", "batch_size: 3"),
        ("rmt-bench", "batch_size=3", "batch_size: 3"),
        ("rmt-tokenizer", "tokenizer.vocab_size=300", "vocab_size: 300"),
        ("rmt-finetune", "task=token_classification", "kind: token_classification"),
    ],
)
def test_every_app_composes_its_config_from_an_empty_directory(
    tmp_path: Path, app: str, override: str, expected: str
) -> None:
    """Nothing of the checkout is on sys.path there: the configs (and the schemas the
    YAML defaults name) must come with the app itself, not from `import conf`."""
    job = run([str(BIN / app), "--cfg", "job", override], cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert expected in job.stdout
    assert list(tmp_path.iterdir()) == []
