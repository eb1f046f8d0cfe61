"""Incremental decoding with a causal encoder: a segment one token at a time, over a cache.

A causal segment is [read memory | tokens | write memory] (`Encoder.forward_with_memory`
with `causal=True`). Generation cannot run it in one call, because each token is chosen
after the one before it, so `DecoderState` runs it in three moves that give the same
numbers as that one call:

    state = DecoderState.start(encoder, memory)  # the read memory, positions 0 .. m-1
    hidden = state.decode(ids)                   # tokens at the next positions
    new_memory = state.write()                   # the write memory, seeing everything

Each layer keeps the keys and values of the positions run so far (`LayerCache`), so a
new token costs one position's work. `StreamDecoder` carries a runner's streams across
segments: when a segment holds `segment_tokens` tokens its memory is written and its
cache dropped, so nothing grows with the length generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rmt.encoder import Encoder
from rmt.runner import MemoryRunner


class LayerCache:
    """One layer's keys and values so far, each (batch, heads, positions, head_dim)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add new positions; returns the keys and values of all positions, old and new."""
        if self.keys is not None:
            keys = torch.cat([self.keys, keys], 2)
            values = torch.cat([self.values, values], 2)
        self.keys, self.values = keys, values
        return keys, values


@dataclass
class DecoderState:
    """One segment being decoded: its input memory, the layers' caches, tokens so far."""

    encoder: Encoder
    memory: torch.Tensor  # (batch, m, d): read at the start, written again at the end
    caches: list[LayerCache]
    tokens: int = 0

    @classmethod
    def start(cls, encoder: Encoder, memory: torch.Tensor) -> DecoderState:
        """A segment that has read `memory` (batch, m, d): the read block sees itself only,
        so it can run before any token is known."""
        if not encoder.config.causal:
            raise ValueError(
                "incremental decoding needs a causal encoder (EncoderConfig.causal=True); "
                "a bidirectional one lets every token see the tokens after it"
            )
        memory = memory.to(encoder.embed_tokens.weight.dtype)
        state = cls(encoder, memory, [LayerCache() for _ in encoder.blocks])
        if memory.shape[1]:
            encoder.run_blocks(memory, None, 0, state.caches)
        return state

    @property
    def position(self) -> int:
        """The position the next token takes (rotary positions run in layout order)."""
        return self.memory.shape[1] + self.tokens

    def decode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token states (batch, t, d) of `input_ids` (batch, t) appended to the segment:
        each sees the read memory, the tokens before it and itself."""
        t, past = input_ids.shape[1], self.position
        mask = None  # one token sees the whole cache
        if t > 1:
            mask = torch.ones(t, past + t, dtype=torch.bool, device=input_ids.device).tril(past)
        hidden = self.encoder.run_blocks(self.encoder.embed(input_ids), mask, past, self.caches)
        self.tokens += t
        return hidden

    def write(self) -> torch.Tensor:
        """The new memory (batch, m, d): the write block after the tokens, seeing every
        position. The segment is finished: start the next one from what this returns."""
        if not self.memory.shape[1]:
            return self.memory
        return self.encoder.run_blocks(self.memory, None, self.position, self.caches)


class StreamDecoder:
    """`batch_size` streams through a causal runner, token by token: what the runner's
    forward computes over the whole sequence, segment by segment with memory carried."""

    def __init__(self, runner: MemoryRunner, batch_size: int) -> None:
        self.runner = runner
        self.state = DecoderState.start(runner.encoder, runner.init_memory(batch_size))

    @property
    def memory(self) -> torch.Tensor:
        """The memory the current segment read (the last full segment's output)."""
        return self.state.memory

    def feed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token states (batch, t, d) of the next `input_ids` (batch, t) of every stream."""
        hidden, segment = [], self.runner.segment_tokens
        while input_ids.shape[1]:
            room = segment - self.state.tokens
            hidden.append(self.state.decode(input_ids[:, :room]))
            input_ids = input_ids[:, room:]
            if self.state.tokens == segment:
                self.state = DecoderState.start(self.runner.encoder, self.state.write())
        return torch.cat(hidden, 1)


__all__ = ["DecoderState", "LayerCache", "StreamDecoder"]
