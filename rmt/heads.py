"""Output heads on top of the encoder's hidden states."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import get_ops
from kernels.reference import IGNORE_INDEX


def target_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] in fp32, without a second (..., vocab_size) tensor."""
    logits = logits.float()
    return logits.gather(-1, ids[..., None])[..., 0] - logits.logsumexp(-1)


class VocabProjection(nn.Linear):
    """The d_model -> vocab projection; given labels, the fused linear + cross-entropy.

    Both go through this module's own call, so engines that gather a module's parameters
    around its forward (DeepSpeed ZeRO-3) hand the loss the whole weight, not a shard.
    """

    def __init__(self, d_model: int, vocab_size: int, ops) -> None:
        super().__init__(d_model, vocab_size)
        self.ops = ops

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, or with `labels` the summed cross-entropy (logits never all held)."""
        if labels is None:
            return super().forward(x)
        return self.ops.linear_cross_entropy(x, self.weight, self.bias, labels)


class MLMHead(nn.Module):
    """BERT-style masked-LM head: dense + GELU + LayerNorm, then a (tied) vocab projection.

    `loss` scores only the labelled positions, so the vocab projection (the most
    expensive matmul of a small encoder at a 32k vocabulary) runs on ~15 % of tokens, and
    fuses that projection with the cross-entropy through the `kernels` op table (the
    Triton backend never holds all the logits at once).
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        embedding: nn.Embedding | None = None,
        kernels: str = "auto",
    ):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = VocabProjection(d_model, vocab_size, get_ops(kernels))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)
        if embedding is not None:
            self.decoder.weight = embedding.weight
        else:
            nn.init.normal_(self.decoder.weight, std=0.02)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the vocab projection sees: dense + GELU + LayerNorm."""
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits for every position: (..., d_model) -> (..., vocab_size)."""
        return self.decoder(self.features(hidden))

    def token_log_probs(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log p(ids | hidden) at every position, in fp32: how inference scores tokens.

        logsumexp rather than a log_softmax, so no second (..., vocab_size) tensor is made.
        """
        return target_log_probs(self(hidden), ids)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over labelled positions and their count (both 0-dim)."""
        selected = labels != IGNORE_INDEX
        total = self.decoder(self.features(hidden[selected]), labels[selected])
        return total, selected.sum()

    def correct(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Number of labelled positions whose top-1 prediction is right."""
        selected = labels != IGNORE_INDEX
        return (self(hidden[selected]).argmax(-1) == labels[selected]).sum()
