"""rmt-generate's typed options: conf/generate.yaml as one dataclass, keys as in the YAML.

Registered in Hydra's ConfigStore as ``generate_schema`` (conf/generate.yaml lists it
first), so unknown keys and wrong types stop before the app starts; ``__post_init__``
checks ranges and choices and names the key and the fix. Scripts may build a
``GenerateOptions`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kernels import BACKENDS
from rmt.generate.prompt import check_prompt
from rmt.option_errors import at_least, check, require, to_options

PROGRAM = "rmt-generate"
REQUIRED = ("checkpoint", "output")
USAGE = f"{PROGRAM} checkpoint=RUN_DIR output=OUT.fa"
FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class GenerateOptions:
    """The whole of conf/generate.yaml (``hydra.*`` aside), in the YAML's order."""

    checkpoint: str = MISSING
    output: str = MISSING
    prompt: str | None = None
    length: int = 10_000
    batch: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    record_name: str = "generated"
    line_width: int = 60
    summary: str | None = None
    device: str = "auto"
    kernels: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        require(REQUIRED, lambda key: getattr(self, key) == MISSING, USAGE)
        check(Path(self.output).suffix.lower() in FASTA_SUFFIXES, "output", self.output,
              f"is not a FASTA path: end it in {', '.join(FASTA_SUFFIXES)}")  # fmt: skip
        check_prompt(self.prompt)
        for key in ("length", "batch", "line_width", "threads"):  # threads None: torch's
            at_least(key, getattr(self, key), 1)
        for key in ("top_k", "seed"):
            at_least(key, getattr(self, key), 0)
        check(self.temperature >= 0, "temperature", self.temperature,
              "must be >= 0 (0: always the most likely token)")  # fmt: skip
        check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1] (1: off)")
        name = self.record_name
        fasta_name = bool(name) and not name.startswith(">") and not any(map(str.isspace, name))
        check(fasta_name, "record_name", name,
              "must be a FASTA name: not empty, no spaces, no '>'")  # fmt: skip
        check(self.precision in PRECISIONS, "precision", self.precision,
              f"is not one of {', '.join(PRECISIONS)}; choose one")  # fmt: skip
        check(self.kernels in BACKENDS, "kernels", self.kernels,
              f"is not one of {', '.join(BACKENDS)}; choose one")  # fmt: skip

    @property
    def names(self) -> list[str]:
        """The FASTA record names: `record_name` alone, or numbered from 1 for a batch."""
        if self.batch == 1:
            return [self.record_name]
        return [f"{self.record_name}_{i}" for i in range(1, self.batch + 1)]

    @property
    def summary_path(self) -> Path:
        """Where the run's settings and figures go: `summary`, else generate.json beside
        the FASTA."""
        if self.summary is not None:
            return Path(self.summary)
        return Path(self.output).with_name("generate.json")


def generate_options(cfg: DictConfig) -> GenerateOptions:
    """rmt-generate's composed config as options; a bad value is a one-line ValueError."""
    require(REQUIRED, lambda key: OmegaConf.is_missing(cfg, key), USAGE)
    return to_options(cfg, GenerateOptions, "generate_schema")


ConfigStore.instance().store(name="generate_schema", node=GenerateOptions)
