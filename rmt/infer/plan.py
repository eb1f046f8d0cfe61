"""Planning: the FASTA and regions to read, and the jobs (a stretch on one strand, or a part).

The regions are split around their N runs (``rmt.infer.gaps``: those are not scored) and
the stretches left become jobs. The plan is computed once per output directory and saved
beside the outputs (``plan.json``), because splitting a long stretch into parts
tokenizes it: a resumed run must not plan again, and planning again could only give
the same plan.

The jobs are divided into ``parallel.shards`` shards, balanced by bp. A shard streams its
jobs through batch slots of its own, so each of its steps is the same batch wherever it
runs: one process runs every shard in turn, the ranks of a torchrun divide them, and the
outputs are the same bytes. (Dividing jobs among ranks directly would change which
segments share a batch, and a segment padded beside a longer one does not get the same
bits as alone.)
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
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


def job_bp(jobs: list[Job]) -> list[int]:
    """Each job's bp: its stretch's, shared evenly among the stretch's parts on its strand
    (parts start at even fractions of its bp), so a stretch's parts sum to its bp."""
    parts, seen, bp = Counter((j.chrom, j.start, j.strand) for j in jobs), Counter(), []
    for job in jobs:
        key = (job.chrom, job.start, job.strand)
        i, n, length = seen[key], parts[key], job.end - job.start
        seen[key] += 1
        bp.append(length * (i + 1) // n - length * i // n)
    return bp


def balance(weights: list[int], bins: int) -> list[list[int]]:
    """Indices of ``weights`` in ``bins`` bins of near-equal sums, each bin's in order.

    Heaviest first into the lightest bin (ties: the lower index), so the result depends
    on the weights and ``bins`` alone.
    """
    loads, members = [0] * bins, [[] for _ in range(bins)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        lightest = min(range(bins), key=lambda b: (loads[b], b))
        loads[lightest] += weights[i]
        members[lightest].append(i)
    return [sorted(m) for m in members]


@dataclass(frozen=True)
class Plan:
    """The configured regions, the jobs that score them (N runs left out), and the
    shards: the jobs' indices, divided."""

    regions: list[Region]
    jobs: list[Job]
    shards: list[list[int]]

    @property
    def region_bp(self) -> int:
        """bp of the configured regions, each base once."""
        return sum(len(r) for r in self.regions)

    @property
    def scored_bp(self) -> int:
        """bp scored on each strand: the regions less their N runs."""
        return sum(end - start for _, start, end in {(j.chrom, j.start, j.end) for j in self.jobs})

    def shard_bp(self) -> list[int]:
        """bp each shard emits (estimated for a shard with some parts of a stretch only)."""
        bp = job_bp(self.jobs)
        return [sum(bp[i] for i in shard) for shard in self.shards]

    def to_dict(self) -> dict:
        return {
            "regions": [asdict(r) for r in self.regions],
            "jobs": [j.to_dict() for j in self.jobs],
            "shards": self.shards,
        }

    @classmethod
    def from_dict(cls, values: dict) -> Plan:
        regions = [Region(**r) for r in values["regions"]]
        return cls(regions, [Job.from_dict(j) for j in values["jobs"]], values["shards"])


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
    return Plan(regions, jobs, balance(job_bp(jobs), p.shards))


def load_plan(
    path: Path, options: InferOptions, genome: Genome, tokenizer: DNATokenizer, segment_tokens: int
) -> Plan:
    """The plan saved at ``path``, or planned now and saved there."""
    if path.exists():
        saved = json.loads(path.read_text())
        missing = [key for key in ("regions", "shards") if key not in saved]
        if missing:
            raise ValueError(
                f"{path} was written by an older rmt-infer (its plan has no {missing[0]}): "
                "rerun with overwrite=true, or finish it with the version that started it"
            )
        return Plan.from_dict(saved)
    plan = plan_jobs(options, genome, tokenizer, segment_tokens)
    write_json(path, plan.to_dict())
    return plan
