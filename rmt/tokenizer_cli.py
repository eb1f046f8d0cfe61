"""rmt-tokenizer: train a DNA BPE tokenizer with HF `tokenizers` (a Hydra app).

    rmt-tokenizer data.fasta='[genome1.fa.gz,genome2.fa]'
                  tokenizer.vocab_size=4096 tokenizer.out=tok.json

Trains on the same sequence rmt-train would (held-out regions excluded) and writes a
standard `tokenizer.json` with the special tokens [UNK] [CLS] [SEP] [PAD] [MASK].
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data import train_bpe
from rmt.cli import user_errors
from rmt.data_config import heldout_regions, make_genome
from rmt.install import CONFIG_PATH
from rmt.options import BPEOptions, TokenizerAppOptions, option_section, tokenizer_options


def build_tokenizer(options: TokenizerAppOptions) -> dict:
    """Train and save the tokenizer; returns a summary (vocab, bp/token on held-out data)."""
    heldout = heldout_regions(options.data)
    genome = make_genome(options.data, heldout)
    start = time.perf_counter()
    bpe = options.tokenizer
    out = Path(bpe.out)
    with option_section("tokenizer", BPEOptions):
        tokenizer = train_bpe(genome, bpe.vocab_size, out=out, max_bp=bpe.max_bp)
    summary = {
        "out": str(out),
        "vocab_size": tokenizer.vocab_size,
        "train_s": time.perf_counter() - start,
    }
    if heldout:
        region = heldout[0]
        sample = genome.fetch(region.chrom, region.start, min(region.end, region.start + 200_000))
        summary["heldout_bp_per_token"] = tokenizer.bp_per_token(sample)
    return summary


@hydra.main(config_path=CONFIG_PATH, config_name="tokenizer", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors("rmt-tokenizer"):
        summary = build_tokenizer(tokenizer_options(cfg))
        details = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
        )
        print(f"rmt-tokenizer: wrote {summary['out']} ({details})")
        return summary


if __name__ == "__main__":
    from rmt.entry import run_app  # config mistakes: one line, exit 2, as rmt-tokenizer

    run_app(main, "rmt-tokenizer")
