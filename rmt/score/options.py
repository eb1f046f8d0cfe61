"""rmt-score's typed options: one dataclass per node of conf/score.yaml, keys as in the YAML.

Registered in Hydra's ConfigStore as ``score_schema`` (conf/score.yaml lists it first), so
Hydra rejects unknown keys and wrong types before the app starts; ``__post_init__``
checks ranges and choices and names the full key and the fix. ``main()`` converts once
with ``score_options``; scripts may build a ``ScoreOptions`` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kernels import BACKENDS
from rmt.infer.options import PRECISIONS, InferDataOptions
from rmt.option_errors import at_least, check, require, to_options

PROGRAM = "rmt-score"
REQUIRED = ("checkpoint", "variants", "output")
USAGE = f"{PROGRAM} checkpoint=RUN_DIR variants=FILE.vcf[.gz] output=OUT_DIR"
STRANDS = ("plus", "both")
REF_MISMATCH = ("fail", "skip")
# A VCF INFO key (VCF 4.3, section 1.6.1).
INFO_KEY = re.compile(r"^[A-Za-z_][0-9A-Za-z_.]*$")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, value, f"is not one of {', '.join(choices)}; choose one")


@dataclass
class ContextOptions:
    """``context.*``: the reference each allele is read in (rmt/score/alleles.py).

    ``upstream`` and ``block`` default (None) to 8 segments' and 1 segment's worth of bp
    at the tokenizer's bp per token on the reference.
    """

    upstream: int | None = None
    flank: int = 128
    block: int | None = None

    def __post_init__(self) -> None:
        at_least("context.upstream", self.upstream, 0)
        at_least("context.flank", self.flank, 1)
        at_least("context.block", self.block, 1)


@dataclass
class ScoreOptions:
    """The whole of conf/score.yaml (``hydra.*`` aside), in the YAML's order."""

    checkpoint: str = MISSING
    variants: str = MISSING
    output: str = MISSING
    overwrite: bool = False
    data: InferDataOptions = field(default_factory=InferDataOptions)
    context: ContextOptions = field(default_factory=ContextOptions)
    strand: str = "plus"
    ref_mismatch: str = "fail"
    contig_map: Any = None  # None, a {VCF name: FASTA name} dict, or a 2-column TSV's path
    info_key: str = "RMT_LLR"
    batch_size: int = 32
    save_every: int = 16
    device: str = "auto"
    kernels: str = "auto"
    compile: bool = False
    precision: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        require(REQUIRED, lambda key: getattr(self, key) == MISSING, USAGE)
        _one_of("strand", self.strand, STRANDS)
        _one_of("ref_mismatch", self.ref_mismatch, REF_MISMATCH)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("kernels", self.kernels, tuple(BACKENDS))
        check(bool(INFO_KEY.match(self.info_key)), "info_key", self.info_key,
              "is not a VCF INFO key: use letters, digits, '_' and '.'")  # fmt: skip
        ok_map = self.contig_map is None or isinstance(self.contig_map, (str, dict))
        check(ok_map, "contig_map", self.contig_map,
              "must be a {VCF: FASTA} name map or a 2-column TSV file")  # fmt: skip
        if isinstance(self.contig_map, dict):  # names as strings, as config.json keeps them
            self.contig_map = {str(k): str(v) for k, v in self.contig_map.items()}
        for key in ("batch_size", "save_every", "threads"):  # threads: None = torch's default
            at_least(key, getattr(self, key), 1)

    @property
    def strands(self) -> list[str]:
        """The strands every variant is scored on, '+' first."""
        return ["+", "-"] if self.strand == "both" else ["+"]


def score_options(cfg: DictConfig) -> ScoreOptions:
    """rmt-score's composed config as options; a bad value is a one-line ValueError."""
    require(REQUIRED, lambda key: OmegaConf.is_missing(cfg, key), USAGE)
    return to_options(cfg, ScoreOptions, "score_schema")


ConfigStore.instance().store(name="score_schema", node=ScoreOptions)
