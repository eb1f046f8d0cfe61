"""Planning: the FASTA and regions to read, and the jobs (a stretch on one strand, or a part).

The regions are split around their N runs (``rmt.infer.gaps``: those are not scored) and
the stretches left become jobs. The plan is computed once per output directory and saved
beside the outputs (``plan.json``), because splitting a long stretch into parts
tokenizes it: a resumed run must not plan again, and planning again could only give
the same plan.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data import DNATokenizer, Genome, Region
from data.streaming import StreamPart, TokenStream, plan_parts
from rmt.cli import write_json
from rmt.data_config import resolve_fasta
from rmt.infer.gaps import sequence_stretches
from rmt.infer.options import InferOptions, StreamOptions

TRAINER_STATE = "trainer_state.pt"


def infer_fasta(configured: list[str] | None, checkpoint: Path) -> list[str]:
    """``data.fasta``, or by default the FASTA the checkpoint's model was trained on."""
    if configured is not None:
        return resolve_fasta(configured)
    trained = training_fasta(checkpoint)
    if trained is None:
        raise ValueError(
            f"data.fasta is not set and {checkpoint} does not record the FASTA its model was "
            f"trained on (no {TRAINER_STATE}): give data.fasta='[genome.fa.gz]'"
        )
    paths = resolve_fasta(trained)
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(
                f"data.fasta defaults to the FASTA {checkpoint} was trained on, {path}, which "
                "is not there (a path relative to where training ran?): give data.fasta="
            )
    return paths


def training_fasta(checkpoint: Path) -> list[str] | None:
    """``data.fasta`` of the training run that wrote ``checkpoint``; None if not recorded.

    Memory-mapped, so the optimizer state beside it is not read.
    """
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    data = state.get("config", {}).get("data", {})
    return data.get("fasta")


@dataclass(frozen=True)
class Job:
    """One stream: a stretch of a region on one strand, or one part of it (``StreamPart``)."""

    chrom: str
    start: int
    end: int
    strand: str
    part: StreamPart

    @property
    def region(self) -> Region:
        return Region(self.chrom, self.start, self.end)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Job:
        return cls(**{**values, "part": StreamPart(**values["part"])})


def resolve_regions(genome: Genome, regions: list[str] | None) -> list[Region]:
    """The configured regions (default: every record) in genome order, without overlaps."""
    if regions is None:
        return [Region(name, 0, length) for name, length in genome.lengths.items()]
    order = {name: i for i, name in enumerate(genome.lengths)}
    resolved = sorted(
        (genome.resolve_region(str(r)) for r in regions), key=lambda r: (order[r.chrom], r.start)
    )
    for a, b in itertools.pairwise(resolved):
        if a.overlaps(b):
            raise ValueError(f"regions {a} and {b} overlap; merge them into one region")
    return resolved


def check_token_embeddings(options: InferOptions, regions: list[Region]) -> None:
    """Per-token rows are d_model values per token: refuse them for large inputs."""
    bp = sum(len(r) for r in regions) * len(options.strands)
    limit = options.embeddings.max_token_bp
    if options.embeddings.tokens and bp > limit:
        raise ValueError(
            f"embeddings.tokens=true would store one row per token for {bp:,} bp; it is meant "
            f"for small regions (embeddings.max_token_bp={limit:,}): "
            "restrict regions, or raise embeddings.max_token_bp"
        )


def open_stream(
    stream: StreamOptions,
    genome: Genome,
    tokenizer: DNATokenizer,
    job: Job,
    state: dict | None = None,
) -> TokenStream:
    """The job's token stream with the configured chunk and margin (from ``state``: resumed)."""
    return TokenStream(
        genome, job.region, job.strand, tokenizer, stream.chunk_bp, stream.margin_bp,
        origin=job.part.origin, state=state,
    )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """The configured regions and the jobs that score them (N runs left out)."""

    regions: list[Region]
    jobs: list[Job]

    @property
    def region_bp(self) -> int:
        """bp of the configured regions, each base once."""
        return sum(len(r) for r in self.regions)

    @property
    def scored_bp(self) -> int:
        """bp scored on each strand: the regions less their N runs."""
        return sum(end - start for _, start, end in {(j.chrom, j.start, j.end) for j in self.jobs})

    def to_dict(self) -> dict:
        return {
            "regions": [asdict(r) for r in self.regions],
            "jobs": [j.to_dict() for j in self.jobs],
        }

    @classmethod
    def from_dict(cls, values: dict) -> Plan:
        regions = [Region(**r) for r in values["regions"]]
        return cls(regions, [Job.from_dict(j) for j in values["jobs"]])


def plan_jobs(
    options: InferOptions, genome: Genome, tokenizer: DNATokenizer, segment_tokens: int
) -> Plan:
    """Jobs in genome order: stretch, then strand, then part (long stretches split P ways)."""
    p = options.parallel
    regions = resolve_regions(genome, options.regions)
    jobs = []
    for stretch in (s for region in regions for s in sequence_stretches(genome, region)):
        for strand in options.strands:
            whole = Job(stretch.chrom, stretch.start, stretch.end, strand, StreamPart())
            parts = [whole.part]
            if p.streams > 1 and len(stretch) >= p.min_bp:
                stream = open_stream(options.stream, genome, tokenizer, whole)
                parts = plan_parts(stream, p.streams, segment_tokens, p.burn_in)
            jobs += [Job(stretch.chrom, stretch.start, stretch.end, strand, part) for part in parts]
    if not jobs:
        raise ValueError(
            f"regions {', '.join(map(str, regions))} hold only N: there is nothing to score; "
            "choose regions with sequence"
        )
    return Plan(regions, jobs)


def load_plan(
    path: Path, options: InferOptions, genome: Genome, tokenizer: DNATokenizer, segment_tokens: int
) -> Plan:
    """The plan saved at ``path``, or planned now and saved there."""
    if path.exists():
        saved = json.loads(path.read_text())
        if "regions" not in saved:
            raise ValueError(
                f"{path} was written by an older rmt-infer (its plan has no regions): rerun "
                "with overwrite=true, or finish it with the version that started it"
            )
        return Plan.from_dict(saved)
    plan = plan_jobs(options, genome, tokenizer, segment_tokens)
    write_json(path, plan.to_dict())
    return plan
