"""rmt-infer: whole-chromosome streaming inference with a trained RMT (a Hydra app).

    rmt-infer checkpoint=runs/x output=out/                      # every record, + strand
    rmt-infer checkpoint=runs/x data.fasta='[genome.fa.gz]' regions='[chr1:1-100000]' \
              strand=both tracks.masked_stride=4 output=out/

Each region is tokenized as it is read (``data.streaming``: token for token what
tokenizing it at once would give) and fed through ``runner.step`` segment by segment,
carrying memory, so peak memory does not depend on its length. Several streams run as one
batch: regions, strands, and ``parallel.streams`` parts of every long region, each part
started ``parallel.burn_in`` segments early with those outputs discarded, so that its
memory is warm when its own sequence begins.

OUT gets per-strand tracks (``logprob.plus.bw``/``.bedGraph``: log p(observed token) from
an unmasked pass; ``masked.*`` with ``tracks.masked_stride=k``: a pseudo-log-likelihood
from k passes, each masking every k-th token), ``embeddings.h5`` (per segment: mean-pooled
hidden state and the memory after it; optionally per token) and ``summary.json``.
Outputs are spooled to ``OUT/spool/`` as they are produced and assembled at the end
(``rmt.writers``). Every ``save_every`` steps a resume state is written atomically; a
killed run rerun with the same command continues from it and ends with byte-identical
outputs. A rerun with a different configuration refuses unless ``overwrite=true``.
"""

from __future__ import annotations

import itertools
import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data import Genome, Region
from data.atomic import atomic_path
from data.streaming import StreamPart, TokenStream, plan_parts
from data.tokenizers import DNATokenizer, Encoding
from rmt.checkpoint import load_model, resolve_checkpoint
from rmt.cli import autocast_dtype, pick_device, user_errors, write_json
from rmt.data_config import resolve_fasta
from rmt.install import CONFIG_PATH
from rmt.runner import MemoryRunner
from rmt.writers import Piece, Spool, segment_dtype, token_dtype, write_store, write_tracks

PROGRAM = "rmt-infer"
CONFIG, PLAN, STATE, SUMMARY, STORE = (
    "config.json", "plan.json", "state.pt", "summary.json", "embeddings.h5"
)  # fmt: skip
SPOOL = "spool"
# Keys that change nothing in the outputs, so a rerun may change them and still resume.
NEUTRAL_KEYS = ("output", "overwrite", "progress", "save_every")


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


# -- configuration and the output directory ------------------------------------------


def check_config(cfg: DictConfig) -> None:
    """Reject bad values with the key at fault, before anything is loaded."""
    for key in ("checkpoint", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise ValueError(f"{key} is required: {PROGRAM} checkpoint=RUN_DIR output=OUT_DIR")
    if cfg.strand not in ("+", "-", "both"):
        raise ValueError(f"strand={cfg.strand!r}; choose +, - or both")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={cfg.precision!r}; choose auto, fp32 or bf16")
    if cfg.embeddings.dtype not in ("float16", "float32"):
        raise ValueError(f"embeddings.dtype={cfg.embeddings.dtype!r}; choose float16 or float32")
    positive = {
        "batch_size": cfg.batch_size,
        "parallel.streams": cfg.parallel.streams,
        "stream.chunk_bp": cfg.stream.chunk_bp,
        "save_every": cfg.save_every,
    }
    at_least_zero = {
        "parallel.burn_in": cfg.parallel.burn_in,
        "parallel.min_bp": cfg.parallel.min_bp,
        "stream.margin_bp": cfg.stream.margin_bp,
        "tracks.masked_stride": cfg.tracks.masked_stride,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}={value} must be >= 1")
    for key, value in at_least_zero.items():
        if value < 0:
            raise ValueError(f"{key}={value} must be >= 0")


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_identity(cfg: DictConfig, checkpoint: Path, fasta: list[str]) -> dict:
    """What the outputs depend on: the config (less neutral keys) and the input files."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in NEUTRAL_KEYS:
        config.pop(key, None)
    return {
        "config": config,
        "checkpoint": _file_identity(checkpoint / "model.safetensors"),
        "fasta": [_file_identity(Path(p)) for p in fasta],
    }


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def prepare_output(out: Path, identity: dict, overwrite: bool) -> None:
    """Claim ``out`` for this configuration: resume the same one, refuse another."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / CONFIG
    if config.exists():
        old = json.loads(config.read_text())
        if old == identity and not overwrite:
            return
        if not overwrite:
            raise ValueError(
                f"{out} holds outputs of a different configuration (differs in: "
                f"{', '.join(_differences(old, identity))}); rerun the same command to resume "
                "it, choose another output directory, or add overwrite=true to start over"
            )
        for name in (CONFIG, PLAN, STATE, SUMMARY, STORE):
            (out / name).unlink(missing_ok=True)
        for track in out.glob("*.*.bedGraph"):
            track.unlink()
        for track in out.glob("*.*.bw"):
            track.unlink()
        shutil.rmtree(out / SPOOL, ignore_errors=True)
    write_json(config, identity)


# -- planning --------------------------------------------------------------------------


def resolve_regions(genome: Genome, regions) -> list[Region]:
    """The configured regions (default: every record) in genome order, without overlaps."""
    if regions is None:
        return [Region(name, 0, length) for name, length in genome.lengths.items()]
    regions = [regions] if isinstance(regions, str) else regions
    order = {name: i for i, name in enumerate(genome.lengths)}
    resolved = sorted(
        (genome.resolve_region(str(r)) for r in regions), key=lambda r: (order[r.chrom], r.start)
    )
    if not resolved:
        raise ValueError("regions is empty; give at least one region, or null for every record")
    for a, b in itertools.pairwise(resolved):
        if a.overlaps(b):
            raise ValueError(f"regions {a} and {b} overlap; merge them into one region")
    return resolved


def plan_jobs(
    cfg: DictConfig, genome: Genome, tokenizer: DNATokenizer, runner: MemoryRunner
) -> list[Job]:
    """Jobs in genome order: region, then strand, then part (long regions split P ways)."""
    strands = ["+", "-"] if cfg.strand == "both" else [cfg.strand]
    p = cfg.parallel
    jobs = []
    for region in resolve_regions(genome, cfg.regions):
        for strand in strands:
            parts = [StreamPart()]
            if p.streams > 1 and len(region) >= p.min_bp:
                stream = open_stream(cfg, genome, tokenizer, region, strand)
                parts = plan_parts(stream, p.streams, runner.segment_tokens, p.burn_in)
            jobs += [Job(region.chrom, region.start, region.end, strand, part) for part in parts]
    return jobs


def open_stream(
    cfg: DictConfig,
    genome: Genome,
    tokenizer: DNATokenizer,
    region: Region,
    strand: str,
    origin: int = 0,
    state: dict | None = None,
) -> TokenStream:
    """A token stream with the configured chunk and margin."""
    s = cfg.stream
    return TokenStream(
        genome, region, strand, tokenizer, s.chunk_bp, s.margin_bp, origin=origin, state=state
    )


def load_plan(cfg, out: Path, genome, tokenizer, runner) -> list[Job]:
    """The job list, computed once per output directory (splitting tokenizes long regions)."""
    path = out / PLAN
    if path.exists():
        return [Job.from_dict(j) for j in json.loads(path.read_text())["jobs"]]
    jobs = plan_jobs(cfg, genome, tokenizer, runner)
    write_json(path, {"jobs": [j.to_dict() for j in jobs]})
    return jobs


def pieces_in_genome_order(jobs: list[Job], spool: Path, strand: str | None = None) -> list[Piece]:
    """Finished jobs as ``Piece``s: by region, '+' before '-', increasing forward position."""
    regions: dict[tuple, dict[str, list[int]]] = {}
    for i, job in enumerate(jobs):
        regions.setdefault((job.chrom, job.start), {}).setdefault(job.strand, []).append(i)
    pieces = []
    for by_strand in regions.values():
        for s in ("+", "-"):
            indices = by_strand.get(s, [])
            if strand in (None, s):
                ordered = reversed(indices) if s == "-" else indices  # '-' parts run backwards
                pieces += [_piece(jobs[i], i, spool) for i in ordered]
    return pieces


def _piece(job: Job, index: int, spool: Path) -> Piece:
    return Piece(
        job.chrom, job.strand, spool / f"{index:06d}.tokens", spool / f"{index:06d}.segments"
    )


# -- the model -------------------------------------------------------------------------


@dataclass
class Scores:
    """One batched step: per-token log-probabilities and hidden states, the new memory."""

    hidden: torch.Tensor
    memory: torch.Tensor
    logprob: torch.Tensor
    masked: torch.Tensor | None


def token_logprob(runner: MemoryRunner, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids | hidden); logsumexp instead of a full log_softmax over the vocabulary."""
    logits = runner.head(hidden).float()
    return logits.gather(-1, ids[..., None])[..., 0] - logits.logsumexp(-1)


def score_step(
    runner: MemoryRunner,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    memory: torch.Tensor,
    masked_stride: int,
    mask_id: int,
) -> Scores:
    """Run one segment per stream; with ``masked_stride`` k, also the k masked passes.

    Masked pass r replaces the tokens at positions = r (mod k) of every segment by
    [MASK] and reads them off, all k passes as one batch from the same input memory;
    the memory carried on is always the unmasked pass's.
    """
    out, new_memory = runner.step(ids, memory, mask)
    logprob = token_logprob(runner, out.hidden, ids)
    masked = None
    if masked_stride:
        k, (b, n) = masked_stride, ids.shape
        position = torch.arange(n, device=ids.device)
        chosen = ((position % k)[None, :] == torch.arange(k, device=ids.device)[:, None])[:, None]
        if mask is not None:  # (k, 1, n) -> (k, b, n): padding stays padding
            chosen = chosen & mask.bool()[None]
        passes = torch.where(chosen, mask_id, ids[None]).reshape(k * b, n)
        repeated_mask = None if mask is None else mask.repeat(k, 1)
        seg, _ = runner.step(passes, memory.repeat(k, 1, 1), repeated_mask)
        hidden = seg.hidden.reshape(k, b, n, -1)[position % k, :, position].transpose(0, 1)
        masked = token_logprob(runner, hidden, ids)
    return Scores(out.hidden, new_memory, logprob, masked)


# -- streaming -------------------------------------------------------------------------


class Lane:
    """A running job: its token stream, its spools, and how many tokens it has taken."""

    def __init__(self, index: int, job: Job, stream: TokenStream, spools, taken: int = 0):
        self.index, self.job, self.stream = index, job, stream
        self.tokens, self.segments = spools
        self.taken = taken

    def next_segment(self, segment_tokens: int) -> Encoding:
        """The next segment's tokens (stream coordinates); none once the job is done."""
        n = segment_tokens
        if self.job.part.tokens is not None:
            n = min(n, self.job.part.burn_in + self.job.part.tokens - self.taken)
        segment = self.stream.take(max(n, 0))
        self.taken += len(segment)
        return segment

    def state(self) -> dict:
        stream = {k: torch.as_tensor(v) for k, v in self.stream.state().items()}
        return {"job": self.index, "taken": self.taken, "stream": stream}

    def close(self) -> None:
        self.tokens.close()
        self.segments.close()


class Streamer:
    """Runs the jobs through the model, ``batch_size`` lanes at a time, and spools outputs."""

    def __init__(self, cfg, runner, tokenizer, genome, jobs: list[Job], out: Path, device, amp):
        self.cfg, self.runner, self.tokenizer, self.genome = cfg, runner, tokenizer, genome
        self.jobs, self.out, self.spool = jobs, out, out / SPOOL
        self.device, self.amp = device, amp
        self.spool.mkdir(exist_ok=True)
        d = runner.encoder.config.d_model
        store = cfg.embeddings.dtype
        self.token_dtype = token_dtype(d, store, cfg.embeddings.tokens)
        self.segment_dtype = segment_dtype(d, runner.memory_tokens, store)
        self.lanes: list[Lane] = []
        self.memory = runner.init_memory(0).detach().to(device)
        self.next_job = 0
        self.rows: dict[int, list[int]] = {}
        counters = ("bp", "tokens", "segments", "burn_in_segments", "model_segments", "steps")
        self.stats = dict.fromkeys(counters, 0)
        self.stats |= {"runs": 0, "wall_s": 0.0, "model_s": 0.0, "peak_rss_mb": 0.0}

    # -- lanes -----------------------------------------------------------------------
    def _open_lane(self, index: int, taken: int = 0, stream_state=None) -> Lane:
        job = self.jobs[index]
        stream = open_stream(
            self.cfg, self.genome, self.tokenizer, job.region, job.strand, job.part.origin,
            stream_state,
        )  # fmt: skip
        rows = self.rows.setdefault(index, [0, 0])
        piece = _piece(job, index, self.spool)
        spools = (
            Spool(piece.tokens, self.token_dtype, rows[0]),
            Spool(piece.segments, self.segment_dtype, rows[1]),
        )
        return Lane(index, job, stream, spools, taken)

    def _initial_memory(self) -> torch.Tensor:
        return self.runner.init_memory(1).detach().to(self.device)

    def _gather(self) -> list[Encoding]:
        """The next segment of every lane, retiring finished lanes and starting new jobs."""
        segments: list[Encoding] = []
        i = 0
        while i < len(self.lanes) or (
            len(self.lanes) < self.cfg.batch_size and self.next_job < len(self.jobs)
        ):
            if i == len(self.lanes):
                self.lanes.append(self._open_lane(self.next_job))
                self.memory = torch.cat([self.memory, self._initial_memory()])
                self.next_job += 1
            segment = self.lanes[i].next_segment(self.runner.segment_tokens)
            if len(segment):
                segments.append(segment)
                i += 1
                continue
            self.lanes[i].close()
            if self.next_job < len(self.jobs):
                self.lanes[i] = self._open_lane(self.next_job)
                fresh = self._initial_memory()
                self.memory = torch.cat([self.memory[:i], fresh, self.memory[i + 1 :]])
                self.next_job += 1
            else:
                del self.lanes[i]
                self.memory = torch.cat([self.memory[:i], self.memory[i + 1 :]])
        return segments

    # -- one step ------------------------------------------------------------------------
    def step(self) -> int:
        """Run one segment of every lane; returns the bp emitted (0: everything is done)."""
        segments = self._gather()
        if not segments:
            return 0
        longest = max(len(s) for s in segments)
        pad = self.tokenizer.pad_id
        ids = np.full((len(segments), longest), pad, dtype=np.int64)
        for row, segment in enumerate(segments):
            ids[row, : len(segment)] = segment.ids
        ids_t = torch.from_numpy(ids).to(self.device)
        lengths = torch.tensor([len(s) for s in segments], device=self.device)
        valid = torch.arange(longest, device=self.device)[None] < lengths[:, None]
        mask = None if bool(valid.all()) else valid
        started = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.amp, enabled=self.amp is not None),
        ):
            scores = score_step(
                self.runner, ids_t, mask, self.memory, self.cfg.tracks.masked_stride,
                self.tokenizer.mask_id,
            )  # fmt: skip
            pooled = (scores.hidden.float() * valid[..., None]).sum(1) / lengths[:, None]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats["model_s"] += time.perf_counter() - started
        self.memory = scores.memory
        bp = self._emit(segments, scores, pooled)
        self.stats["steps"] += 1
        self.stats["model_segments"] += len(segments)
        return bp

    def _emit(self, segments: list[Encoding], scores: Scores, pooled: torch.Tensor) -> int:
        logprob = scores.logprob.cpu().numpy()
        masked = None if scores.masked is None else scores.masked.cpu().numpy()
        memory = scores.memory.float().cpu().numpy()
        pooled_np = pooled.cpu().numpy()
        hidden = scores.hidden.float().cpu().numpy() if self.cfg.embeddings.tokens else None
        emitted = 0
        for row, (lane, segment) in enumerate(zip(self.lanes, segments, strict=True)):
            n = len(segment)
            if lane.taken - n < lane.job.part.burn_in:  # warming the memory up: no outputs
                self.stats["burn_in_segments"] += 1
                continue
            spans = lane.stream.forward(segment.offsets)
            tokens = np.zeros(n, dtype=self.token_dtype)
            tokens["start"], tokens["end"] = spans[:, 0], spans[:, 1]
            tokens["id"] = segment.ids
            tokens["logprob"] = logprob[row, :n]
            tokens["masked"] = np.nan if masked is None else masked[row, :n]
            if hidden is not None:
                tokens["embedding"] = hidden[row, :n]
            seg = np.zeros(1, dtype=self.segment_dtype)
            seg["start"], seg["end"] = spans[:, 0].min(), spans[:, 1].max()
            seg["embedding"], seg["memory"] = pooled_np[row], memory[row]
            lane.tokens.append(tokens)
            lane.segments.append(seg)
            self.rows[lane.index] = [lane.tokens.rows, lane.segments.rows]
            bp = int((spans[:, 1] - spans[:, 0]).sum())
            emitted += bp
            self.stats["bp"] += bp
            self.stats["tokens"] += n
            self.stats["segments"] += 1
        return emitted

    # -- resume state ----------------------------------------------------------------
    def save(self, elapsed: float) -> None:
        """Flush every spool, then atomically write what resuming needs."""
        for lane in self.lanes:
            lane.tokens.flush()
            lane.segments.flush()
        state = {
            "next_job": self.next_job,
            "lanes": [lane.state() for lane in self.lanes],
            "memory": self.memory.cpu().clone(),
            "rows": {str(k): v for k, v in self.rows.items()},
            "stats": self.stats | {"wall_s": elapsed, "peak_rss_mb": self.peak_rss_mb()},
        }
        with atomic_path(self.out / STATE) as tmp:
            torch.save(state, tmp)

    def restore(self, state: dict) -> None:
        self.next_job = state["next_job"]
        self.rows = {int(k): list(v) for k, v in state["rows"].items()}
        self.stats = dict(state["stats"])
        self.lanes = [
            self._open_lane(
                lane["job"], lane["taken"], {k: v.numpy() for k, v in lane["stream"].items()}
            )
            for lane in state["lanes"]
        ]
        self.memory = state["memory"].to(self.device)

    def peak_rss_mb(self) -> float:
        """The peak resident set over every run on this output directory."""
        return max(self.stats["peak_rss_mb"], peak_rss_mb())

    def total_bp(self) -> int:
        """bp every job emits (burn-in excluded): what the progress bar counts to."""
        regions = {(j.chrom, j.start, j.end, j.strand) for j in self.jobs}
        return sum(end - start for _, start, end, _ in regions)


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB.

    VmHWM rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` across ``exec``, so a child
    of a large process would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the whole run ---------------------------------------------------------------------


def finalize(streamer: Streamer, cfg: DictConfig) -> list[str]:
    """Tracks and the embeddings store, from the spools, each file atomically."""
    out, jobs, spool = streamer.out, streamer.jobs, streamer.spool
    chroms = list(dict.fromkeys((j.chrom, streamer.genome.lengths[j.chrom]) for j in jobs))
    written = []
    tracks = ["logprob"] + (["masked"] if cfg.tracks.masked_stride else [])
    for strand in dict.fromkeys(j.strand for j in jobs):
        pieces = pieces_in_genome_order(jobs, spool, strand)
        for track in tracks:
            written += write_tracks(out, track, strand, pieces, chroms, streamer.token_dtype)
    dtypes = {"segments": streamer.segment_dtype}
    if cfg.embeddings.tokens:
        dtypes["tokens"] = streamer.token_dtype
    runner = streamer.runner
    attrs = {
        "segment_tokens": runner.segment_tokens,
        "memory_tokens": runner.memory_tokens,
        "d_model": runner.encoder.config.d_model,
        "coordinates": "0-based half-open, forward strand; strand -1 = reverse complement",
    }
    written.append(
        write_store(out / STORE, pieces_in_genome_order(jobs, spool), chroms, dtypes, attrs)
    )
    return [p.name for p in written]


def check_token_embeddings(cfg: DictConfig, regions: list[Region]) -> None:
    """Per-token rows are d_model values per token: refuse them for large inputs."""
    bp = sum(len(r) for r in regions) * (2 if cfg.strand == "both" else 1)
    if cfg.embeddings.tokens and bp > cfg.embeddings.max_token_bp:
        raise ValueError(
            f"embeddings.tokens=true would store one row per token for {bp:,} bp; it is meant "
            f"for small regions (embeddings.max_token_bp={cfg.embeddings.max_token_bp:,}): "
            "restrict regions, or raise embeddings.max_token_bp"
        )


def run_inference(cfg: DictConfig) -> dict:
    """Stream the configured regions through the model into ``cfg.output``; the summary."""
    started = time.perf_counter()
    check_config(cfg)
    out = Path(cfg.output)
    fasta = resolve_fasta(OmegaConf.to_container(cfg.data.fasta))
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    genome = Genome(fasta, cache_dir=cfg.data.cache_dir)
    # Fail on bad regions before touching OUT.
    check_token_embeddings(cfg, resolve_regions(genome, cfg.regions))
    prepare_output(out, run_identity(cfg, checkpoint, fasta), cfg.overwrite)
    state = torch.load(out / STATE, weights_only=True) if (out / STATE).exists() else None
    if state is None or not state.get("done"):
        run_jobs(cfg, out, genome, checkpoint, fasta, state, started)
    shutil.rmtree(out / SPOOL, ignore_errors=True)
    return json.loads((out / SUMMARY).read_text())


def run_jobs(cfg, out: Path, genome, checkpoint: Path, fasta, state, started: float) -> None:
    """Stream every job (from ``state`` when resuming), then write the final outputs."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    runner, tokenizer = load_model(checkpoint, device, cfg.kernels)
    jobs = load_plan(cfg, out, genome, tokenizer, runner)
    streamer = Streamer(
        cfg, runner, tokenizer, genome, jobs, out, device, autocast_dtype(cfg.precision, device)
    )
    if state is not None:
        streamer.restore(state)
    previous = streamer.stats["wall_s"]
    streamer.stats["runs"] += 1

    def elapsed() -> float:
        return previous + time.perf_counter() - started

    progress = tqdm(
        total=streamer.total_bp(), initial=streamer.stats["bp"], unit="bp", unit_scale=True,
        disable=not cfg.progress, desc=PROGRAM, smoothing=0.05,
    )  # fmt: skip
    while bp := streamer.step():
        progress.update(bp)
        if streamer.stats["steps"] % cfg.save_every == 0:
            streamer.save(elapsed())
    progress.close()
    streamer.save(elapsed())
    outputs = finalize(streamer, cfg)
    summary = make_summary(cfg, streamer, checkpoint, fasta, outputs, elapsed(), device)
    write_json(out / SUMMARY, summary)
    with atomic_path(out / STATE) as tmp:
        torch.save({"done": True, "stats": streamer.stats}, tmp)


def make_summary(cfg, streamer: Streamer, checkpoint, fasta, outputs, wall_s, device) -> dict:
    stats = streamer.stats
    regions = dict.fromkeys(str(j.region) for j in streamer.jobs)
    summary = {
        "checkpoint": str(checkpoint),
        "fasta": fasta,
        "regions": list(regions),
        "strand": cfg.strand,
        "streams": len(streamer.jobs),
        "bp": stats["bp"],
        "tokens": stats["tokens"],
        "segments": stats["segments"],
        "burn_in_segments": stats["burn_in_segments"],
        "model_segments": stats["model_segments"],
        "steps": stats["steps"],
        "wall_s": round(wall_s, 3),
        "model_s": round(stats["model_s"], 3),
        "bp_per_s": round(stats["bp"] / wall_s, 1),
        "tokens_per_s": round(stats["tokens"] / wall_s, 1),
        "peak_rss_mb": round(streamer.peak_rss_mb(), 1),
        "runs": stats["runs"],
        "device": str(device),
        "outputs": outputs,
    }
    if device.type == "cuda":
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return summary


@hydra.main(config_path=CONFIG_PATH, config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors(PROGRAM):
        summary = run_inference(cfg)
        print(
            f"{PROGRAM}: wrote {cfg.output} ({summary['bp']:,} bp, {summary['tokens']:,} tokens, "
            f"{summary['bp_per_s']:,.0f} bp/s, peak RSS {summary['peak_rss_mb']:,.0f} MB)"
        )
        return summary


if __name__ == "__main__":
    main()
