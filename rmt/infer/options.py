"""rmt-infer's typed options: one dataclass per node of conf/infer.yaml, keys as in the YAML.

The schema is registered in Hydra's ConfigStore as ``infer_schema`` (conf/infer.yaml lists
it first in its defaults), so Hydra rejects unknown keys (``+key=...`` included) and
wrong types before the app starts; ``__post_init__`` checks ranges and choices and names
the full key and the fix. ``main()`` converts once with ``infer_options``; engine code
receives these objects only. Scripts may build an ``InferOptions`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kernels import BACKENDS
from rmt.option_errors import at_least, check, require, to_options
from rmt.option_groups import HFOptions

PROGRAM = "rmt-infer"
REQUIRED = ("checkpoint", "output")
USAGE = f"{PROGRAM} checkpoint=RUN_DIR output=OUT_DIR"
STRANDS = ("+", "-", "both")
PRECISIONS = ("auto", "fp32", "bf16")
STORE_DTYPES = ("float16", "float32")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, value, f"is not one of {', '.join(choices)}; choose one")


def _as_list(value: Any) -> list[str] | None:
    """A YAML list, or one bare string as users write it on the command line."""
    return None if value is None else [value] if isinstance(value, str) else list(value)


@dataclass
class InferDataOptions:
    """``data.*``: the FASTA files (None: the training run's), where .gz is decompressed."""

    fasta: Any = None  # a list, one string, or None for the FASTA the model was trained on
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.fasta = _as_list(self.fasta)


@dataclass
class ParallelOptions:
    """``parallel.*``: long regions split into parts, each warmed up ``burn_in`` segments;
    the jobs divided into ``shards``, each run in batch slots of its own (what a rank of
    a torchrun takes), so the outputs depend on the shards and never on the ranks."""

    streams: int = 8
    min_bp: int = 400_000
    burn_in: int = 4
    shards: int = 1

    def __post_init__(self) -> None:
        at_least("parallel.streams", self.streams, 1)
        at_least("parallel.min_bp", self.min_bp, 0)
        at_least("parallel.burn_in", self.burn_in, 0)
        at_least("parallel.shards", self.shards, 1)


@dataclass
class StreamOptions:
    """``stream.*``: the streaming tokenizer's chunk and margin."""

    chunk_bp: int = 8192
    margin_bp: int = 256

    def __post_init__(self) -> None:
        at_least("stream.chunk_bp", self.chunk_bp, 1)
        at_least("stream.margin_bp", self.margin_bp, 0)


@dataclass
class TracksOptions:
    """``tracks.*``: 0 = the unmasked track only; k = also the k-pass masked track."""

    masked_stride: int = 0

    def __post_init__(self) -> None:
        at_least("tracks.masked_stride", self.masked_stride, 0)


@dataclass
class EmbeddingsOptions:
    """``embeddings.*``: the store's row dtype, and per-token rows for small inputs."""

    dtype: str = "float16"
    tokens: bool = False
    max_token_bp: int = 1_000_000

    def __post_init__(self) -> None:
        _one_of("embeddings.dtype", self.dtype, STORE_DTYPES)
        at_least("embeddings.max_token_bp", self.max_token_bp, 0)


@dataclass
class InferOptions:
    """The whole of conf/infer.yaml (``hydra.*`` aside), in the YAML's order."""

    checkpoint: str = MISSING
    output: str = MISSING
    overwrite: bool = False
    data: InferDataOptions = field(default_factory=InferDataOptions)
    regions: Any = None  # null, a list of regions, or one region string
    strand: str = "+"
    batch_size: int = 8
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    stream: StreamOptions = field(default_factory=StreamOptions)
    tracks: TracksOptions = field(default_factory=TracksOptions)
    embeddings: EmbeddingsOptions = field(default_factory=EmbeddingsOptions)
    # how `checkpoint` is wrapped when it is a bare Hugging Face encoder directory
    hf: HFOptions = field(default_factory=HFOptions)
    save_every: int = 32
    device: str = "auto"
    kernels: str = "auto"
    compile: bool = False
    precision: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        require(REQUIRED, lambda key: getattr(self, key) == MISSING, USAGE)
        self.regions = _as_list(self.regions)
        check(self.regions != [], "regions", self.regions,
              "is empty; give at least one region, or null for every record")  # fmt: skip
        _one_of("strand", self.strand, STRANDS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("kernels", self.kernels, tuple(BACKENDS))
        for key in ("batch_size", "save_every", "threads"):  # threads: None = torch's default
            at_least(key, getattr(self, key), 1)

    @property
    def strands(self) -> list[str]:
        """The strands every region is read on, '+' first."""
        return ["+", "-"] if self.strand == "both" else [self.strand]


def infer_options(cfg: DictConfig) -> InferOptions:
    """rmt-infer's composed config as options; a bad value is a one-line ValueError."""
    require(REQUIRED, lambda key: OmegaConf.is_missing(cfg, key), USAGE)
    return to_options(cfg, InferOptions, "infer_schema")


ConfigStore.instance().store(name="infer_schema", node=InferOptions)
