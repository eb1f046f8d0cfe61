"""How a model reads a long sequence at evaluation: the memory modes, all in one place.

- `carried`: the runner as trained: each segment reads the memory the previous one wrote.
- `reset`: every segment starts from the learned initial memory, so each output sees its
  own segment only (and a sequence head, at the last segment, the last segment only).
- `segment_average` (sequence heads): every segment is run alone, as in `reset`, and the
  head's outputs (logits or values) are averaged over the segments: the no-memory
  baseline that memory has to beat.

`reset` and `segment_average` fold the segments into the batch (each becomes a
one-segment sequence), run `batch size` of them at a time, and unfold the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rmt.runner import MemoryRunner

MEMORY_MODES = ("carried", "reset", "segment_average")


@dataclass
class Pass:
    """A batch read in one memory mode.

    hidden: (b, T, d) content hidden states (padding positions hold no meaning).
    memory: (b, m, d) the memory after each sample's last segment.
    final_outputs: (b, k) the sequence head's outputs, when one was given.
    """

    hidden: torch.Tensor
    memory: torch.Tensor
    final_outputs: torch.Tensor | None


def check_memory_mode(memory: str, allowed: tuple[str, ...] = MEMORY_MODES) -> None:
    if memory not in allowed:
        raise ValueError(f"memory={memory!r}; choose one of {allowed}")


def read(
    runner: MemoryRunner,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    memory: str = "carried",
    final_head: torch.nn.Module | None = None,
) -> Pass:
    """Run right-padded (b, T) tokens through `runner` in memory mode `memory`."""
    check_memory_mode(memory)
    if memory == "carried":
        out = runner(input_ids, attention_mask, return_hidden=True, final_head=final_head)
        return Pass(out.hidden, out.memory, out.final_outputs)
    return _segments_alone(runner, input_ids, attention_mask.bool(), memory, final_head)


@torch.no_grad()
def outputs_by_segment(
    runner: MemoryRunner,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    final_head: torch.nn.Module,
    memory: str = "carried",
) -> torch.Tensor:
    """(b, n, k): the sequence head read after each of the n segments, NaN past a
    sequence's end.

    Row j is what the model predicts from the first j + 1 segments (`carried`), from
    segment j alone (`reset`), or from the mean over segments 0..j alone
    (`segment_average`): one pass gives the prediction at every context length.
    """
    check_memory_mode(memory)
    mask = attention_mask.bool()
    initial = runner.init_memory(input_ids.shape[0])
    state, rows = initial, []
    for ids, seg_mask in zip(input_ids.split(runner.segment_tokens, 1),
                             mask.split(runner.segment_tokens, 1), strict=True):  # fmt: skip
        out, new_memory = runner.step(ids, state if memory == "carried" else initial, seg_mask)
        outputs = final_head(out.memory, out.hidden, seg_mask).float()
        rows.append(outputs.masked_fill(~seg_mask.any(1)[:, None], float("nan")))
        state = new_memory
    outputs = torch.stack(rows, 1)
    return running_mean(outputs) if memory == "segment_average" else outputs


def running_mean(outputs: torch.Tensor) -> torch.Tensor:
    """(b, n, k) -> row j the mean of rows 0..j: `reset` outputs by segment become
    `segment_average` ones."""
    counts = torch.arange(1, outputs.shape[1] + 1, device=outputs.device)[None, :, None]
    return outputs.cumsum(1) / counts


def _segments_alone(runner, input_ids, mask, memory, final_head) -> Pass:
    """`reset` / `segment_average`: every segment a one-segment sequence of its own."""
    (b, t), s = input_ids.shape, runner.segment_tokens
    n = -(-t // s)
    ids = F.pad(input_ids, (0, n * s - t)).reshape(b * n, s)
    rows_mask = F.pad(mask, (0, n * s - t)).reshape(b * n, s)
    rows = rows_mask.any(1).nonzero()[:, 0]  # segments with content
    outs = [
        runner(ids[chunk], rows_mask[chunk], return_hidden=True, final_head=final_head)
        for chunk in rows.split(max(b, 1))
    ]
    hidden = outs[0].hidden.new_zeros(b * n, s, outs[0].hidden.shape[-1])
    hidden[rows] = torch.cat([o.hidden for o in outs])
    # Each sample's last segment, as a position among the rows that were run.
    position = torch.full((b * n,), -1, dtype=torch.long, device=ids.device)
    position[rows] = torch.arange(len(rows), device=ids.device)
    last = position[torch.arange(b, device=ids.device) * n + (mask.sum(1) - 1) // s]
    final = None
    if final_head is not None:
        outputs = torch.cat([o.final_outputs for o in outs])
        final = outputs[last] if memory == "reset" else _mean_per_sample(outputs, rows // n, b)
    memories = torch.cat([o.memory for o in outs])
    return Pass(hidden.reshape(b, n * s, -1)[:, :t], memories[last], final)


def _mean_per_sample(outputs: torch.Tensor, sample: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of the rows of `outputs` that belong to each sample."""
    sums = outputs.new_zeros(batch, outputs.shape[-1]).index_add_(0, sample, outputs)
    counts = torch.bincount(sample, minlength=batch).clamp(min=1).to(outputs.dtype)
    return sums / counts[:, None]
