"""A mixture-of-experts MLP (Switch / GShard / Mixtral style) for the native encoder.

Each position's router picks its `top_k` experts (softmax over experts in fp32, top-k,
weights renormalised over the chosen k, as Mixtral does); its output is the weighted sum
of those experts' outputs. Dropless by default: every assignment runs. The assignments
are sorted by expert and each expert runs on its own rows (`index_select`, then
`index_add_` back), so compute is top_k experts per position, never experts x positions.

Two auxiliary losses keep the router healthy, summed per forward into `aux_loss`:
- load balancing (Switch, GShard): `E * sum_e f_e * P_e`, f_e the fraction of
  assignments routed to expert e, P_e its mean router probability; 1 when routing is
  uniform, up to E when every position goes to one expert; weighted `moe_aux_weight`;
- router z-loss (ST-MoE): mean logsumexp(logits)^2, weighted `moe_z_weight`; it keeps
  the logits small, where the fp32 softmax is well conditioned.

Padding positions are not routed at all: their output is 0 (the residual passes) and
they enter neither the aux losses nor the capacity nor the statistics. Memory tokens are
positions like any other.

The model code reads two things off the layers after a forward, through the functions
at the bottom (they walk any module tree: an encoder, a runner, a wrapped model):
`take_aux_loss` (the runner adds it to the segment's loss) and the expert statistics
(`expert_load`, `moe_metrics`: what the training loop logs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from rmt.encoder import EncoderConfig


class MoEMLP(nn.Module):
    """`n_experts` expert MLPs (built by the encoder) behind a linear router.

    With `moe_capacity_factor` set, expert e takes at most
    ceil(factor * assignments / n_experts) assignments, first come (batch-major, then
    position) first served; an assignment over capacity is dropped: it adds nothing to
    its position's output (a position that loses all its experts passes the residual).
    """

    def __init__(self, config: EncoderConfig, experts: list[nn.Module]) -> None:
        super().__init__()
        self.top_k, self.capacity_factor = config.moe_top_k, config.moe_capacity_factor
        self.aux_weight, self.z_weight = config.moe_aux_weight, config.moe_z_weight
        self.router = nn.Linear(config.d_model, len(experts), bias=False)
        self.experts = nn.ModuleList(experts)
        self.aux_loss: torch.Tensor | None = None  # of the last forward, until taken
        self.reset_stats()

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def reset_stats(self) -> None:
        """Forget the assignments and aux losses counted so far (`expert_load`)."""
        self.assigned: torch.Tensor | None = None  # (E,) int64: assignments per expert
        self.aux_total, self.forwards = 0.0, 0

    def route(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For rows x (rows, d): router logits (rows, E) in at least fp32, probabilities,
        and each row's top_k experts (rows, k) with their weights renormalised to sum to 1."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        # Outside autocast: bf16 logits would flip near-ties between experts.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))
        probs = logits.softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        return logits, probs, chosen, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., d) -> (..., d); `valid` (x's leading shape, True = a real position)."""
        tokens = x.reshape(-1, x.shape[-1])
        rows = tokens.shape[0]
        valid = torch.ones(rows, dtype=torch.bool, device=x.device) if valid is None else valid
        valid = valid.reshape(rows)
        logits, probs, chosen, weights = self.route(tokens)
        # One entry per (row, choice), numbered row * k + choice; padding's entries go to
        # a last bucket, E, that no expert runs.
        bucket = torch.where(valid[:, None], chosen, self.n_experts).reshape(-1)
        order = bucket.argsort(stable=True)  # stable: row order within each expert
        sizes = torch.bincount(bucket, minlength=self.n_experts + 1)
        self._observe(logits, probs, sizes[:-1], valid)
        sizes = sizes.tolist()
        capacity = self._capacity(sum(sizes[:-1]))
        per_expert = order.split(sizes)[: self.n_experts]
        out, flat_weights = torch.zeros_like(tokens), weights.reshape(-1)
        for expert, entries in zip(self.experts, per_expert, strict=True):
            entries = entries[:capacity]  # no rows at all still gives (zero) gradients
            row = entries // self.top_k
            y = expert(tokens.index_select(0, row)) * flat_weights[entries, None]
            out.index_add_(0, row, y.to(out.dtype))
        return out.reshape(x.shape)

    def _capacity(self, assignments: int) -> int | None:
        """Assignments each expert takes (None: all of them, dropless)."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * assignments / self.n_experts)

    def _observe(self, logits, probs, assigned, valid) -> None:
        """The aux losses over the valid rows (into `aux_loss`) and the running statistics."""
        n = valid.sum().clamp(min=1)
        keep = valid[:, None].to(probs.dtype)
        fraction = assigned.to(probs.dtype) / (n * self.top_k)  # f_e; no gradient (counts)
        mean_prob = (probs * keep).sum(0) / n  # P_e
        balance = self.n_experts * (fraction * mean_prob).sum()
        z = (logits.logsumexp(-1) ** 2 * keep[:, 0]).sum() / n
        self.aux_loss = self.aux_weight * balance + self.z_weight * z
        self.assigned = assigned if self.assigned is None else self.assigned + assigned
        self.aux_total = self.aux_total + self.aux_loss.detach()
        self.forwards += 1


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    """The MoE layers of any module tree (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def take_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the layers' aux losses of the last forward (None without experts), and
    forget them, so no module keeps the router's graph alive past its use."""
    layers = moe_layers(model)
    losses = [m.aux_loss for m in layers if m.aux_loss is not None]
    for layer in layers:
        layer.aux_loss = None
    return torch.stack(losses).sum() if losses else None


def expert_load(model: nn.Module) -> torch.Tensor | None:
    """(layers, E): each layer's fraction of assignments per expert since the last reset
    (1 / E each when balanced). A forward recomputed in the backward (backprop=checkpoint
    or replay) counts again, like any other forward."""
    counted = [m.assigned for m in moe_layers(model) if m.assigned is not None]
    if not counted:
        return None
    load = torch.stack(counted).double()
    return load / load.sum(1, keepdim=True).clamp(min=1)


def reset_moe_stats(model: nn.Module) -> None:
    """Start counting afresh (the training loop does before every step)."""
    for layer in moe_layers(model):
        layer.reset_stats()


def moe_metrics(model: nn.Module) -> dict:
    """What a metrics line records of the experts since the last reset: `moe_aux` (the
    mean per forward of the aux loss summed over layers) and each layer's lowest and
    highest expert load (`moe_load_min`, `moe_load_max`); {} without experts."""
    layers, load = moe_layers(model), expert_load(model)
    if load is None:
        return {}
    forwards = max(layers[0].forwards, 1)
    aux = sum(float(m.aux_total) for m in layers) / forwards
    return {
        "moe_aux": aux,
        "moe_load_min": [round(v, 4) for v in load.min(1).values.tolist()],
        "moe_load_max": [round(v, 4) for v in load.max(1).values.tolist()],
    }


__all__ = [
    "MoEMLP",
    "expert_load",
    "moe_layers",
    "moe_metrics",
    "reset_moe_stats",
    "take_aux_loss",
]
