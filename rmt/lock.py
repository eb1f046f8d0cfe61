"""One process per run or output directory: a lock file, held with `fcntl.flock`.

    with RunLock(run_dir, "rmt-train"):     # DirectoryLocked if another process holds it
        ...

Two processes writing into one directory would interleave checkpoints, metrics and
outputs, and one would delete the other's temp files as stale. The lock is an advisory
`flock` on `<dir>/.rmt.lock`, which the kernel releases when its holder exits, however it
exits: a lock left by a SIGKILLed process never blocks the next run, so no stale-pid
guessing is needed. The file holds the holder's program, pid, host and start time, so the
refusal can name it. It is removed on release; a process that was waiting on the
removed file notices (another inode is at the path now) and tries again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".rmt.lock"


class DirectoryLocked(ValueError):
    """Another process holds the directory's lock (a user error: exit 2, one line)."""


class RunLock:
    """An exclusive, non-blocking lock on directory `path` (created if missing).

    Args:
        path: the run or output directory.
        program: who takes it (`rmt-train`, `rmt-infer`), written into the lock file and
            named in the refusal another process gets.
    """

    def __init__(self, path: str | os.PathLike, program: str) -> None:
        self.directory = Path(path)
        self.file = self.directory / LOCK_FILE
        self.program = program
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now, or raise DirectoryLocked naming its holder."""
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "is a file, not a directory", str(self.directory)
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryLocked(self._refusal()) from None
            if _same_file(fd, self.file):
                self._fd = fd
            else:  # the holder removed the file as we locked it: lock the new one
                os.close(fd)
        holder = {"program": self.program, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        os.ftruncate(self._fd, 0)
        os.write(self._fd, (json.dumps(holder) + "\n").encode())

    def release(self) -> None:
        """Remove the lock file and drop the lock (the removal first: see the module)."""
        if self._fd is None:
            return
        try:
            self.file.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def _refusal(self) -> str:
        try:
            holder = json.loads(self.file.read_text())
            who = (f"{holder['program']} (pid {holder['pid']} on {holder['host']}, "
                   f"since {holder['since']})")  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process (it is just starting)"
        return (
            f"{self.directory} is in use by {who}: wait for it to end, or give "
            f"{self.program} another directory"
        )

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)
