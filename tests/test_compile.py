"""torch.compile of the runner's per-segment call (rmt.compile): same numbers, no
recompilation per segment, eager tails, and a failing compiler that only costs speed."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from rmt import EncoderConfig, build_runner
from rmt.compile import CompiledSegments, compile_runner, is_compiled

pytestmark = pytest.mark.slow  # inductor compiles C++: ~10-30 s per graph on a CPU
SEGMENT = 16


def tiny_runner(seed: int = 0, backprop: str = "full", dropout: float = 0.0):
    torch.manual_seed(seed)
    config = EncoderConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, dropout=dropout)
    runner = build_runner(config, {"memory_tokens": 4, "segment_tokens": SEGMENT})
    runner.backprop = backprop
    return runner


def stream(runner, ids, mask):
    memory = runner.init_memory(ids.shape[0])
    states = []
    with torch.no_grad():
        for segment, valid in zip(ids.split(SEGMENT, 1), mask.split(SEGMENT, 1), strict=True):
            out, memory = runner.step(segment, memory, valid)
            states.append(out.hidden)
    return torch.cat(states, 1), memory


def test_compiled_streaming_equals_eager_and_compiles_once():
    """Full segments share their graphs (one with a padding mask, one without: never one
    per segment), a 5-token tail runs eagerly; states equal to fp32 rounding."""
    eager, compiled = tiny_runner().eval(), compile_runner(tiny_runner().eval())
    ids = torch.randint(5, 40, (2, 4 * SEGMENT + 5))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 3 * SEGMENT + 2 :] = False  # the second sample ends early
    counters.clear()
    hidden, memory = stream(compiled, ids, mask)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 3
    reference_hidden, reference_memory = stream(eager, ids, mask)
    torch.testing.assert_close(hidden, reference_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(memory, reference_memory, atol=1e-5, rtol=1e-5)
    longer = torch.randint(5, 40, (2, 9 * SEGMENT + 3))
    stream(compiled, longer, torch.ones_like(longer, dtype=torch.bool))
    assert counters["stats"]["unique_graphs"] == graphs  # more segments: no new graph
    assert is_compiled(compiled) and not is_compiled(eager)


@pytest.mark.parametrize("backprop", ["full", "replay"])
def test_compiled_training_gradients_equal_eager(backprop):
    """Gradients of a compiled runner (full BPTT and memory replay's recomputation)
    match the eager runner's, dropout included (drawn from torch's own generator)."""
    ids = torch.randint(5, 40, (2, 3 * SEGMENT))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    grads = []
    for compiled in (False, True):
        runner = compile_runner(tiny_runner(backprop=backprop, dropout=0.1), compiled).train()
        torch.manual_seed(1)
        runner(ids, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in runner.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_a_failing_compiler_falls_back_to_eager(caplog):
    """A compiler error (no C++ toolchain, an unsupported op) is logged once and the
    runner goes on eagerly with the same outputs."""
    runner = compile_runner(tiny_runner().eval())
    call = runner.encoder.forward_with_memory
    assert isinstance(call, CompiledSegments)

    def broken(*args):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    call.compiled = broken
    ids = torch.randint(5, 40, (1, 2 * SEGMENT))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with caplog.at_level(logging.WARNING, logger="rmt.compile"):
        hidden, _ = stream(runner, ids, mask)
    assert "torch.compile failed (RuntimeError: InvalidCxxCompiler" in caplog.text
    assert caplog.text.count("torch.compile failed") == 1 and not is_compiled(runner)
    torch.testing.assert_close(hidden, stream(tiny_runner().eval(), ids, mask)[0])
