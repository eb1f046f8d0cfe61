"""A run's stateful parts, saved and restored in one place (torchtitan's `Stateful`).

`TrainState` is a registry: each part has `state_dict()` and `load_state_dict(state)`
and is saved under its name in `trainer_state.pt`, so adding a part to a run is one line
where the run is built. `Checkpointer` writes and reads a checkpoint directory through
`rmt.checkpoint`: the runner's weights as safetensors (loadable without the training
code), the registry beside them, and whatever the strategy keeps in its own files
(DeepSpeed's shards).

The training data needs no part: every sample is drawn from (seed, step, index), so a
resumed run draws the same batches from the step count alone.

A run that names a validation metric (`rmt.best.BestCheckpoint`) also keeps
`checkpoints/best/`, the model of its best evaluation so far.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError

from rmt.best import BEST, BestCheckpoint
from rmt.checkpoint import (
    remove_stale_temps,
    resolve_checkpoint,
    runner_config,
    save_checkpoint,
    verify_tokenizer,
    write_latest,
)
from rmt.hf_encoder import HF_KEY
from rmt.strategy import World, barrier

TRAINER_STATE = "trainer_state.pt"
#: saved settings a resumed run may change: they do not shape the weights or their meaning
#: (model.source: where a Hugging Face encoder was read from; its weights are in the checkpoint)
MAY_CHANGE = {"model.init_std", "model.source", "memory.backprop", "memory.bptt_depth"}
#: keys of a Hugging Face model's config that name its copy, not the model
HF_COPY_KEYS = ("_name_or_path", "transformers_version")


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, most often): one line, exit 2."""


def comparable_encoder(encoder: dict) -> dict:
    """An encoder config as config.json holds it (JSON types: an HF config's int keys
    become strings), a wrapped HF model's config spread into `hf.<key>` entries."""
    values = json.loads(json.dumps(encoder))
    hf = values.pop(HF_KEY, None) or {}
    return {**values, **{f"hf.{k}": v for k, v in hf.items() if k not in HF_COPY_KEYS}}


def model_differences(checkpoint: Path, runner) -> list[str]:
    """`key=saved (this run: value)` for each model or memory setting that differs from
    the one `checkpoint` was trained with (its config.json, verified already)."""
    saved = json.loads((checkpoint / "config.json").read_text())
    encoder, current = saved.get("encoder", {}), runner.encoder.config.to_dict()
    if (HF_KEY in encoder) != (HF_KEY in current):  # this project's encoder vs an HF one
        return [f"model.hf={encoder.get('source')!r} (this run: {current.get('source')!r})"]
    pairs = [
        ("model", comparable_encoder(encoder), comparable_encoder(current)),
        ("memory", saved.get("runner", {}), runner_config(runner)),
    ]
    return [
        f"{section}.{key}={was[key]!r} (this run: {now[key]!r})"
        for section, was, now in pairs
        for key in sorted(set(was) & set(now))
        if key != "vocab_size" and f"{section}.{key}" not in MAY_CHANGE and was[key] != now[key]
    ]


def check_same_model(checkpoint: Path, runner) -> None:
    """Refuse to resume a checkpoint into a differently configured model, in one line."""
    differs = model_differences(checkpoint, runner)
    if differs:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was trained with {'; '.join(differs)}; "
            "resume with the settings it was trained with, or start a new run directory "
            "(hydra.run.dir=...)"
        )


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
    """Checkpoints of one run: `checkpoints/step-XXXXXXXX/` and `checkpoints/latest`, and
    `checkpoints/best/` when `best` names the metric that picks it."""

    def __init__(
        self, run_dir: Path, state: TrainState, strategy, runner, tokenizer, world: World,
        keep: int, config: dict, best: BestCheckpoint | None = None,
    ) -> None:  # fmt: skip
        self.directory = Path(run_dir) / "checkpoints"
        self.state, self.strategy, self.world = state, strategy, world
        self.runner, self.tokenizer = runner, tokenizer
        self.keep, self.config, self.best = keep, config, best

    def observe(self, step: int, metrics: dict) -> bool:
        """After an evaluation: write `checkpoints/best` when `metrics` beat the best so far.

        True when it did. Every rank calls it (ZeRO-3 gathers the weights from all).
        """
        if self.best is None or not metrics or not self.best.improves(metrics):
            return False
        self.best.record(step, metrics)
        with self.strategy.gathered():
            if self.world.is_main:
                self._write(BEST, None, {"step": step, BEST: self.best.entry()})
        barrier(self.world)
        return True

    def save(self, step: int) -> None:
        """Every part, on every rank (ZeRO shards); `latest` moves once all are written."""
        name = f"step-{step:08d}"
        with self.strategy.gathered():
            if self.world.is_main:
                trainer_state = {"step": step, "config": self.config, **self.state.state_dict()}
                self._write(name, trainer_state, {"step": step})
        barrier(self.world)
        self.strategy.save_files(self.directory / name)
        barrier(self.world)
        if self.world.is_main:
            try:
                write_latest(self.directory, name, self.keep)
            except OSError as err:  # named after `latest`, not its vanished temp file
                raise OSError(err.errno, err.strerror, str(self.directory / "latest")) from err

    def _write(self, name: str, trainer_state: dict | None, metadata: dict) -> None:
        """`save_checkpoint`, its I/O failures as one line naming the directory.

        safetensors and torch.save report a full disk as their own exception types
        (SafetensorError, RuntimeError), without the path; the temp directory is gone
        already (`save_checkpoint` removes it) and `latest` still names the last one.
        """
        directory = self.directory / name
        try:
            save_checkpoint(directory, self.runner, self.tokenizer, trainer_state, metadata)
        except (OSError, RuntimeError, SafetensorError) as err:
            reason = (getattr(err, "strerror", None) or str(err)).splitlines()[0]
            raise CheckpointWriteError(
                f"could not write checkpoint {directory}: {reason} (a full disk? see "
                f"`df -h {self.directory}`); free space or move the run, then rerun to "
                "resume from the last checkpoint"
            ) from err

    def last_saved(self) -> str:
        """Where the last good checkpoint is, in words (for a message that stops a run)."""
        latest = self.directory / "latest"
        if latest.is_file():
            return f"the last one, {self.directory / latest.read_text().strip()}, is kept"
        return "and there is no earlier checkpoint"

    def restore(self) -> Path | None:
        """Load the newest valid checkpoint into every part; None when the run has none yet.

        Temp directories of writes that were killed are removed first (rank 0). The best
        checkpoint's value is read back too, even when no step checkpoint was written yet.
        """
        if self.world.is_main and self.directory.is_dir():
            remove_stale_temps(self.directory)
        barrier(self.world)
        if self.best is not None:
            self.best.load(self.directory / BEST)
        if not (self.directory / "latest").is_file():
            return None
        checkpoint = resolve_checkpoint(self.directory.parent)
        check_same_model(checkpoint, self.runner)
        verify_tokenizer(checkpoint, self.tokenizer)
        path = checkpoint / TRAINER_STATE
        trainer_state = torch.load(path, weights_only=False)
        self.strategy.load_files(checkpoint)
        self.state.load_state_dict(trainer_state, path)
        return checkpoint
