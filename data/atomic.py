"""Atomic file creation: readers never see a half-written cache, index or tokenizer.

Everything the data package writes goes to a uniquely named temporary file in the
destination's directory (so the final ``os.replace`` is a same-filesystem rename, atomic on
POSIX), and the temporary file is removed if writing fails. Concurrent writers (several
ranks opening the same genome) each write their own temporary file; the last rename wins
and every version is complete.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a not-yet-existing temporary path beside ``dest``; move it onto ``dest`` on success.

    The caller (or a library it calls) creates the file at the yielded path. On any
    exception the temporary file is deleted and ``dest`` is left untouched.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
