"""Streaming jobs through the model in fixed batch slots, with resumable state.

There are ``batch_size`` slots and one preallocated memory tensor, a row per slot. A slot
holds one lane (a running job) at a time; when its job ends, the slot takes the next job
and its memory row is re-initialised; once no job is left it stays empty. Each step runs
the occupied slots' next segments as one batch, in slot order, and writes their new
memory back into their rows. ``save`` records every lane's slot, stream position and
spool rows, and the memory tensor, so that ``restore`` continues exactly.

A streamer runs one shard of the plan (``rmt.infer.plan``): its jobs, in plan order, in
slots of its own, with its own resume state; which process runs it changes nothing.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data import DNATokenizer, Encoding, Genome
from data.streaming import TokenStream
from rmt.infer.options import InferOptions
from rmt.infer.outputs import SPOOL, StepRows, row_dtypes, shard_state, spool_piece, write_state
from rmt.infer.plan import Job, Plan, open_stream
from rmt.infer.score import Scores, pad_segments, score_step
from rmt.runner import MemoryRunner
from rmt.writers import Spool

COUNTERS = ("bp", "tokens", "segments", "burn_in_segments", "model_segments", "steps")


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


@dataclass
class Lane:
    """A running job in a slot: its token stream, its spools, how many tokens it took."""

    index: int  # the job's index in the plan
    job: Job
    stream: TokenStream
    tokens: Spool
    segments: Spool
    taken: int = 0

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
    """Runs a shard's jobs through the model, ``batch_size`` slots at a time, spooling
    their outputs."""

    def __init__(
        self,
        options: InferOptions,
        runner: MemoryRunner,
        tokenizer: DNATokenizer,
        genome: Genome,
        plan: Plan,
        shard: int,
        out: Path,
        device: torch.device,
        amp: torch.dtype | None,
    ) -> None:
        self.options, self.runner, self.tokenizer, self.genome = options, runner, tokenizer, genome
        self.jobs, self.queue = plan.jobs, plan.shards[shard]  # the shard's job indices
        self.spool, self.state_path = out / SPOOL, shard_state(out, shard)
        self.device, self.amp = device, amp
        self.spool.mkdir(exist_ok=True)
        d = runner.encoder.config.d_model
        self.token_dtype, self.segment_dtype = row_dtypes(options, d, runner.memory_tokens)
        self.slots: list[Lane | None] = [None] * options.batch_size
        initial = runner.init_memory(1).detach().to(device)
        self.initial = initial[0]
        self.memory = initial.repeat(options.batch_size, 1, 1)
        self.next_job = 0  # the next job's position in the queue
        self.rows: dict[int, list[int]] = {}  # job index -> spool rows (tokens, segments)
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.stats |= {"attempts": {}, "model_s": 0.0, "peak_rss_mb": 0.0}
        # this attempt: its start (perf_counter), bp before it, its name, its ranks
        self._attempt = (time.perf_counter(), 0, "", 1)

    # -- slots -----------------------------------------------------------------------
    def _open_lane(self, index: int, taken: int = 0, stream_state: dict | None = None) -> Lane:
        job = self.jobs[index]
        stream = open_stream(self.options.stream, self.genome, self.tokenizer, job, stream_state)
        rows = self.rows.setdefault(index, [0, 0])
        piece = spool_piece(job, index, self.spool)
        tokens = Spool(piece.tokens, self.token_dtype, rows[0])
        segments = Spool(piece.segments, self.segment_dtype, rows[1])
        return Lane(index, job, stream, tokens, segments, taken)

    def _refill(self, slot: int) -> None:
        """Give ``slot`` the next job with a fresh memory row, or leave it empty."""
        if self.next_job < len(self.queue):
            self.slots[slot] = self._open_lane(self.queue[self.next_job])
            self.memory[slot] = self.initial
            self.next_job += 1
        else:
            self.slots[slot] = None

    def _gather(self) -> tuple[list[int], list[Encoding]]:
        """The occupied slots and their next segments, closing and refilling done ones."""
        active, segments = [], []
        for slot in range(len(self.slots)):
            if self.slots[slot] is None:
                self._refill(slot)
            while (lane := self.slots[slot]) is not None:
                segment = lane.next_segment(self.runner.segment_tokens)
                if len(segment):
                    active.append(slot)
                    segments.append(segment)
                    break
                lane.close()
                self._refill(slot)
        return active, segments

    # -- one step --------------------------------------------------------------------
    def step(self) -> int | None:
        """Run one segment of every occupied slot; the bp emitted, None once all is done.

        0 is a step that emitted nothing: every occupied slot was warming up (burn-in).
        """
        active, segments = self._gather()
        if not segments:
            return None
        batch = pad_segments(segments, self.tokenizer.pad_id, self.device)
        rows = torch.tensor(active, device=self.device)
        every = len(active) == len(self.slots)
        memory = self.memory if every else self.memory[rows]
        started = time.perf_counter()
        scores = score_step(
            self.runner, batch, memory, self.options.tracks.masked_stride,
            self.tokenizer.mask_id, self.amp,
        )  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats["model_s"] += time.perf_counter() - started
        self.memory[rows] = scores.memory
        lanes = [self.slots[slot] for slot in active]
        bp = self._emit(lanes, segments, scores)
        self.stats["steps"] += 1
        self.stats["model_segments"] += len(segments)
        return bp

    def _emit(self, lanes: list[Lane], segments: list[Encoding], scores: Scores) -> int:
        """Spool every row past its job's burn-in; the bp emitted."""
        host = StepRows.from_scores(scores, self.options.embeddings.tokens)
        emitted = 0
        for row, (lane, segment) in enumerate(zip(lanes, segments, strict=True)):
            n = len(segment)
            if lane.taken - n < lane.job.part.burn_in:  # warming the memory up: no outputs
                self.stats["burn_in_segments"] += 1
                continue
            spans = lane.stream.forward(segment.offsets)
            lane.tokens.append(host.tokens(row, segment, spans, self.token_dtype))
            lane.segments.append(host.segment(row, spans, self.segment_dtype))
            self.rows[lane.index] = [lane.tokens.rows, lane.segments.rows]
            bp = int((spans[:, 1] - spans[:, 0]).sum())
            emitted += bp
            self.stats["bp"] += bp
            self.stats["tokens"] += n
            self.stats["segments"] += 1
        return emitted

    # -- resume state ----------------------------------------------------------------
    def begin_attempt(self, started: float, attempt: str, ranks: int) -> None:
        """Count this launch (named ``attempt``, the same on every rank, begun at
        ``started`` by perf_counter, with ``ranks`` processes) as one of the shard's."""
        self._attempt = (started, self.stats["bp"], attempt, ranks)
        self.clock()

    def clock(self) -> None:
        """Bring this attempt's record up to now: the time since the launch began (the
        shards a process ran before this one included) and the bp this shard emitted.

        An attempt that is killed keeps what its last resume point recorded: its work after
        that point is lost, and redone (and timed) by the next attempt.
        """
        started, bp, attempt, ranks = self._attempt
        self.stats["attempts"][attempt] = {
            "wall_s": time.perf_counter() - started, "strand_bp": self.stats["bp"] - bp,
            "ranks": ranks,
        }  # fmt: skip
        self.stats["peak_rss_mb"] = self.peak_rss_mb()

    def save(self) -> None:
        """Flush every spool, then atomically write what resuming needs."""
        lanes = [(slot, lane) for slot, lane in enumerate(self.slots) if lane is not None]
        for _, lane in lanes:
            lane.tokens.flush()
            lane.segments.flush()
        self.clock()
        state = {
            "next_job": self.next_job,
            "lanes": [lane.state() | {"slot": slot} for slot, lane in lanes],
            "memory": self.memory.cpu().clone(),
            "rows": {str(k): v for k, v in self.rows.items()},
            "stats": self.stats,
        }
        write_state(self.state_path, state)

    def restore(self, state: dict) -> None:
        """Continue from a state ``save`` wrote: lanes in their slots, memory, counters."""
        self.next_job = state["next_job"]
        self.rows = {int(k): list(v) for k, v in state["rows"].items()}
        self.stats = dict(state["stats"], attempts=dict(state["stats"]["attempts"]))
        for lane in state["lanes"]:
            stream = {k: v.numpy() for k, v in lane["stream"].items()}
            self.slots[lane["slot"]] = self._open_lane(lane["job"], lane["taken"], stream)
        self.memory.copy_(state["memory"])

    @property
    def finished(self) -> bool:
        """Every job of the shard streamed (as its last ``save`` finds it)."""
        return self.next_job == len(self.queue) and self.slots == [None] * len(self.slots)

    def peak_rss_mb(self) -> float:
        """The peak resident set over every run of this shard."""
        return max(self.stats["peak_rss_mb"], peak_rss_mb())
