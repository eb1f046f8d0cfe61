"""Shared fixtures for the data-package tests (tests/test_data_*.py), and the Triton mode.

Everything decompressed or indexed goes into a per-session temporary cache, never into
~/.cache, and the bundled E. coli chromosome is decompressed at most once per session.
Nothing is written into the checkout either: `checkout_stays_clean` fails the session
when a test left a new file there (a run directory of an app started without
`hydra.run.dir`, say).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from data import ECOLI_HELDOUT, BPETokenizer, Genome, bundled_genome

# Without a GPU the Triton kernels (tests/test_kernels.py) run under Triton's CPU
# interpreter, which is chosen when a kernel is defined: set it before any test module
# can import kernels.*. `kernels=auto` still resolves to torch on the CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CHECKOUT = Path(__file__).resolve().parents[1]
# What running the tests (or installing the project) writes by design.
OWN_FILES = (".venv", ".pytest_cache", ".ruff_cache", "__pycache__", ".egg-info")


def untracked_files() -> set[str] | None:
    """Every file in the checkout that git does not track, ignored ones included.

    None when the tests do not run from a git checkout (an installed wheel, an sdist).
    """
    if shutil.which("git") is None or not (CHECKOUT / ".git").exists():
        return None
    listing = subprocess.run(
        ["git", "ls-files", "--others", "-z", "--", ".", ":(exclude).venv"],
        cwd=CHECKOUT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {
        path
        for path in listing.split("\0")
        if path and not any(part.endswith(OWN_FILES) for part in Path(path).parts)
    }


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean() -> Iterator[None]:
    """Fail the session if the tests created files in the checkout: they belong in tmp_path.

    Files someone else creates in the checkout while the tests run are reported too.
    """
    before = untracked_files()
    yield
    after = untracked_files()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"the tests created files in the checkout {CHECKOUT}: {new[:10]}"


@pytest.fixture(scope="session", autouse=True)
def fasta_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-wide FASTA cache directory (decompressed bundled genomes live here).

    Also the default cache of everything the tests run, subprocesses included, so a
    test run never writes into ~/.cache.
    """
    cache = tmp_path_factory.mktemp("fasta-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RMT_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def lambda_genome(fasta_cache_dir: Path) -> Genome:
    """The bundled 48,502 bp phage lambda genome (one record, NC_001416.1)."""
    return Genome(bundled_genome("lambda"), cache_dir=fasta_cache_dir)


@pytest.fixture(scope="session")
def ecoli_genome(fasta_cache_dir: Path) -> Genome:
    """The bundled E. coli 536 chromosome with the default held-out region excluded."""
    return Genome(bundled_genome("ecoli"), exclude=[ECOLI_HELDOUT], cache_dir=fasta_cache_dir)


@pytest.fixture(scope="session")
def lambda_bpe(lambda_genome: Genome) -> BPETokenizer:
    """A 512-token BPE trained on the whole lambda genome."""
    return BPETokenizer.train(
        [lambda_genome.fetch("NC_001416.1", 0, lambda_genome.lengths["NC_001416.1"])], 512
    )


@pytest.fixture
def write_fasta(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write FASTA text to ``tmp_path/<name>`` and return the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
