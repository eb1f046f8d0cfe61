"""Sampling tokens from a causal runner: logits -> filtered distribution -> the next token.

    for ids in sample_tokens(runner, prompt_ids, settings, banned, generator):
        ...                      # (batch,) token ids, one step after another, forever

The prompt streams through the memory (`rmt.decoding.StreamDecoder`: segment by segment,
the last part of it into the KV cache), then every new token is decoded over the cache
and each segment's memory is written when it fills, so memory use stays that of one
segment however long the output. Tokens that spell anything but A, C, G and T are
`banned` (`banned_tokens`: special tokens, which spell nothing, `N`, BPE pieces holding an
N): their logits are -inf before any filtering, so they are never drawn.

Filtering follows the usual order: divide by `temperature`, keep the `top_k` most likely
tokens, then the smallest set of the most likely whose probability reaches `top_p`.
Temperature 0 takes the most likely token (greedy; top_k=1 does the same).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from data import DNATokenizer
from rmt.decoding import StreamDecoder
from rmt.runner import MemoryRunner

BASES = frozenset("ACGT")  # what a drawn token may spell


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: `top_k` 0 and `top_p` 1 are off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def banned_tokens(tokenizer: DNATokenizer) -> torch.Tensor:
    """(vocab,) bool, True for every token whose decoded bases are not all A/C/G/T.

    Generated DNA must be sequence: a special token ([PAD], [MASK], ...) spells nothing
    and, fed back, puts what no training sequence held into the context; `N` (or a BPE
    piece holding one) is an assembly gap, not a base, however many the training genome
    had. Computed once per run, before the first token.
    """
    banned = torch.tensor(
        [not _spells_bases(tokenizer.decode([i])) for i in range(tokenizer.vocab_size)]
    )
    if bool(banned.all()):
        raise ValueError(
            f"{tokenizer!r} has no token that spells only A, C, G and T, so there is nothing "
            "to sample: generate from a checkpoint trained with a DNA tokenizer "
            "(tokenizer.path=nucleotide, or a BPE trained on the genome)"
        )
    return banned


def _spells_bases(piece: str) -> bool:
    return bool(piece) and set(piece) <= BASES


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """-inf for every token below the k-th largest logit of its row (ties kept); k=0: off."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """-inf for the tokens outside the nucleus: the most likely tokens, in order, until
    their probability reaches `p` (the most likely one is always kept); p=1: off."""
    if p >= 1:
        return logits
    ranked, order = logits.sort(dim=-1, descending=True)
    probs = ranked.softmax(-1)
    above = probs.cumsum(-1) - probs  # the mass ranked above each token
    drop = torch.zeros_like(above, dtype=torch.bool).scatter(-1, order, above >= p)
    return logits.masked_fill(drop, float("-inf"))


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """(batch, vocab) logits -> (batch,) token ids."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = top_k_filter(logits.float() / sampling.temperature, sampling.top_k)
    probs = top_p_filter(logits, sampling.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def sample_tokens(
    runner: MemoryRunner,
    prompt_ids: torch.Tensor,
    sampling: Sampling,
    banned: torch.Tensor,
    generator: torch.Generator,
) -> Iterator[torch.Tensor]:
    """The tokens after `prompt_ids` (batch, >= 1 tokens), one (batch,) step at a time.

    `banned`: (vocab,) bool, True for tokens never to draw. The runner's head turns each
    last token's state into the next token's logits.
    """
    decoder = StreamDecoder(runner, prompt_ids.shape[0])
    hidden = decoder.feed(prompt_ids)[:, -1]
    while True:
        logits = runner.head(hidden).float().masked_fill(banned, float("-inf"))
        ids = choose(logits, sampling, generator)
        yield ids
        hidden = decoder.feed(ids[:, None])[:, -1]


__all__ = [
    "Sampling",
    "banned_tokens",
    "choose",
    "sample_tokens",
    "top_k_filter",
    "top_p_filter",
]
