"""Package boundaries: the public names exist and data never imports the model packages."""

from __future__ import annotations

import subprocess
import sys

import data

PUBLIC = [
    "FastaError",
    "Region",
    "parse_region",
    "clean_sequence",
    "open_fasta",
    "Genome",
    "Window",
    "reverse_complement",
    "Encoding",
    "DNATokenizer",
    "BPETokenizer",
    "NucleotideTokenizer",
    "TokenizerError",
    "load_tokenizer",
    "train_bpe",
    "SPECIAL_TOKENS",
    "mask_tokens",
    "Batch",
    "MLMBatches",
    "bundled_genome",
]


def test_public_names_are_exported() -> None:
    missing = [name for name in PUBLIC if not hasattr(data, name)]
    assert missing == []
    assert set(PUBLIC) <= set(data.__all__)


def test_data_does_not_import_model_packages() -> None:
    code = (
        "import sys, data, data.batches, data.tokenizers, data.genome, data.masking\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rmt', 'kernels', 'curriculum'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
