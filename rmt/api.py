"""The Python API: embeddings and fine-tuned predictions for DNA of any length.

    from rmt.api import Embed, SequenceClassification, TokenClassification

    embed = Embed.from_pretrained("runs/pretrain_cpu")        # a run or a checkpoint dir
    out = embed.predict(["ACGT" * 5000, "GATTACA" * 300])      # any length: memory carried
    out.sequence.shape, out.memory.shape, out.segments[0].shape  # (2, d), (2, d), (n, d)
    species = SequenceClassification.from_pretrained("runs/finetune/species")
    species.predict(["ACGT" * 3000]).labels                    # the class names
    alone = SequenceClassification.from_pretrained("runs/finetune/species", memory="reset")
    genes = TokenClassification.from_pretrained("runs/finetune/genes", both_strands=True)
    genes.predict(["ACGT" * 800]).probabilities[0].shape       # (3200, classes) per base

Each model holds the runner and its tokenizer; `collate(sequences)` tokenises and
right-pads, `model(batch)` runs one batch, `predict(sequences, batch_size=8)` many and
merges the results. `memory=` picks how segments read each other (rmt.api_memory):
`carried` (as trained), `reset`, and for sequence heads `segment_average`. Fine-tuned
models come from `rmt-finetune`; outputs are fp32 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import DNATokenizer
from rmt.api_base import Batch, PretrainedModel, to_numpy
from rmt.api_memory import MEMORY_MODES, read
from rmt.api_tasks import (
    BaseClasses,
    Classes,
    SequenceClassification,
    SequenceRegression,
    TokenClassification,
    Values,
)
from rmt.runner import MemoryRunner
from rmt.token_bases import base_tokens

__all__ = [
    "MEMORY_MODES",
    "BaseClasses",
    "Batch",
    "Classes",
    "Embed",
    "Embeddings",
    "PretrainedModel",
    "SequenceClassification",
    "SequenceRegression",
    "TokenClassification",
    "Values",
]


@dataclass
class Embeddings:
    """Per sequence (b, d): `sequence`, the mean content hidden state over the whole
    sequence; `memory`, the mean of the final memory vectors (None without memory).
    Per segment: `segments[i]` (segments of i, d), mean hidden state of each segment.
    Optional: `tokens[i]` (tokens of i, d) and `bases[i]` (bp of i, d), each base its
    token's vector (NaN for a base no token covers)."""

    sequence: np.ndarray
    memory: np.ndarray | None
    segments: list[np.ndarray]
    tokens: list[np.ndarray] | None = None
    bases: list[np.ndarray] | None = None


class Embed(PretrainedModel):
    """Embeddings of the encoder-with-memory's content hidden states (`Embeddings`).

    tokens / bases: also return per-token / per-base vectors (large for long inputs).
    """

    def __init__(
        self,
        runner: MemoryRunner,
        tokenizer: DNATokenizer,
        memory: str = "carried",
        tokens: bool = False,
        bases: bool = False,
        source: str = "this model",
    ) -> None:
        super().__init__(runner, tokenizer, memory, source)
        self.tokens, self.bases = tokens, bases

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Embeddings:
        out = read(self.runner, batch.input_ids, batch.attention_mask, self.memory)
        hidden, mask = to_numpy(out.hidden), to_numpy(batch.attention_mask).astype(bool)
        per_token = [h[m] for h, m in zip(hidden, mask, strict=True)]
        s = self.runner.segment_tokens
        segments = [
            np.stack([t[j : j + s].mean(0) for j in range(0, len(t), s)]) for t in per_token
        ]
        bases = None
        if self.bases:
            bases = []
            for t, offsets, seq in zip(per_token, batch.offsets, batch.sequences, strict=True):
                token, _ = base_tokens(offsets, len(seq))
                bases.append(np.where(token[:, None] >= 0, t[token], np.nan).astype(np.float32))
        return Embeddings(
            sequence=np.stack([t.mean(0) for t in per_token]),
            memory=to_numpy(out.memory.mean(1)) if out.memory.shape[1] else None,
            segments=segments,
            tokens=per_token if self.tokens else None,
            bases=bases,
        )
