"""From the `data` and `tokenizer` config groups to a Genome and a tokenizer.

Shared by rmt-train and rmt-tokenizer so both see exactly the same training sequence:
every configured FASTA minus the held-out evaluation regions.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data import Genome, Region, bundled_genome, load_tokenizer, open_fasta, parse_region, train_bpe
from data.tokenizers import DNATokenizer


def resolve_fasta(paths) -> list[str]:
    """FASTA paths from the config; `bundled:NAME` names a genome shipped with the package."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    if not paths:
        raise ValueError(
            "data.fasta is empty: give one or more FASTA paths, e.g. data.fasta='[genome.fa.gz]'"
        )
    return [
        str(bundled_genome(p.split(":", 1)[1])) if p.startswith("bundled:") else p for p in paths
    ]


def heldout_regions(data: DictConfig) -> list[Region]:
    """The evaluation regions: `data.eval_regions` when given, else the last
    `data.eval_fraction` of every record (so any FASTA gets a held-out set by default)."""
    lengths: dict[str, int] = {}
    for path in resolve_fasta(OmegaConf.to_container(data.fasta)):
        fasta = open_fasta(path, cache_dir=data.cache_dir)
        lengths.update({name: len(record) for name, record in fasta.records.items()})
    if data.eval_regions is not None:
        return [parse_region(r, lengths) for r in data.eval_regions]
    if not 0 <= data.eval_fraction < 1:
        raise ValueError(f"data.eval_fraction={data.eval_fraction} must be in [0, 1)")
    held = [(name, int(n * data.eval_fraction)) for name, n in lengths.items()]
    return [Region(name, lengths[name] - k, lengths[name]) for name, k in held if k > 0]


def make_genome(data: DictConfig, heldout: list[Region]) -> Genome:
    """The training genome: every configured FASTA minus held-out and excluded regions."""
    return Genome(
        resolve_fasta(OmegaConf.to_container(data.fasta)),
        weights=OmegaConf.to_container(data.weights) if data.weights is not None else None,
        record_weights=OmegaConf.to_container(data.record_weights) if data.record_weights else None,
        exclude=[*heldout, *data.exclude],
        max_n_fraction=data.max_n_fraction,
        cache_dir=data.cache_dir,
    )


def make_tokenizer(tokenizer: DictConfig, genome: Genome, run_dir: Path) -> DNATokenizer:
    """The configured tokenizer, or a BPE trained on the training genome (once per run)."""
    if tokenizer.path is not None:
        return load_tokenizer(tokenizer.path)
    trained = run_dir / "tokenizer.json"
    if trained.is_file():
        return load_tokenizer(trained)
    return train_bpe(genome, tokenizer.vocab_size, out=trained, max_bp=tokenizer.max_bp)
