"""From the `data` and `tokenizer` options to a Genome and a tokenizer.

Shared by rmt-train and rmt-tokenizer so both see exactly the same training sequence:
every configured FASTA minus the held-out evaluation regions. This is the data
package's boundary with the apps: its errors name its own parameters (`max_n_fraction=`),
and `option_section` turns them into the config keys (`data.max_n_fraction=`) here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data import Genome, Region, bundled_genome, load_tokenizer, open_fasta, parse_region, train_bpe
from data.tokenizers import DNATokenizer
from data.vocab_checks import check_dna_vocabulary
from rmt.option_errors import option_section
from rmt.option_groups import DataOptions, TokenizerOptions


def resolve_fasta(paths: str | Sequence[str]) -> list[str]:
    """FASTA paths from the config; `bundled:NAME` names a genome shipped with the package."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    if not paths:
        raise ValueError(
            "data.fasta is empty: give one or more FASTA paths, e.g. data.fasta='[genome.fa.gz]'"
        )
    return [
        str(bundled_genome(p.split(":", 1)[1])) if p.startswith("bundled:") else p for p in paths
    ]


def heldout_regions(data: DataOptions) -> list[Region]:
    """The evaluation regions: `data.eval_regions` when given, else the last
    `data.eval_fraction` of every record (so any FASTA gets a held-out set by default)."""
    lengths: dict[str, int] = {}
    with option_section("data", DataOptions):
        for path in resolve_fasta(data.fasta):
            fasta = open_fasta(path, cache_dir=data.cache_dir)
            lengths.update({name: len(record) for name, record in fasta.records.items()})
        if data.eval_regions is not None:
            return [parse_region(r, lengths) for r in data.eval_regions]
    held = [(name, int(n * data.eval_fraction)) for name, n in lengths.items()]
    return [Region(name, lengths[name] - k, lengths[name]) for name, k in held if k > 0]


def make_genome(data: DataOptions, heldout: list[Region]) -> Genome:
    """The training genome: every configured FASTA minus held-out and excluded regions."""
    with option_section("data", DataOptions):
        return Genome(
            resolve_fasta(data.fasta),
            weights=list(data.weights) if data.weights is not None else None,
            record_weights=dict(data.record_weights) if data.record_weights else None,
            exclude=[*heldout, *data.exclude],
            max_n_fraction=data.max_n_fraction,
            cache_dir=data.cache_dir,
        )


def hf_tokenizer(directory: str | Path, key: str) -> DNATokenizer:
    """The tokenizer.json saved beside a Hugging Face model (`key` names where the
    directory was given): its ids are the rows of the model's embeddings."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"{key}={str(directory)!r} has no tokenizer.json ({path}): save the model's "
            "tokenizer there as a Hugging Face tokenizer.json with the special tokens [CLS] "
            "[SEP] [PAD] [MASK] [UNK] (tokenizer.save_pretrained writes one)"
        )
    return load_tokenizer(path)


def make_tokenizer(
    tokenizer: TokenizerOptions, genome: Genome, run_dir: Path, hf: str | None = None
) -> DNATokenizer:
    """The configured tokenizer, or the one of the HF model in `hf` (`model.hf`), or a
    BPE trained on the training genome (once per run)."""
    with option_section("tokenizer", TokenizerOptions):
        if tokenizer.path is not None or hf is not None:  # not made from this data: check it
            path = tokenizer.path
            loaded = load_tokenizer(path) if path is not None else hf_tokenizer(hf, "model.hf")
            check_dna_vocabulary(loaded, genome)
            return loaded
        trained = run_dir / "tokenizer.json"
        if trained.is_file():
            return load_tokenizer(trained)
        return train_bpe(genome, tokenizer.vocab_size, out=trained, max_bp=tokenizer.max_bp)
