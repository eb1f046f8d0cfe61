"""Measuring helpers shared by the benchmarks: isolated processes, peak memory, FLOPs.

A point measured in a process that already ran a larger point would inherit its peak
(VmHWM) and its allocator's cached pages, so every point runs in a fresh process forked
from a server that has only imported what `preload` names.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

import torch

from rmt.encoder import EncoderConfig

MB = 2**20


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current VmRSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def environment(device: str) -> dict:
    """Where a benchmark ran: enough to tell whether two result files are comparable."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def segment_flops(config: EncoderConfig, tokens: int, memory_tokens: int, head: bool) -> int:
    """Matmul FLOPs of one forward over a segment (2 per multiply-add), one sample.

    The blocks' projections and MLP on `tokens + memory_tokens` positions, attention
    scores and values over all of them, then (with `head`) the MLM head on the content
    tokens. Grouped-query attention projects keys and values to n_kv_heads heads only
    (the scores still run over all n_heads). With experts, the active FLOPs: the router
    and top_k experts per position (dropless; what a capacity limit drops is counted).
    Norms, activations, softmax and the routing's sort are left out: they are not matmuls.
    """
    d, n = config.d_model, tokens + memory_tokens
    block = 2 * n * _attention_params(config) + 2 * 2 * n * n * d
    block += 2 * n * _mlp_params(config)[1]
    return config.n_layers * block + (head_flops(config, tokens) if head else 0)


def parameter_counts(config: EncoderConfig) -> tuple[int, int]:
    """(total, active) parameters of the encoder: token embeddings, blocks, final norm
    (not the MLM head). Active counts what one position uses: with experts, the router
    and top_k of the n_experts; every other parameter is active."""
    d = config.d_model
    norm = d * (2 if config.norm == "layernorm" else 1)  # weight (and bias)
    mlp_total, mlp_active = _mlp_params(config)
    shared = config.vocab_size * d + norm + config.n_layers * (2 * norm + _attention_params(config))
    return shared + config.n_layers * mlp_total, shared + config.n_layers * mlp_active


def _attention_params(config: EncoderConfig) -> int:
    """q and out at d_model x d_model, k and v at d_model x n_kv_heads * head_dim each."""
    d = config.d_model
    kv = config.n_kv_heads * (d // config.n_heads)
    return d * (d + 2 * kv) + d * d


def _mlp_params(config: EncoderConfig) -> tuple[int, int]:
    """(total, active per position) parameters of one block's MLP, dense or experts."""

    def mlp(d_ff: int) -> int:  # up (gate and up when gated) and down projections
        return config.d_model * d_ff * (3 if config.activation != "gelu" else 2)

    if not config.n_experts:
        return mlp(config.d_ff), mlp(config.d_ff)
    router = config.d_model * config.n_experts
    expert = mlp(config.moe_d_ff)
    return router + config.n_experts * expert, router + config.moe_top_k * expert


def head_flops(config: EncoderConfig, tokens: int) -> int:
    """Matmul FLOPs of the MLM head (dense d x d, then the d x vocab projection)."""
    return 2 * tokens * config.d_model * (config.d_model + config.vocab_size)


def step_times(step: Callable[[], Any], device: str, reps: int, warmup: int = 2) -> list[float]:
    """Wall times of `reps` calls of `step` after `warmup` untimed ones (CUDA synchronized)."""
    times = []
    for _ in range(warmup + reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def median_seconds(step: Callable[[], Any], device: str, reps: int, warmup: int = 2) -> float:
    """Median of `step_times`."""
    return statistics.median(step_times(step, device, reps, warmup))


def start_peak(device: str) -> int:
    """Start measuring peak memory; returns the bytes in use now (the baseline).

    CPU: the resident set, with VmHWM reset to it; CUDA: allocated bytes, peak stats reset.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    baseline = status_bytes("VmRSS")
    reset_peak_rss()
    return baseline


def read_peak(device: str) -> int:
    """Peak bytes since `start_peak`."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return status_bytes("VmHWM")


def matmul_peak(device: str, dtype: torch.dtype, size: int | None = None, reps: int = 10) -> float:
    """The device's own dense matmul FLOP/s: the median of `reps` square matmuls.

    The denominator of model FLOPs utilization, measured on the machine rather than taken
    from a datasheet (a CPU's turbo, a GPU's clocks and power cap all move it).
    """
    size = size or (8192 if device == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2.0 * size**3 / median_seconds(lambda: torch.matmul(a, b), device, reps)


def copy_bandwidth(device: str, mb: int | None = None, reps: int = 10) -> float:
    """The device's own memory bandwidth, bytes/s: a copy of `mb` MiB (read + write).

    The denominator for memory-bound kernels' GB/s, measured rather than a datasheet's.
    """
    elements = (mb or (1024 if device == "cuda" else 256)) * MB // 4
    source = torch.ones(elements, device=device)
    target = torch.empty_like(source)
    return 2.0 * 4 * elements / median_seconds(lambda: target.copy_(source), device, reps)


def fork_context(preload: list[str]) -> mp.context.BaseContext:
    """A forkserver context whose server has imported `preload` (so forks start at once)."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return context


def _worker(function: Callable, args: tuple, connection: Connection) -> None:
    connection.send(function(*args))
    connection.close()


def run_isolated(context: mp.context.BaseContext, function: Callable, *args: Any) -> dict:
    """`function(*args)` (a dict) in a fresh process; `{"status": "failed: ..."}` if it dies.

    A Python exception prints its traceback on the child's stderr; the out-of-memory
    killer leaves exit code -9.
    """
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(function, args, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    if result is None or process.exitcode:
        return {"status": f"failed: exit code {process.exitcode}"}
    return result
