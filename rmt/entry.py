"""Console entry points of the Hydra apps: a config mistake is one line and exit 2.

`@hydra.main` composes the config before the app's `main` runs, so a value of the wrong
type (`memory.memory_tokens=abc`), an unknown key, a missing group option (`model=huge`)
or a malformed override never reaches the app's own error handling (`rmt.cli.user_errors`):
Hydra prints its multi-line report and exits 1. Hydra re-raises instead of reporting when
HYDRA_FULL_ERROR=1, so `run_app` sets it for the composition only, turns what comes back
into one line naming the key, the value and the fix, and exits 2 through `user_errors`
(RMT_DEBUG=1 shows the traceback). `ComposedCallback`, a Hydra callback listed first in
each app's YAML, gives the variable back as soon as the config is composed, before the
task runs: errors of the task itself keep Hydra's report, and child processes (torchrun
workers, joblib and submitit jobs, DataLoader workers) never inherit it.

The console scripts (pyproject [project.scripts]) and each app's `python -m` both go
through `run_app`, so the two behave the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from hydra.experimental.callback import Callback

from rmt.cli import user_errors
from rmt.hydra_errors import composition_message

FULL_ERROR = "HYDRA_FULL_ERROR"


class _Composition:
    """Whether Hydra is composing a config for `run_app`, and the variable to give back."""

    active = False
    saved: str | None = None

    @classmethod
    def start(cls) -> None:
        cls.active, cls.saved = True, os.environ.get(FULL_ERROR)
        os.environ[FULL_ERROR] = "1"

    @classmethod
    def finish(cls) -> None:
        if not cls.active:
            return
        cls.active = False
        if cls.saved is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = cls.saved


class ComposedCallback(Callback):
    """Hydra has composed the config: restore HYDRA_FULL_ERROR before the task starts."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _Composition.finish()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _Composition.finish()


@contextlib.contextmanager
def _composing() -> Iterator[None]:
    _Composition.start()
    try:
        yield
    finally:
        _Composition.finish()


def run_app(main: Callable[[], object], program: str) -> None:
    """Run a `@hydra.main` function; a composition error exits 2 with one line."""
    with user_errors(program), _composing():
        try:
            main()
        except Exception as err:
            message = composition_message(err) if _Composition.active else None
            if message is None:
                raise
            raise ValueError(message) from err


def train() -> None:
    """rmt-train"""
    from rmt.train import main

    run_app(main, "rmt-train")


def finetune() -> None:
    """rmt-finetune"""
    from rmt.finetune import main

    run_app(main, "rmt-finetune")


def infer() -> None:
    """rmt-infer"""
    from rmt.infer import main

    run_app(main, "rmt-infer")


def generate() -> None:
    """rmt-generate"""
    from rmt.generate import main

    run_app(main, "rmt-generate")


def score() -> None:
    """rmt-score"""
    from rmt.score import main

    run_app(main, "rmt-score")


def tokenizer() -> None:
    """rmt-tokenizer"""
    from rmt.tokenizer_cli import main

    run_app(main, "rmt-tokenizer")


def bench() -> None:
    """rmt-bench (through rmt.bench_cli: `import rmt` checks for shadowing packages first)"""
    from rmt.bench_cli import bench as main

    run_app(main, "rmt-bench")
