"""Per-base values <-> BPE tokens, through the tokenizer's [start, end) bp offsets.

A BPE token spans several bases, so a token classification head predicts one class per
base *within* each token (`TokenClassificationHead`: (t, max_token_bases, C)). Labels go
to tokens with `token_base_labels`, predictions come back with `base_predictions`, and
`base_tokens` says which token (and which base within it) covers each base. All of it is
vectorised numpy: a chromosome has millions of tokens.
"""

from __future__ import annotations

import numpy as np

from data import DNATokenizer
from data.masking import IGNORE_INDEX


def max_token_bases(tokenizer: DNATokenizer) -> int:
    """Length in bp of the tokenizer's longest non-special token (at least 1)."""
    return max(1, *(len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size)))


def _spans(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return offsets[:, 0], offsets[:, 1] - offsets[:, 0]


def _within(offsets: np.ndarray, limit: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and a (t, limit) mask of the bases each token has, checked against `length`."""
    starts, sizes = _spans(offsets)
    if sizes.size and sizes.max() > limit:
        token = int(sizes.argmax())
        raise ValueError(
            f"token {token} spans {int(sizes[token])} bp, more than max_token_bases={limit}; "
            "use max_token_bases(tokenizer) of the tokenizer that made the offsets"
        )
    if sizes.size and (starts.min() < 0 or (starts + sizes).max() > length):
        raise ValueError(f"token offsets reach outside the sequence of {length:,} bp")
    return starts, np.arange(limit) < sizes[:, None]


def token_base_labels(
    offsets: np.ndarray, base_labels: np.ndarray, max_token_bases: int
) -> np.ndarray:
    """(t, max_token_bases) int64: the label of each token's j-th base, IGNORE_INDEX past
    the token's end (base_labels: (length,) with IGNORE_INDEX where unlabelled)."""
    base_labels = np.asarray(base_labels, dtype=np.int64)
    starts, valid = _within(offsets, max_token_bases, len(base_labels))
    positions = starts[:, None] + np.arange(max_token_bases)
    picked = base_labels[np.minimum(positions, max(len(base_labels) - 1, 0))]
    return np.where(valid, picked, IGNORE_INDEX)


def base_tokens(offsets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `length` bases: the token covering it and its index within that token
    ((length,) int64 each, -1 where no token covers the base)."""
    starts, sizes = _spans(offsets)
    token = np.full(length, -1, dtype=np.int64)
    within = np.full(length, -1, dtype=np.int64)
    owner = np.repeat(np.arange(len(starts)), sizes)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    bases = starts[owner] + position
    if bases.size and (bases.min() < 0 or bases.max() >= length):
        raise ValueError(f"token offsets reach outside the sequence of {length:,} bp")
    token[bases], within[bases] = owner, position
    return token, within


def base_predictions(offsets: np.ndarray, token_logits: np.ndarray, length: int) -> np.ndarray:
    """(length, C) per-base values from (t, max_token_bases, C) per-token ones (logits or
    probabilities); bases no token covers get NaN."""
    token_logits = np.asarray(token_logits)
    _within(offsets, token_logits.shape[1], length)
    token, within = base_tokens(offsets, length)
    dtype = np.result_type(token_logits.dtype, np.float32)
    out = np.full((length, token_logits.shape[-1]), np.nan, dtype=dtype)
    covered = token >= 0
    out[covered] = token_logits[token[covered], within[covered]]
    return out
