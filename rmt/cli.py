"""Shared plumbing for the Hydra command-line apps: user errors, run metadata, devices."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from data.atomic import atomic_path

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


@contextlib.contextmanager
def user_errors(program: str) -> Iterator[None]:
    """Turn a user's mistake (bad path, bad FASTA, bad config value) into a short message.

    The message already names the file, record or key and the fix; a traceback would
    only bury it. Set RMT_DEBUG=1 to get the traceback anyway.
    """
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("RMT_DEBUG"):
            raise
        print(f"{program}: error: {err}", file=sys.stderr)
        print(f"{program}: (set RMT_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


class MetricsLog:
    """Append-only JSON lines, flushed per record so a crash loses at most one line."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON atomically: a temp file beside the target, then a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (auto: bf16 on CUDA, fp32 elsewhere), None = off."""
    choices = {"fp32": None, "bf16": torch.bfloat16}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in choices:
        raise ValueError(f"trainer.precision={precision!r}; choose auto, fp32 or bf16")
    return choices[precision]
