"""Output heads on top of the encoder's hidden states.

MLMHead pre-trains. The task heads fine-tune, and are what the runner calls per call:
TokenClassificationHead is a segment head (`loss(hidden, labels) -> (sum, count)`, per
base within each BPE token), SequenceHead a final head (read at each sequence's last
segment). A fine-tuned runner carries one as `runner.task_head`; `config()` and
`build_task_head` let a checkpoint rebuild it. Either reads its features through an MLP
(`head="mlp"`, the default) or a single linear layer (`head="linear"`: a linear probe,
how much the frozen features alone encode the label).
"""

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


SEQUENCE_KINDS = ("classification", "regression")
POOLS = ("memory", "mean", "both")
#: the network a task head reads its features through: mlp (LayerNorm, dense, GELU,
#: projection) or linear (one projection, no norm: a linear probe of the features)
HEADS = ("mlp", "linear")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses in fp32 under half-precision autocast, and in fp64 for exactness tests."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mlp(in_dim: int, d_model: int, out_dim: int) -> nn.Sequential:
    """LayerNorm -> dense -> GELU -> projection, initialised small (std 0.02, zero biases)
    so a fresh head starts near uniform probabilities or the (normalised) target mean."""
    layers = nn.Sequential(
        nn.LayerNorm(in_dim), nn.Linear(in_dim, d_model), nn.GELU(), nn.Linear(d_model, out_dim)
    )
    for layer in (layers[1], layers[3]):
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return layers


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    """One projection, initialised as `_mlp`'s last layer: a fresh probe starts near
    uniform probabilities or the (normalised) target mean too."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


def _network(head: str, in_dim: int, d_model: int, out_dim: int) -> nn.Module:
    """The `head` network, registered by its kind's name (mlp.*, linear.*) so checkpoints
    of MLP heads made before `head` existed keep their weight names."""
    if head not in HEADS:
        raise ValueError(f"head={head!r}; choose one of {HEADS}")
    return _mlp(in_dim, d_model, out_dim) if head == "mlp" else _linear(in_dim, out_dim)


class SequenceHead(nn.Module):
    """One prediction per sequence, read at the sequence's last segment (the runner's
    `final_head`): classification logits or regression values from the output memory,
    the masked mean of the segment's content hidden states, or both concatenated.

    Regression keeps per-target mean/std buffers (`set_normalization`, from the training
    targets): the network predicts normalised values, `forward` returns them in the
    original units and `loss` is the MSE in normalised units, so targets of any scale
    train alike. `names` are the class names (classification) or target names; `head`
    the network on the pooled vector (`HEADS`).
    """

    def __init__(
        self,
        d_model: int,
        num_outputs: int,
        kind: str = "classification",
        pool: str = "memory",
        names: list[str] | None = None,
        head: str = "mlp",
    ) -> None:
        super().__init__()
        if kind not in SEQUENCE_KINDS:
            raise ValueError(f"head kind={kind!r}; choose one of {SEQUENCE_KINDS}")
        if pool not in POOLS:
            raise ValueError(f"head pool={pool!r}; choose one of {POOLS}")
        least = 2 if kind == "classification" else 1
        if num_outputs < least:
            raise ValueError(f"a {kind} head needs num_outputs >= {least}, got {num_outputs}")
        if names is not None and len(names) != num_outputs:
            raise ValueError(f"{len(names)} names for a head with {num_outputs} outputs")
        self.d_model, self.num_outputs, self.kind, self.pool = d_model, num_outputs, kind, pool
        self.names = list(names) if names is not None else None
        in_dim = d_model * (2 if pool == "both" else 1)
        self.add_module(head, _network(head, in_dim, d_model, num_outputs))
        self.head = head
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))

    def config(self) -> dict:
        """What `build_task_head` needs to rebuild this head (weights travel separately)."""
        return {
            "type": "sequence",
            "d_model": self.d_model,
            "num_outputs": self.num_outputs,
            "kind": self.kind,
            "pool": self.pool,
            "names": self.names,
            "head": self.head,
        }

    @property
    def network(self) -> nn.Module:
        """The MLP or the linear layer on the pooled vector."""
        return getattr(self, self.head)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-target mean and std of the training targets (regression only)."""
        if self.kind != "regression":
            raise ValueError("set_normalization is for regression heads")
        std = torch.as_tensor(std, dtype=self.target_std.dtype).reshape(self.num_outputs)
        if not bool((std > 0).all()):
            raise ValueError(f"target std must be > 0 (a constant target cannot train): {std}")
        self.target_mean.copy_(torch.as_tensor(mean).reshape(self.num_outputs))
        self.target_std.copy_(std)

    def pooled(
        self, memory: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (b, d) or (b, 2d) vector the head reads, before its network."""
        parts = []
        if self.pool in ("memory", "both"):
            if memory.shape[1] == 0:
                raise ValueError("head pool=memory needs memory tokens; use pool=mean")
            parts.append(memory.mean(1))
        if self.pool in ("mean", "both"):
            if mask is None:
                parts.append(hidden.mean(1))
            else:
                weights = mask.to(hidden.dtype)[..., None]
                parts.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1))
        return torch.cat(parts, -1)

    def forward(
        self, memory: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(b, m, d) memory, (b, s, d) hidden, (b, s) mask -> (b, k) logits or values."""
        out = self.network(self.pooled(memory, hidden, mask))
        if self.kind == "regression":
            out = out * self.target_std + self.target_mean
        return out

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(b,) per-sample loss: cross-entropy (targets long (b,)) or MSE summed over the
        outputs in normalised units (targets float (b, k), or (b,) for one output)."""
        if self.kind == "classification":
            return F.cross_entropy(_at_least_fp32(outputs), targets.long(), reduction="none")
        outputs = _at_least_fp32(outputs)
        targets = targets.to(outputs.dtype).reshape(outputs.shape)
        return (((outputs - targets) / self.target_std) ** 2).sum(-1)


class TokenClassificationHead(nn.Module):
    """Per-base classes from BPE tokens: each token's hidden state gives logits for every
    base it spans, up to `max_token_bases` (rmt.token_bases maps labels and predictions
    between bases and tokens). A segment head: `loss(hidden, labels)` is (sum, count);
    `head` is the network on each hidden state (`HEADS`)."""

    def __init__(
        self,
        d_model: int,
        num_classes: int,
        max_token_bases: int,
        names: list[str] | None = None,
        head: str = "mlp",
    ) -> None:
        super().__init__()
        if num_classes < 2 or max_token_bases < 1:
            raise ValueError(
                f"a token head needs num_classes >= 2 (got {num_classes}) and "
                f"max_token_bases >= 1 (got {max_token_bases})"
            )
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} names for a head with {num_classes} classes")
        self.d_model, self.num_classes = d_model, num_classes
        self.max_token_bases = max_token_bases
        self.names = list(names) if names is not None else None
        self.add_module(head, _network(head, d_model, d_model, max_token_bases * num_classes))
        self.head = head

    def config(self) -> dict:
        """What `build_task_head` needs to rebuild this head (weights travel separately)."""
        return {
            "type": "token",
            "d_model": self.d_model,
            "num_classes": self.num_classes,
            "max_token_bases": self.max_token_bases,
            "names": self.names,
            "head": self.head,
        }

    @property
    def network(self) -> nn.Module:
        """The MLP or the linear layer on each hidden state."""
        return getattr(self, self.head)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(b, t, d) -> (b, t, max_token_bases, num_classes) logits."""
        logits = self.network(hidden)
        return logits.unflatten(-1, (self.max_token_bases, self.num_classes))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over labelled bases and their count (both 0-dim).

        labels (b, t, max_token_bases), IGNORE_INDEX where a token has no such base or the
        base is unlabelled; only tokens with a labelled base go through the network.
        """
        selected = (labels != IGNORE_INDEX).any(-1)
        logits, chosen = _at_least_fp32(self(hidden[selected])), labels[selected]
        total = F.cross_entropy(
            logits.reshape(-1, self.num_classes),
            chosen.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total, (chosen != IGNORE_INDEX).sum()


def build_task_head(config: dict) -> SequenceHead | TokenClassificationHead:
    """Rebuild a task head from its `config()` (what a checkpoint's config.json keeps)."""
    kinds = {"sequence": SequenceHead, "token": TokenClassificationHead}
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"task head type={kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](**options)
