"""The `checkpoints/` folder of a run: `latest`, pruning, fallback, leftovers of kills.

    checkpoints/
      step-00000200/  step-00000300/   (each written atomically by `save_checkpoint`)
      latest                           (names the newest complete step directory)
      .step-00000400.k2j1x8/           (a write that was killed: `remove_stale_temps`)

Resuming and loading a run go through `resolve_checkpoint`, which verifies the checkpoint
`latest` names and falls back to the newest intact one; pruning (`write_latest`) never
deletes what `latest` names.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from data.atomic import atomic_path
from rmt.integrity import CheckpointError, verify_checkpoint

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A verified checkpoint directory from itself, a run directory, or its `checkpoints/`.

    A checkpoint directory named directly must be intact (CheckpointError otherwise). In a
    run, the one `latest` names is used when intact, else the newest intact one with a
    warning: one damaged checkpoint (a full disk, a bad copy) should cost the steps since
    the one before, not the run.
    """
    path = Path(path)
    if any((path / name).is_file() for name in ("config.json", "model.safetensors")):
        verify_checkpoint(path)
        return path
    for folder in (path / "checkpoints", path):
        latest = folder / "latest"
        if latest.is_file():
            return _latest_or_newest_valid(folder, latest)
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a directory with config.json and "
        "model.safetensors, or a run directory with checkpoints/latest"
    )


def _latest_or_newest_valid(folder: Path, latest: Path) -> Path:
    named = folder / latest.read_text(errors="replace").strip()
    try:
        verify_checkpoint(named)
        return named
    except CheckpointError as err:
        fallback = newest_valid(folder, skip=named)
        if fallback is None:
            raise CheckpointError(
                f"{err.problem}; {folder} holds no other intact checkpoint",
                fix=f"remove {folder} to start over",
            ) from err
        log.warning("%s; using the newest intact checkpoint, %s", err.problem, fallback)
        return fallback


def newest_valid(checkpoints: Path, skip: Path | None = None) -> Path | None:
    """The newest `step-*` directory of `checkpoints` that passes `verify_checkpoint`."""
    for candidate in sorted(checkpoints.glob("step-*"), reverse=True):
        if candidate == skip or not candidate.is_dir():
            continue
        try:
            verify_checkpoint(candidate)
        except CheckpointError as err:
            log.warning("skipping damaged checkpoint: %s", err.problem)
            continue
        return candidate
    return None


def remove_stale_temps(checkpoints: str | Path) -> list[Path]:
    """Delete what killed checkpoint writes left in `checkpoints`; return what was removed.

    That is `.step-*.<random>` and `.best.<random>` temp directories (`save_checkpoint`)
    and `.latest.*.tmp` files (`write_latest`). Call it at start, before this process
    writes checkpoints, and only while no other process writes into the same directory
    (the run's lock): another writer's temp directory is indistinguishable from a dead one.
    """
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    stale = [*checkpoints.glob(".step-*.*"), *checkpoints.glob(".best.*"),
             *checkpoints.glob(".latest.*.tmp")]  # fmt: skip
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d leftover(s) of interrupted checkpoint writes in %s",
                    len(stale), checkpoints)  # fmt: skip
    return stale


def write_latest(checkpoints: Path, name: str, keep: int) -> None:
    """Point `latest` at a finished checkpoint, then prune all but the newest `keep`.

    Pruning never removes what `latest` names (even when it is not among the newest, after
    a fallback resume) nor the newest. Pruned directories are first renamed to a hidden
    name, so a kill mid-deletion leaves no half-deleted `step-*` behind.
    """
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1: `latest` needs a checkpoint to name")
    with atomic_path(checkpoints / "latest") as tmp:
        tmp.write_text(name + "\n")
    steps = sorted(p for p in checkpoints.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != name:
            trash = old.with_name(f".{old.name}.pruned")
            os.replace(old, trash)
            shutil.rmtree(trash)
