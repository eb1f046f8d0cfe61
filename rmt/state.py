"""A run's stateful parts, saved and restored in one place (torchtitan's `Stateful`).

`TrainState` is a registry: each part has `state_dict()` and `load_state_dict(state)`
and is saved under its name in `trainer_state.pt`, so adding a part to a run is one line
where the run is built. `Checkpointer` writes and reads a checkpoint directory through
`rmt.checkpoint`: the runner's weights as safetensors (loadable without the training
code), the registry beside them, and whatever the strategy keeps in its own files
(DeepSpeed's shards).

The training data needs no part: every sample is drawn from (seed, step, index), so a
resumed run draws the same batches from the step count alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from rmt.checkpoint import (
    remove_stale_temps,
    resolve_checkpoint,
    save_checkpoint,
    verify_tokenizer,
    write_latest,
)
from rmt.strategy import World, barrier

TRAINER_STATE = "trainer_state.pt"


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TrainState:
    """Named stateful parts, saved and restored together."""

    def __init__(self, **parts: Stateful) -> None:
        self.parts = parts

    def state_dict(self) -> dict[str, dict]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, dict], source: Path | None = None) -> None:
        missing = sorted(set(self.parts) - set(state))
        if missing:
            raise ValueError(
                f"{source or 'trainer state'} has no {missing} (written by another version "
                "of rmt-train?): resume into a new run directory, or set trainer.resume=false"
            )
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


class TorchRNG:
    """torch's global generators (dropout), CPU and every CUDA device."""

    def state_dict(self) -> dict:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Values:
    """Plain values that must survive a restart (e.g. the evaluation before training)."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: dict) -> None:
        self.values.update(state)


class Checkpointer:
    """Checkpoints of one run: `checkpoints/step-XXXXXXXX/` and `checkpoints/latest`."""

    def __init__(
        self, run_dir: Path, state: TrainState, strategy, runner, tokenizer, world: World,
        keep: int, config: dict,
    ) -> None:  # fmt: skip
        self.directory = Path(run_dir) / "checkpoints"
        self.state, self.strategy, self.world = state, strategy, world
        self.runner, self.tokenizer = runner, tokenizer
        self.keep, self.config = keep, config

    def save(self, step: int) -> None:
        """Every part, on every rank (ZeRO shards); `latest` moves once all are written."""
        name = f"step-{step:08d}"
        with self.strategy.gathered():
            if self.world.is_main:
                trainer_state = {"step": step, "config": self.config, **self.state.state_dict()}
                save_checkpoint(
                    self.directory / name, self.runner, self.tokenizer, trainer_state,
                    {"step": step},
                )  # fmt: skip
        barrier(self.world)
        self.strategy.save_files(self.directory / name)
        barrier(self.world)
        if self.world.is_main:
            write_latest(self.directory, name, self.keep)

    def restore(self) -> Path | None:
        """Load the newest valid checkpoint into every part; None when the run has none yet.

        Temp directories of writes that were killed are removed first (rank 0).
        """
        if self.world.is_main and self.directory.is_dir():
            remove_stale_temps(self.directory)
        barrier(self.world)
        if not (self.directory / "latest").is_file():
            return None
        checkpoint = resolve_checkpoint(self.directory.parent)
        verify_tokenizer(checkpoint, self.tokenizer)
        path = checkpoint / TRAINER_STATE
        trainer_state = torch.load(path, weights_only=False)
        self.strategy.load_files(checkpoint)
        self.state.load_state_dict(trainer_state, path)
        return checkpoint
