"""Shared plumbing for the Hydra command-line apps: user errors, run metadata, devices."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra.experimental.callback import Callback

from data.atomic import atomic_path

USER_ERRORS = (ValueError, OSError)

#: what the user can do about an OS error at a path they chose (a full disk, a
#: read-only or forbidden directory, a file where a directory belongs)
OS_FIXES = {
    errno.ENOSPC: "free space there or choose another directory",
    errno.EDQUOT: "free space (disk quota) or choose another directory",
    errno.EACCES: "fix its permissions or choose another directory",
    errno.EPERM: "fix its permissions or choose another directory",
    errno.EROFS: "choose a writable directory",
    errno.ENOTDIR: "a file is in the way: choose another path",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.EISDIR: "a directory is in the way: choose another path",
    errno.ENOENT: "check the path",
}


def describe(err: BaseException) -> str | None:
    """The one-line message for a user error, or None when `err` is not one (a bug).

    An OS error reads `path: reason; fix` (e.g. `runs/x/metrics.jsonl: No space left on
    device; free space there ...`); one raised with a message only (FileNotFoundError(
    "no checkpoint at ...")) is that message.
    """
    if isinstance(err, ValueError):
        return str(err)
    if not isinstance(err, OSError):
        return None
    if err.errno is None:
        return str(err)
    if err.errno not in OS_FIXES:
        return None
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror}; {OS_FIXES[err.errno]}"


@contextlib.contextmanager
def user_errors(program: str) -> Iterator[None]:
    """Turn a user's mistake (bad path, bad FASTA, bad config value, full disk) into a
    short message and exit 2.

    The message already names the file, record or key and the fix; a traceback would
    only bury it. Set RMT_DEBUG=1 to get the traceback anyway.
    """
    try:
        yield
    except USER_ERRORS as err:
        message = describe(err)
        if message is None or os.environ.get("RMT_DEBUG"):
            raise
        print(f"{program}: error: {message}", file=sys.stderr)
        print(f"{program}: (set RMT_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


class OutputDirCheck(Callback):
    """Hydra callback: create the run (or sweep) directory before Hydra does, as a user
    error when it cannot be (a file in the way, no permission, a read-only disk).

    Hydra's own attempt comes before the app's `user_errors` and ends in a traceback.
    `program` is the app's name for the message (conf: `hydra.callbacks.<name>.program`).
    """

    def __init__(self, program: str = "rmt") -> None:
        self.program = program

    def on_run_start(self, config, **kwargs) -> None:
        self._create(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._create(config.hydra.sweep.dir)

    def _create(self, directory: str) -> None:
        with user_errors(self.program):
            path = Path(directory)
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", str(path))
            path.mkdir(parents=True, exist_ok=True)


def json_safe(value):
    """`value` with every NaN and infinity replaced by None (JSON's null).

    Python's json writes them as bare `NaN` / `Infinity`, which is not JSON: strict
    parsers (jq, JavaScript, pandas' default) reject the whole file.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(payload, **kwargs) -> str:
    """Strict JSON text of `payload` (non-finite numbers as null)."""
    return json.dumps(json_safe(payload), allow_nan=False, **kwargs)


class MetricsLog:
    """Append-only JSON lines, flushed per record so a crash loses at most one line.

    A failed write (a full disk) raises an OSError naming this file, not the bare
    errno a buffered write gives; a partial last line is what readers must skip.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")

    def write(self, record: dict) -> None:
        try:
            self._file.write(dumps(record) + "\n")
            self._file.flush()
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a write already failed and said so
            self._file.close()


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write strict JSON atomically: a temp file beside the target, then a rename.

    An OSError names `path` (not the hidden temp file, which is gone by then).
    """
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(dumps(payload, indent=2) + "\n")
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 math


def cpu_bf16_native() -> bool:
    """Whether this CPU does bf16 math in hardware (AVX512-BF16 or AMX; Linux flags).

    Without it oneDNN emulates bf16 through fp32 and every op converts: measured 5x
    slower than fp32 on an AVX2-only EPYC (README, "bf16 on the CPU").
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def autocast_dtype(
    precision: str, device: torch.device, key: str = "trainer.precision"
) -> torch.dtype | None:
    """The autocast dtype for `precision` (auto: bf16 on CUDA, fp32 elsewhere), None = off.

    bf16 on a CPU without native bf16 math is refused (`key` names the setting): it would
    run several times slower than fp32, the opposite of what bf16 is asked for.
    """
    choices = {"fp32": None, "bf16": torch.bfloat16}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in choices:
        raise ValueError(f"{key}={precision!r}; choose auto, fp32 or bf16")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        raise ValueError(
            f"{key}=bf16: this CPU has no native bf16 math ({' or '.join(BF16_CPU_FLAGS)} "
            "in /proc/cpuinfo), so bf16 would be emulated and run several times slower "
            f"than fp32; use {key}=fp32 (or auto)"
        )
    return choices[precision]
