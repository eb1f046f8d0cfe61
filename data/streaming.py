"""Streaming tokenization: a whole chromosome in bounded memory, token for token as if at once.

BPE is, in principle, global: merges are applied in rank order over the whole input, so a
token boundary could depend on bases far away. Two facts make chunked tokenization exact
anyway:

1. Cutting at a true boundary is exact. If no token of ``BPE(x)`` spans position b, no merge
   ever crossed b, and merges on either side never interact, so
   ``BPE(x) == BPE(x[:b]) + BPE(x[b:])``. A stream that resumes at a committed true boundary
   therefore reproduces the whole-sequence tokens from there on.
2. Context reaches only a few tokens in DNA BPE (about 20 bp for a 4k vocabulary on E. coli).
   ``StreamTokenizer`` commits a token only when (a) it ends at least ``margin_bp`` before
   the end of the sequence seen so far and (b) the tokenization of the buffer before and
   after the newest piece was appended agree on it and on everything before it: the
   boundary is stable under a change of right context. The uncommitted tail is carried into
   the next piece, already tokenized (fact 1 makes the carried tokens exact too).

The nucleotide tokenizer goes through the same code and is trivially stable. The tests
check equality with whole-sequence tokenization on real genomes and tiny pieces.

Coordinates: a *stream coordinate* is a bp offset along the strand being read, from the
5' end of the region on that strand. For ``-`` the region is read as its reverse
complement, so a token covering stream coordinates [a, b) covers forward-strand
[end - b, end - a) of the region (``TokenStream.forward``); ``-`` tokens come in
decreasing forward position.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from data.genome import Genome
from data.regions import Region
from data.tokenizers import DNATokenizer, Encoding

STRANDS = ("+", "-")


def _empty() -> Encoding:
    return Encoding(np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64))


def _concat(a: Encoding, b: Encoding) -> Encoding:
    return Encoding(np.concatenate([a.ids, b.ids]), np.concatenate([a.offsets, b.offsets]))


def _slice(encoding: Encoding, start: int, stop: int | None = None) -> Encoding:
    return Encoding(encoding.ids[start:stop], encoding.offsets[start:stop])


def _stable_prefix(old: Encoding, new: Encoding, limit: int) -> int:
    """Leading tokens of ``new`` that ``old`` has too (same ids and spans), ending <= limit."""
    n = min(len(old), len(new))
    same = (old.ids[:n] == new.ids[:n]) & (old.offsets[:n] == new.offsets[:n]).all(axis=1)
    agree = n if same.all() else int(np.argmin(same))
    return int(np.searchsorted(new.offsets[:agree, 1], limit, side="right"))


class StreamTokenizer:
    """Tokenizes one sequence given piece by piece; returns tokens once their boundaries are stable.

    ``position`` is the stream coordinate of the first uncommitted base, always a token
    boundary; returned offsets are stream coordinates. Concatenating every ``feed`` result
    and ``finish()`` gives the tokenization of the whole sequence at once.
    """

    def __init__(self, tokenizer: DNATokenizer, margin_bp: int = 512, position: int = 0) -> None:
        if margin_bp < 0:
            raise ValueError(f"margin_bp must be >= 0, got {margin_bp}")
        self.tokenizer = tokenizer
        self.margin_bp = margin_bp
        self.position = position
        self._buffer = ""
        self._pending = _empty()  # tokenization of _buffer, offsets relative to position

    @property
    def fed(self) -> int:
        """Stream coordinate up to which sequence has been fed."""
        return self.position + len(self._buffer)

    def feed(self, piece: str) -> Encoding:
        """Append ``piece``; return the tokens that became stable (possibly none)."""
        buffer = self._buffer + piece
        encoding = self.tokenizer.encode(buffer)
        limit = len(self._buffer) - self.margin_bp
        return self._commit(buffer, encoding, _stable_prefix(self._pending, encoding, limit))

    def finish(self) -> Encoding:
        """The sequence has ended: return every remaining token."""
        return self._commit(self._buffer, self._pending, len(self._pending))

    def _commit(self, buffer: str, encoding: Encoding, n: int) -> Encoding:
        cut = int(encoding.offsets[n - 1, 1]) if n else 0
        committed = Encoding(encoding.ids[:n], encoding.offsets[:n] + self.position)
        self.position += cut
        self._buffer = buffer[cut:]
        self._pending = Encoding(encoding.ids[n:], encoding.offsets[n:] - cut)
        return committed


class TokenStream:
    """The tokens of one region on one strand, read from a ``Genome`` in ``chunk_bp`` pieces.

    ``take(n)`` returns the next ``n`` tokens (fewer only at the end) with stream
    coordinates. Memory is bounded by ``chunk_bp + margin_bp`` plus the tokens asked for,
    whatever the region's length. ``state()`` and ``TokenStream(..., state=...)`` resume
    a stream exactly where it was, so that later tokens are identical.
    """

    def __init__(
        self,
        genome: Genome,
        region: Region,
        strand: str,
        tokenizer: DNATokenizer,
        chunk_bp: int = 8192,
        margin_bp: int = 512,
        origin: int = 0,
        state: dict | None = None,
    ) -> None:
        if strand not in STRANDS:
            raise ValueError(f"strand must be '+' or '-', got {strand!r}")
        if chunk_bp < 1:
            raise ValueError(f"chunk_bp must be >= 1, got {chunk_bp}")
        self.genome, self.region, self.strand = genome, genome.resolve_region(region), strand
        self.chunk_bp = chunk_bp
        self.length = len(self.region)
        if not 0 <= origin <= self.length:
            raise ValueError(f"origin {origin} is outside {self.region} ({self.length} bp)")
        state = state or {"position": origin, "fed": origin}
        self._tokenizer = StreamTokenizer(tokenizer, margin_bp, int(state["position"]))
        self._queue = Encoding(
            np.asarray(state.get("ids", []), dtype=np.int64),
            np.asarray(state.get("offsets", []), dtype=np.int64).reshape(-1, 2),
        )
        self._finished = False
        if state["fed"] > state["position"]:  # refill the buffer; commits nothing
            self._tokenizer.feed(self._read(int(state["position"]), int(state["fed"])))

    def state(self) -> dict:
        """What resuming needs: stream coordinates and the tokens read but not yet taken."""
        return {
            "position": self._tokenizer.position,
            "fed": self._tokenizer.fed,
            "ids": self._queue.ids.copy(),
            "offsets": self._queue.offsets.copy(),
        }

    def _read(self, start: int, end: int) -> str:
        """Stream coordinates [start, end) of the strand, as cleaned sequence."""
        r = self.region
        if self.strand == "+":
            return self.genome.fetch(r.chrom, r.start + start, r.start + end)
        return self.genome.fetch(r.chrom, r.end - end, r.end - start, "-")

    def _pull(self) -> None:
        fed = self._tokenizer.fed
        if fed < self.length:
            tokens = self._tokenizer.feed(self._read(fed, min(fed + self.chunk_bp, self.length)))
        else:
            tokens, self._finished = self._tokenizer.finish(), True
        self._queue = _concat(self._queue, tokens)

    def take(self, n: int) -> Encoding:
        """The next ``n`` tokens (stream coordinates); fewer, or none, at the end."""
        while len(self._queue) < n and not self._finished:
            self._pull()
        taken, self._queue = _slice(self._queue, 0, n), _slice(self._queue, n)
        return taken

    def forward(self, offsets: np.ndarray) -> np.ndarray:
        """Stream-coordinate spans (n, 2) as forward-strand genome spans [start, end)."""
        if self.strand == "+":
            return offsets + self.region.start
        return self.region.end - offsets[:, ::-1]


@dataclass(frozen=True)
class StreamPart:
    """One of P parallel streams over a region: where it starts and what it emits.

    Tokenizing starts at stream coordinate ``origin`` (a boundary of the whole-region
    tokenization); the first ``burn_in`` tokens (whole segments) only warm the memory up;
    then ``tokens`` tokens are emitted (None: up to the region's end).
    """

    origin: int = 0
    burn_in: int = 0
    tokens: int | None = None


def plan_parts(
    stream: TokenStream, parts: int, segment_tokens: int, burn_in_segments: int
) -> list[StreamPart]:
    """Split a fresh stream into up to ``parts`` parts that start on segment boundaries.

    Part i starts at the first segment at or after i/P of the region's bp, so every part's
    segments are the single-stream run's segments, and its burn-in is the ``burn_in_segments``
    segments before (fewer near the start). Runs the tokenizer over the region once (it is
    much cheaper than the model) and keeps only the last burn-in + 1 segment starts.
    """
    if parts < 1 or segment_tokens < 1 or burn_in_segments < 0:
        raise ValueError(
            f"parts={parts} and segment_tokens={segment_tokens} must be >= 1 and "
            f"burn_in_segments={burn_in_segments} >= 0"
        )
    targets = deque(stream.length * i // parts for i in range(1, parts))
    recent: deque[tuple[int, int]] = deque(maxlen=burn_in_segments + 1)  # (segment, start)
    starts = [(0, 0, 0)]  # (first segment, origin, burn-in tokens) of each part
    segment = 0
    while targets and len(tokens := stream.take(segment_tokens)):
        coordinate = int(tokens.offsets[0, 0])
        recent.append((segment, coordinate))
        if coordinate >= targets[0]:
            while targets and coordinate >= targets[0]:
                targets.popleft()
            if segment > starts[-1][0]:
                warm_segment, origin = recent[0]
                starts.append((segment, origin, (segment - warm_segment) * segment_tokens))
        segment += 1
    ends = [first for first, _, _ in starts[1:]] + [None]
    return [
        StreamPart(origin, burn, None if end is None else (end - first) * segment_tokens)
        for (first, origin, burn), end in zip(starts, ends, strict=True)
    ]
