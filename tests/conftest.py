"""Shared fixtures for the data-package tests (tests/test_data_*.py), and the Triton mode.

Everything decompressed or indexed goes into a per-session temporary cache, never into
~/.cache, and the bundled E. coli chromosome is decompressed at most once per session.
"""

from __future__ import annotations

import os
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
