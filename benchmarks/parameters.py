"""Encoder parameters of each model config, total and active per position (README table).

    python -m benchmarks.parameters                      # every conf/model/*.yaml
    python -m benchmarks.parameters genos_small --vocab 128

Counts come from `benchmarks.measure.parameter_counts` (tested against the modules) on
the composed rmt-train config, without the MLM head. The vocabulary is the tokenizer's,
which a model config does not fix: `--vocab`, else 16 for the character-token DNA FM
configs, 32,000 for gena_base (GENA-LM's BPE) and rmt-train's 512 for the rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_module

from benchmarks.measure import parameter_counts
from rmt.encoder import EncoderConfig
from rmt.install import CONFIG_PATH
from rmt.options import train_options

VOCAB = {"dnafm": 16, "dnafm_7b": 16, "gena_base": 32_000}


def counts(model: str, vocab: int | None = None) -> tuple[int, int, int]:
    """(vocabulary, total, active) of `model=<model>`'s encoder."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        options = train_options(compose("train", [f"model={model}"]))
    vocab = vocab or VOCAB.get(model, options.tokenizer.vocab_size)
    config = EncoderConfig(**options.model.encoder_fields(), vocab_size=vocab)
    return (vocab, *parameter_counts(config))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="conf/model names (default: all)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size")
    args = parser.parse_args(argv)
    models = args.models or sorted(p.stem for p in (Path(CONFIG_PATH) / "model").glob("*.yaml"))
    print("| model | vocabulary | total | active |\n|---|---:|---:|---:|")
    for model in models:
        vocab, total, active = counts(model, args.vocab)
        print(f"| {model} | {vocab:,} | {total / 1e6:.2f}M | {active / 1e6:.2f}M |")


if __name__ == "__main__":
    main()
