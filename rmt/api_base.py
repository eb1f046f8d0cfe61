"""What every API model shares: a runner and its tokenizer, collate, batching, loading.

The task classes (rmt.api, rmt.api_tasks) add `__call__(batch)` returning a result
dataclass whose fields are per-sequence arrays (batch first) or per-sequence lists, so
`predict` can run any number of sequences in batches and merge the results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from data import DNATokenizer
from rmt.api_memory import check_memory_mode
from rmt.checkpoint import load_model
from rmt.hf_runner import bare_hf_model, is_hf_encoder_dir
from rmt.runner import MemoryRunner
from rmt.state import BEST


@dataclass
class Batch:
    """Tokenised sequences, right-padded: ids and mask (b, T); per sequence its token
    [start, end) bp offsets (for per-base outputs) and the sequence itself."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[np.ndarray]
    sequences: list[str]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def merge_results(parts: list):
    """One result from per-batch results: arrays concatenated, lists joined."""
    values = {}
    for f in fields(parts[0]):
        items = [getattr(p, f.name) for p in parts]
        if items[0] is None:
            values[f.name] = None
        elif isinstance(items[0], np.ndarray):
            values[f.name] = np.concatenate(items)
        else:
            values[f.name] = [x for item in items for x in item]
    return type(parts[0])(**values)


class PretrainedModel:
    """Runner + tokenizer + memory mode: collate, batching, loading."""

    memory_modes: tuple[str, ...] = ("carried", "reset")

    def __init__(
        self,
        runner: MemoryRunner,
        tokenizer: DNATokenizer,
        memory: str = "carried",
        source: str = "this model",
    ) -> None:
        check_memory_mode(memory, self.memory_modes)
        self.runner, self.tokenizer, self.memory = runner.eval(), tokenizer, memory
        self.source = source  # where the model came from, for error messages

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        kernels: str = "auto",
        **options,
    ):
        """Load a checkpoint directory or a run directory: a fine-tuning run's best model
        (checkpoints/best, the one its test.json scores), else the run's newest intact
        checkpoint; or a bare Hugging Face encoder directory (GENA-LM's, say), run without
        memory (`rmt.hf_runner.bare_hf_model`). `options` go to the constructor (memory=,
        both_strands=, ...)."""
        best = Path(path) / "checkpoints" / BEST
        if is_hf_encoder_dir(path):
            runner, tokenizer = bare_hf_model(path, kernels=kernels, key="path")
            runner.to(device)
        else:
            chosen = best if (best / "config.json").is_file() else path
            runner, tokenizer = load_model(chosen, device=device, kernels=kernels)
        return cls(runner, tokenizer, source=str(path), **options)

    @property
    def device(self) -> torch.device:
        return self.runner.memory.weight.device

    def collate(self, sequences: list[str]) -> Batch:
        """Tokenise `sequences` (any lengths) and right-pad them into one batch."""
        encodings = [self.tokenizer.encode(seq) for seq in sequences]
        empty = [i for i, enc in enumerate(encodings) if len(enc) == 0]
        if empty:
            raise ValueError(f"sequence {empty[0]} of the batch is empty: give it some bases")
        width = max(len(enc) for enc in encodings)
        ids = torch.full((len(encodings), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encodings), width), dtype=torch.bool)
        for i, enc in enumerate(encodings):
            ids[i, : len(enc)] = torch.from_numpy(enc.ids)
            mask[i, : len(enc)] = True
        return Batch(
            ids.to(self.device),
            mask.to(self.device),
            [enc.offsets for enc in encodings],
            list(sequences),
        )

    def predict(self, sequences: list[str], batch_size: int = 8):
        """`self(self.collate(...))` over `sequences` in batches, merged into one result."""
        if not sequences:
            raise ValueError("predict needs at least one sequence")
        chunks = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
        return merge_results([self(self.collate(chunk)) for chunk in chunks])

    def task_head(self, head_type: type, task: str, kind: str | None = None) -> torch.nn.Module:
        """The runner's fine-tuned head, checked to be a `head_type` (of `kind`) for `task`."""
        head, source = getattr(self.runner, "task_head", None), self.source
        if head is None:
            raise ValueError(
                f"{source} holds a pre-trained model without a task head; fine-tune one "
                f"first: rmt-finetune task={task} checkpoint={source} data.train=train.csv "
                "data.valid=valid.csv data.test=test.csv, then load the run it writes"
            )
        if not isinstance(head, head_type) or getattr(head, "kind", kind) != kind:
            raise ValueError(
                f"{source} holds a {type(head).__name__} ({head.config()}), not a {task} "
                "head; load it with the API class of its task"
            )
        return head
