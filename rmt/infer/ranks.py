"""Several processes (torchrun): which shards a rank runs, and where the ranks meet.

    torchrun --nproc_per_node=4 -m rmt.infer checkpoint=runs/x output=out/ parallel.shards=4

The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK) makes the process group
(``rmt.strategy.init_world``: cuda:LOCAL_RANK with NCCL on GPUs, gloo on the CPU). Rank 0
alone claims the output directory (its lock, stale temp files, identity, plan) and
assembles the outputs; the other ranks stream their shards into the spool beside its
own. They meet three times: after the claim (every rank gets the plan, or rank 0's
error), after streaming (rank 0 waits for every shard), and after assembly (every rank
gets the summary, or rank 0's error). A failed rank stops the run: the launcher ends
the others, and the rerun resumes every shard.

The waits last as long as the slowest rank's shards and rank 0's assembly, which on a
genome is far longer than NCCL's 10-minute collective timeout: they run on a gloo group
of their own, on the CPU, whose timeout is ``PATIENCE``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from rmt.cli import describe
from rmt.infer.plan import balance
from rmt.strategy import World, init_world

PATIENCE = timedelta(days=7)
T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's world, and the group its waits run on (None in one process)."""

    world: World
    group: Any = None

    @classmethod
    def join(cls, device: str) -> Ranks:
        """Join the launcher's process group (one process: a world of one)."""
        world = init_world(device)
        if not world.distributed:
            return cls(world)
        return cls(world, dist.new_group(backend="gloo", timeout=PATIENCE))

    @property
    def label(self) -> str:
        """' (rank r of n)' in several processes, else nothing: for progress and logs."""
        w = self.world
        return f" (rank {w.rank} of {w.world_size})" if w.distributed else ""

    def on_main(self, action: Callable[[], T]) -> T:
        """``action()`` on rank 0, its result on every rank.

        When it raises, every rank raises: rank 0 its own error, the others a ValueError
        repeating rank 0's one-line message (a bug's: a RuntimeError pointing at it).
        """
        if not self.world.distributed:
            return action()
        shared: list = [None]
        failure = None
        if self.world.is_main:
            try:
                shared[0] = ("result", action())
            except Exception as err:
                failure, shared[0] = err, ("error", describe(err))
        dist.broadcast_object_list(shared, src=0, group=self.group)
        if failure is not None:
            raise failure
        kind, value = shared[0]
        if kind == "result":
            return value
        if value is None:
            raise RuntimeError("rank 0 failed; its traceback says why")
        raise ValueError(f"rank 0 stopped the run: {value}")

    def wait_for_all(self) -> None:
        """Return once every rank has called this (at once in one process)."""
        if self.world.distributed:
            dist.barrier(group=self.group)

    def leave(self) -> None:
        """Tear the process groups down once the run is done, so a finished rank does not
        leave gloo's threads to interpreter shutdown, which can abort it ("terminate
        called without an active exception") after its work was written."""
        if self.world.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def my_shards(self, shard_bp: list[int]) -> list[int]:
        """The shards this rank runs, in order: all of them balanced by bp over the ranks."""
        return balance(shard_bp, self.world.world_size)[self.world.rank]
