"""How a training step makes and applies gradients: one process, DDP, or DeepSpeed ZeRO.

Launch several processes with `torchrun --nproc_per_node=N -m rmt.train trainer=ddp`
(or `trainer=deepspeed_zero2`, also under the `deepspeed` launcher). Ranks read RANK,
WORLD_SIZE and LOCAL_RANK from the environment; NCCL on CUDA, gloo on the CPU. Rank 0
writes logs, metrics and checkpoints.

Gradient accumulation stays with the training loop, because the curriculum changes the
number of micro-batches per step: the strategy is told which micro-batch is the last
of a step (DDP synchronises only then; DeepSpeed gets the boundary set explicitly).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rmt.checkpoint import load_weights
from rmt.tasks import StepLoss


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device: torch.device) -> World:
    """Join the process group the launcher set up (a single process needs none)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def local_device(name: str, world: World) -> torch.device:
    """One GPU per rank (LOCAL_RANK) when on CUDA."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu" if name == "auto" else name)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_mean(value: float, world: World) -> float:
    """The mean of a Python number over ranks (itself in a single process)."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / world.world_size


class TrainModule(nn.Module):
    """The runner and the task as one module, so DDP and DeepSpeed see every parameter."""

    def __init__(self, runner: nn.Module, task: nn.Module) -> None:
        super().__init__()
        self.runner, self.task = runner, task

    def forward(self, batch_size: int, segments: int) -> StepLoss:
        return self.task.step_loss(self.runner, batch_size, segments)


class LocalStrategy:
    """A single process, or torch DistributedDataParallel across ranks."""

    def __init__(self, module: TrainModule, optimizer, lr_schedule, t, world: World) -> None:
        self.module, self.optimizer, self.lr_schedule = module, optimizer, lr_schedule
        self.grad_clip = t.grad_clip
        self.model = nn.parallel.DistributedDataParallel(module) if world.distributed else module

    def micro_step(self, batch_size: int, segments: int, weight: float, last: bool) -> StepLoss:
        sync = last or not isinstance(self.model, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else self.model.no_sync():
            part = self.model(batch_size, segments)
            (part.loss * weight).backward()
        return part

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.lr_schedule.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
        }

    def save_sharded(self, checkpoint_dir) -> None:
        """Nothing is sharded: the optimizer state is in `state_dict`."""

    def load(self, state: dict, checkpoint_dir: Path) -> None:
        """Weights (runner and task), optimizer and schedule from a checkpoint directory."""
        load_weights(self.module.runner, checkpoint_dir / "model.safetensors")
        self.module.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])

    def gathered(self):
        """Full parameters on this rank (they always are, here)."""
        return contextlib.nullcontext()


class DeepSpeedStrategy:
    """A DeepSpeed engine with ZeRO stage `trainer.zero_stage` (1, 2 or 3)."""

    def __init__(self, module: TrainModule, optimizer, lr_schedule, t, world: World) -> None:
        try:
            import deepspeed
        except ImportError as err:
            raise ValueError(
                "trainer.strategy=deepspeed needs DeepSpeed: pip install 'rmt-dna[deepspeed]' "
                f"({err})"
            ) from None
        runner = module.runner
        recomputes = runner.backprop != "full" or runner.bptt_depth > 0
        if t.zero_stage == 3 and recomputes:
            raise ValueError(
                "trainer.zero_stage=3 partitions parameters, which memory.backprop="
                f"{runner.backprop} (bptt_depth={runner.bptt_depth}) needs whole in its backward "
                "sweep: use trainer=deepspeed_zero2 (or ddp), or memory.backprop=full with "
                "memory.bptt_depth=-1 or 0"
            )
        self.deepspeed, self.module = deepspeed, module
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": t.grad_clip,
            "zero_optimization": {"stage": t.zero_stage},
            "bf16": {"enabled": torch.cuda.is_available()},
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=lr_schedule, config=config
        )

    def micro_step(self, batch_size: int, segments: int, weight: float, last: bool) -> StepLoss:
        self.engine.set_gradient_accumulation_boundary(last)
        part = self.engine(batch_size, segments)
        self.engine.backward(part.loss * weight)
        return part

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def state_dict(self) -> dict:
        """Optimizer and schedule live in DeepSpeed's own checkpoint (`save_sharded`)."""
        return {}

    def save_sharded(self, checkpoint_dir) -> None:
        """Every rank writes its optimizer partition into `checkpoint_dir/deepspeed`."""
        self.engine.save_checkpoint(str(checkpoint_dir), tag="deepspeed")

    def load(self, state: dict, checkpoint_dir: Path) -> None:
        """Weights, optimizer and schedule from every rank's part of the checkpoint."""
        self.engine.load_checkpoint(str(checkpoint_dir), tag="deepspeed")

    def gathered(self):
        """ZeRO-3 partitions parameters across ranks: gather them to save or evaluate."""
        return self.deepspeed.zero.GatheredParameters(list(self.module.parameters()))


def make_strategy(module: TrainModule, optimizer, lr_schedule, t, world: World):
    if t.strategy == "deepspeed":
        return DeepSpeedStrategy(module, optimizer, lr_schedule, t, world)
    if t.strategy in ("single", "ddp"):
        return LocalStrategy(module, optimizer, lr_schedule, t, world)
    raise ValueError(f"trainer.strategy={t.strategy!r}; choose single, ddp or deepspeed")
