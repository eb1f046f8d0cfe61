"""How a training step makes and applies gradients: one process, DDP, or DeepSpeed ZeRO.

Launch several processes with `torchrun --nproc_per_node=N -m rmt.train trainer=ddp`
(or `trainer=deepspeed_zero2`, also under the `deepspeed` launcher). Ranks read RANK,
WORLD_SIZE and LOCAL_RANK from the environment; NCCL on CUDA, gloo on the CPU. Rank 0
writes logs, metrics and checkpoints.

Gradient accumulation stays with the training loop, because the curriculum changes the
number of micro-batches per step: the strategy is told which micro-batch is the last
of a step (DDP synchronises only then; DeepSpeed gets the boundary set explicitly).

A strategy is one of the run's stateful parts (`rmt.state`): `state_dict` holds what
goes into `trainer_state.pt` (optimizer, schedule, the task's modules), and
`save_files`/`load_files` what lives beside it in the checkpoint directory (the
runner's safetensors weights; DeepSpeed's sharded checkpoint).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rmt.checkpoint import load_weights
from rmt.cli import pick_device
from rmt.tasks import StepLoss, TaskBatch


@dataclass(frozen=True)
class World:
    """This process's place among the ranks, and its device (collectives run there)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device_name: str) -> World:
    """Join the process group the launcher set up (a single process needs none).

    One GPU per rank (LOCAL_RANK) on CUDA, with NCCL; gloo on the CPU.
    """
    device = pick_device(device_name)
    if device_name in ("auto", "cuda") and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over ranks of a tensor (itself in a single process), in float64 on the CPU."""
    values = values.detach().to(world.device, torch.float64)
    if world.distributed:
        dist.all_reduce(values)
    return values.cpu()


class TrainModule(nn.Module):
    """The runner and the task as one module, so DDP and DeepSpeed see every parameter."""

    def __init__(self, runner: nn.Module, task: nn.Module) -> None:
        super().__init__()
        self.runner, self.task = runner, task

    def forward(self, batch: TaskBatch) -> StepLoss:
        return self.task.loss(self.runner, batch)


class LocalStrategy:
    """A single process, or torch DistributedDataParallel across ranks."""

    def __init__(self, module: TrainModule, optimizer, lr_schedule, t, world: World) -> None:
        self.module, self.optimizer, self.lr_schedule = module, optimizer, lr_schedule
        self.grad_clip = t.grad_clip
        self.model = nn.parallel.DistributedDataParallel(module) if world.distributed else module

    def micro_step(self, batch: TaskBatch, scale: float, last: bool) -> StepLoss:
        """Forward and backward of one micro-batch; its loss sum times `scale` is what
        backpropagates (DDP averages gradients over ranks)."""
        sync = last or not isinstance(self.model, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else self.model.no_sync():
            part = self.model(batch)
            (part.loss_sum * scale).backward()
        return part

    def step(self) -> float:
        """Clip and update; a non-finite gradient norm gets no update (rmt.loop decides)."""
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.lr_schedule.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {
            "task": self.module.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])

    def save_files(self, checkpoint_dir: Path) -> None:
        """Nothing more: the runner's weights are the checkpoint's model.safetensors."""

    def load_files(self, checkpoint_dir: Path) -> None:
        """The runner's weights from the checkpoint's model.safetensors."""
        load_weights(self.module.runner, checkpoint_dir / "model.safetensors")

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

    def micro_step(self, batch: TaskBatch, scale: float, last: bool) -> StepLoss:
        self.engine.set_gradient_accumulation_boundary(last)
        part = self.engine(batch)
        self.engine.backward(part.loss_sum * scale)
        return part

    def step(self) -> float | None:
        """Update (DeepSpeed applies it whatever the gradients); the norm when it has one."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def state_dict(self) -> dict:
        """Weights, optimizer and schedule live in DeepSpeed's own files (`save_files`)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing: `load_files` restores it all."""

    def save_files(self, checkpoint_dir: Path) -> None:
        """Every rank writes its partition into `checkpoint_dir/deepspeed`."""
        self.engine.save_checkpoint(str(checkpoint_dir), tag="deepspeed")

    def load_files(self, checkpoint_dir: Path) -> None:
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
