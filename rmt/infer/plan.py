"""Planning: the configured regions as jobs (a region on one strand, or a part of it).

The job list is computed once per output directory and saved beside the outputs
(``plan.json``), because splitting a long region into parts tokenizes it: a resumed run
must not plan again, and planning again could only give the same list.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from data import DNATokenizer, Genome, Region
from data.streaming import StreamPart, TokenStream, plan_parts
from rmt.cli import write_json
from rmt.infer.options import InferOptions, StreamOptions


@dataclass(frozen=True)
class Job:
    """One stream: a region on one strand, or one part of it (``StreamPart``)."""

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


def plan_jobs(
    options: InferOptions, genome: Genome, tokenizer: DNATokenizer, segment_tokens: int
) -> list[Job]:
    """Jobs in genome order: region, then strand, then part (long regions split P ways)."""
    p = options.parallel
    jobs = []
    for region in resolve_regions(genome, options.regions):
        for strand in options.strands:
            whole = Job(region.chrom, region.start, region.end, strand, StreamPart())
            parts = [whole.part]
            if p.streams > 1 and len(region) >= p.min_bp:
                stream = open_stream(options.stream, genome, tokenizer, whole)
                parts = plan_parts(stream, p.streams, segment_tokens, p.burn_in)
            jobs += [Job(region.chrom, region.start, region.end, strand, part) for part in parts]
    return jobs


def load_plan(
    path: Path, options: InferOptions, genome: Genome, tokenizer: DNATokenizer, segment_tokens: int
) -> list[Job]:
    """The job list saved at ``path``, or planned now and saved there."""
    if path.exists():
        return [Job.from_dict(j) for j in json.loads(path.read_text())["jobs"]]
    jobs = plan_jobs(options, genome, tokenizer, segment_tokens)
    write_json(path, {"jobs": [j.to_dict() for j in jobs]})
    return jobs
