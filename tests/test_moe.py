"""The mixture-of-experts MLP (rmt.moe): routing, dropless and capacity-limited dispatch,
the aux losses, padding; the runner with an MoE encoder in every backprop mode; the
FLOP and parameter counts; checkpoints and the conf/model configs that use it."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict

import pytest
import torch
from fast_config import FAST_TRAIN
from hydra import compose, initialize_config_module
from test_runner import (
    SEG,
    VOCAB,
    assert_grads_close,
    assert_stepping_equals_one_call,
    param_grads,
    random_batch,
)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import parameter_counts, segment_flops
from data import NucleotideTokenizer
from kernels import get_ops
from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead, load_model
from rmt.checkpoint import build_runner, save_checkpoint
from rmt.encoder import make_mlp
from rmt.moe import MoEMLP, expert_load, moe_metrics, reset_moe_stats, take_aux_loss
from rmt.options import train_options
from rmt.train import train

D, E = 8, 4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def moe_layer(top_k: int = 2, seed: int = 0, **options) -> MoEMLP:
    """A float64 MoE layer of E experts (16 wide) over d = 8."""
    torch.manual_seed(seed)
    config = EncoderConfig(
        d_model=D, n_heads=2, n_experts=E, moe_top_k=top_k, moe_d_ff=16, **options
    )
    layer = make_mlp(config, get_ops("torch"))
    for p in layer.parameters():  # init_std 0.02 would make every expert output tiny
        torch.nn.init.normal_(p, std=0.5)
    return layer.double()


def with_logits(layer: MoEMLP, logits) -> torch.Tensor:
    """Rows x whose router logits are `logits` (rows, E): the router reads the first E
    channels as they are (a hand-made router); the other channels are random."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(E, D))
    rest = torch.randn(logits.shape[0], D - E, dtype=torch.float64)
    return torch.cat([logits, rest], 1)


def per_row_reference(layer: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """Each row on its own: the weighted sum of its top-k experts' outputs."""
    rows = []
    for row in x.reshape(-1, D):
        probs = layer.router(row).softmax(-1)
        weights, chosen = probs.topk(layer.top_k)
        weights = weights / weights.sum()
        rows.append(
            sum(w * layer.experts[e](row[None])[0] for w, e in zip(weights, chosen, strict=True))
        )
    return torch.stack(rows).reshape(x.shape)


def test_router_takes_the_top_k_experts_and_renormalises_their_weights():
    layer = moe_layer()
    logits, probs, chosen, weights = layer.route(with_logits(layer, [[2, 1, 0, -1], [0, 3, 1, 2]]))
    assert chosen.tolist() == [[0, 1], [1, 3]]
    e = math.e
    want = torch.tensor([[e**2, e], [e**3, e**2]], dtype=torch.float64)
    torch.testing.assert_close(weights, want / want.sum(1, keepdim=True), atol=1e-15, rtol=0)
    torch.testing.assert_close(probs, logits.softmax(-1))
    assert logits.dtype == torch.float64  # never below fp32


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_dropless_output_is_each_rows_weighted_top_k_experts(top_k):
    layer = moe_layer(top_k)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x), per_row_reference(layer, x), atol=1e-12, rtol=0)
    assert expert_load(layer).sum() == pytest.approx(1)


def balance_aux(layer: MoEMLP, logits) -> float:
    layer(with_logits(layer, logits))
    return take_aux_loss(layer).item()


def test_load_balancing_loss_on_known_routings():
    weight, big = 0.01, 20.0
    uniform = moe_layer(moe_aux_weight=weight)
    with torch.no_grad():
        uniform.router.weight.zero_()  # every probability 1 / E
    uniform(torch.randn(6, D, dtype=torch.float64))
    assert take_aux_loss(uniform).item() == pytest.approx(weight, rel=1e-12)
    # Every row to expert 0 (top-1): f = (1, 0, 0, 0), P_0 = e^L / (e^L + 3), aux = E P_0.
    top1 = moe_layer(top_k=1, moe_aux_weight=weight)
    p0 = math.exp(big) / (math.exp(big) + 3)
    assert balance_aux(top1, [[big, 0, 0, 0]] * 5) == pytest.approx(weight * E * p0, rel=1e-12)
    assert balance_aux(top1, [[big, 0, 0, 0]] * 5) == pytest.approx(weight * E, rel=1e-6)
    # Every row to experts 0 and 1 (top-2): f = (1/2, 1/2, 0, 0), P_0 = P_1, aux = E P_0 -> E / 2.
    top2 = moe_layer(top_k=2, moe_aux_weight=weight)
    p0 = math.exp(big) / (2 * math.exp(big) + 2)
    assert balance_aux(top2, [[big, big, 0, 0]] * 5) == pytest.approx(weight * E * p0, rel=1e-12)
    # Two rows to opposite experts (top-1): f = (1/2, 0, 0, 1/2), P_0 = P_3 = (e + 1) / 2(e + 3).
    p0 = (math.e + 1) / (2 * (math.e + 3))
    got = balance_aux(top1, [[1, 0, 0, 0], [0, 0, 0, 1]])
    assert got == pytest.approx(weight * E * p0, rel=1e-12)


def test_router_z_loss_is_the_mean_squared_logsumexp():
    layer = moe_layer(moe_aux_weight=0.0, moe_z_weight=1.0)
    want = (math.log(4) ** 2 + math.log(math.exp(10) + 3) ** 2) / 2
    assert balance_aux(layer, [[0, 0, 0, 0], [10, 0, 0, 0]]) == pytest.approx(want, rel=1e-12)


def test_gradients_reach_only_the_chosen_experts():
    layer = moe_layer()
    x = with_logits(layer, [[5, 4, 0, 0], [4, 5, 1, 0], [5, 4, 0, 1]])  # all pick 0 and 1
    (layer(x).sum() + take_aux_loss(layer)).backward()
    for e, expert in enumerate(layer.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None for g in grads)  # unused experts still get (zero) gradients
        assert any(g.abs().max() > 0 for g in grads) == (e < 2), e
    assert layer.router.weight.grad.abs().max() > 0


def test_assignments_over_capacity_are_dropped():
    """Each row picks expert 0 and expert r + 1; a capacity of one assignment per expert
    keeps expert 0 for row 0 only: the others keep just their second expert's share."""
    layer = moe_layer(moe_capacity_factor=0.5)  # ceil(0.5 x 6 assignments / 4 experts) = 1
    x = with_logits(layer, [[5, 1, 0, 0], [5, 0, 1, 0], [5, 0, 0, 1]])
    _, _, chosen, weights = layer.route(x)
    out = layer(x)
    torch.testing.assert_close(out[0], per_row_reference(layer, x[:1])[0], atol=1e-12, rtol=0)
    for r in (1, 2):
        second = weights[r, 1] * layer.experts[r + 1](x[r : r + 1])[0]
        assert chosen[r].tolist() == [0, r + 1]
        torch.testing.assert_close(out[r], second, atol=1e-12, rtol=0)
    everything = moe_layer(top_k=1, moe_capacity_factor=1.0)  # 1 assignment each
    x = with_logits(everything, [[5, 0, 0, 0]] * 4)
    out = everything(x)
    assert (out[1:] == 0).all() and out[0].abs().max() > 0  # rows 1..3: the residual alone
    torch.testing.assert_close(out[0], everything.experts[0](x[:1])[0], atol=1e-12, rtol=0)


def test_padding_is_not_routed_nor_counted():
    layer = moe_layer(moe_z_weight=0.1)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 3:] = False
    out = layer(x, valid)
    aux, load = take_aux_loss(layer), expert_load(layer)
    reset_moe_stats(layer)
    alone = layer(x[valid])  # the valid rows by themselves, no padding at all
    assert (out[~valid] == 0).all()
    torch.testing.assert_close(out[valid], alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(aux, take_aux_loss(layer), atol=1e-12, rtol=0)
    torch.testing.assert_close(load, expert_load(layer), atol=0, rtol=0)
    assert layer.assigned.sum() == 8 * 2  # 8 valid rows, 2 experts each


# -- the runner with an MoE encoder ------------------------------------------------
MOE = {"n_experts": 4, "moe_top_k": 2, "moe_d_ff": 32, "moe_aux_weight": 0.5, "moe_z_weight": 0.1}


def moe_runner(**kwargs) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, **MOE)
    encoder = Encoder(config)
    head = MLMHead(32, VOCAB, encoder.embed_tokens)
    return MemoryRunner(encoder, 3, SEG, head=head, **kwargs).double()


def reference_loss(runner: MemoryRunner, ids, labels, depth: int, aux: bool = True):
    """By brute force: each segment's loss (its token loss + labelled tokens x its aux
    loss) on its own graph, memory cut `depth` transitions before it; / labelled tokens."""
    segments = runner._split(ids, None, labels)
    total = 0.0
    for t in range(len(segments)):
        memory = runner.init_memory(ids.shape[0])
        for j in range(t + 1):
            if depth >= 0 and j == t - depth and j > 0:
                memory = memory.detach()
            memory, hidden = runner._encode_segment(memory, segments[j][0], None)
            aux_loss = take_aux_loss(runner.encoder)
        loss_sum, count = runner.head.loss(hidden, segments[t][2])
        total = total + loss_sum + (count * aux_loss if aux else 0)
    return total / (labels != -100).sum()


@pytest.mark.parametrize(
    ("backprop", "depth"),
    [("full", -1), ("checkpoint", -1), ("replay", -1), ("truncated", 1), ("replay", 1)],
)
def test_every_backprop_mode_trains_the_aux_loss_exactly(backprop, depth):
    runner = moe_runner(backprop=backprop, bptt_depth=depth)
    ids, labels = random_batch(2, 4)
    got = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    assert_grads_close(got, param_grads(runner, lambda: reference_loss(runner, ids, labels, depth)))

    # The aux adds its gradient, not its value: the loss is the task's own.
    def task_loss():
        return reference_loss(runner, ids, labels, depth, aux=False)

    torch.testing.assert_close(runner(ids, labels=labels).loss, task_loss(), atol=1e-12, rtol=0)
    router = "encoder.blocks.0.mlp.router.weight"
    without = param_grads(runner, task_loss)[router]
    assert (got[router] - without).abs().max() > 1e-6  # the aux term is really there


def test_moe_runner_streams_like_one_call_with_padding():
    assert_stepping_equals_one_call(moe_runner())


def test_expert_metrics_only_for_models_with_experts():
    runner = moe_runner()
    ids, labels = random_batch(2, 3)
    runner(ids, labels=labels)
    metrics = moe_metrics(runner)
    assert set(metrics) == {"moe_aux", "moe_load_min", "moe_load_max"}
    lowest, highest = metrics["moe_load_min"], metrics["moe_load_max"]
    assert len(lowest) == len(highest) == 2  # one per layer
    assert all(0 <= lo <= 1 / 4 <= hi <= 1 for lo, hi in zip(lowest, highest, strict=True))
    assert runner.encoder.blocks[0].mlp.forwards == 3  # one per segment
    memory, per_segment = runner.init_memory(2), []
    for segment in ids.split(SEG, 1):  # the same three forwards, one at a time
        _, memory = runner.step(segment, memory)
        per_segment.append(take_aux_loss(runner).item())
    assert metrics["moe_aux"] == pytest.approx(sum(per_segment) / 3, rel=1e-9)
    reset_moe_stats(runner)
    assert moe_metrics(runner) == {} and expert_load(runner) is None
    dense = Encoder(EncoderConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2))
    dense(ids)
    assert moe_metrics(dense) == {} and take_aux_loss(dense) is None


def test_checkpoint_round_trip_keeps_the_moe_and_gqa_fields(tmp_path):
    tokenizer = NucleotideTokenizer()
    shape = {"d_model": 32, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, **MOE}
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, moe_capacity_factor=1.5, **shape)
    memory = {"memory_tokens": 2, "segment_tokens": 8}
    runner = build_runner(config, memory)
    save_checkpoint(tmp_path, runner, tokenizer)
    saved = json.loads((tmp_path / "config.json").read_text())["encoder"]
    assert {k: saved[k] for k in shape} == shape and saved["moe_capacity_factor"] == 1.5
    loaded, _ = load_model(tmp_path)
    assert loaded.encoder.config == config
    ids = torch.randint(5, tokenizer.vocab_size, (2, 16))
    runner.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(ids).memory, runner(ids).memory, atol=0, rtol=0)


def test_mistakes_in_the_moe_options_name_the_key():
    cases = {
        "moe_top_k=5 must be between 1 and n_experts=4": {"n_experts": 4, "moe_top_k": 5},
        "n_experts=-1 must be >= 0 (0: a dense MLP)": {"n_experts": -1},
        "moe_capacity_factor=0 must be > 0": {"n_experts": 2, "moe_capacity_factor": 0},
        "moe_d_ff=0 must be >= 1": {"n_experts": 2, "moe_d_ff": 0},
        "moe_aux_weight=-1 must be >= 0": {"moe_aux_weight": -1},
    }
    for message, values in cases.items():
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            EncoderConfig(**values)


def backend_runner(backend: str) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, **MOE)
    encoder = Encoder(config, kernels=backend)
    head = MLMHead(32, VOCAB, encoder.embed_tokens, kernels=backend)
    return MemoryRunner(encoder, 3, SEG, head=head).to(DEVICE)


@pytest.mark.parametrize("backend", ["triton", "bf16"])
def test_gqa_moe_model_on_the_triton_kernels_and_under_bf16_autocast(backend):
    """The same loss and gradients as the torch backend in fp32: the Triton kernels (the
    CPU interpreter here, CUDA on a GPU), or torch's under bf16 autocast (loosely)."""
    if backend == "triton":
        pytest.importorskip("triton")
    ids, labels = random_batch(2, 2)
    ids, labels = ids.to(DEVICE), labels.to(DEVICE)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding: the masked attention path, and rows no expert sees
    results = []
    for kernels in ("torch", "torch" if backend == "bf16" else "triton"):
        runner = backend_runner(kernels)
        bf16 = backend == "bf16" and len(results) == 1
        with torch.autocast(DEVICE, torch.bfloat16, enabled=bf16):
            loss = runner(ids, mask, labels).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in runner.named_parameters()}))
    (loss, grads), (other_loss, other_grads) = results
    tolerance = {"atol": 3e-2, "rtol": 3e-2} if backend == "bf16" else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(other_loss, loss, **tolerance)
    if backend == "triton":  # bf16's routing may break near-ties differently
        for name, grad in grads.items():
            torch.testing.assert_close(other_grads[name], grad, **tolerance, msg=name)


# -- FLOPs and parameters -------------------------------------------------------------
def test_active_parameters_and_flops_count_top_k_experts():
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, **MOE)
    model = Encoder(config)
    total, active = parameter_counts(config)
    assert total == sum(p.numel() for p in model.parameters())
    # By hand: an expert is 3 x 32 x 32 = 3072 (SwiGLU, 32 wide); the router 32 x 4 = 128.
    # Total: embeddings 1280 + 2 x (norms 64 + attention 3072 + 128 + 4 x 3072) + norm 32.
    assert total == 1280 + 2 * (64 + 3072 + 128 + 4 * 3072) + 32
    assert total - active == 2 * (4 - 2) * 3072  # two of four experts idle per position
    memory = torch.randn(1, 3, 32)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.forward_with_memory(memory, torch.randint(5, VOCAB, (1, 7)), None)
    assert counter.get_total_flops() == segment_flops(config, 7, 3, head=False)
    # 10 positions: attention 2 x 10 x 3072 + 4 x 10 x 10 x 32, router 2 x 10 x 128,
    # two experts 2 x 2 x 10 x 3072 per layer.
    per_layer = 2 * 10 * 3072 + 4 * 100 * 32 + 2 * 10 * 128 + 2 * 2 * 10 * 3072
    assert segment_flops(config, 7, 3, head=False) == 2 * per_layer


# -- conf/model ------------------------------------------------------------------------
NEW_MODELS = {
    "genos_small": {"n_layers": 4, "d_model": 256, "n_heads": 4, "n_kv_heads": 2,
                    "n_experts": 4, "moe_top_k": 2, "moe_d_ff": 512, "norm": "rmsnorm"},
    "genos_medium": {"n_layers": 8, "d_model": 512, "n_heads": 8, "n_kv_heads": 4,
                     "n_experts": 4, "moe_top_k": 2, "moe_d_ff": 512, "activation": "swiglu"},
    "dnafm": {"n_layers": 4, "d_model": 256, "norm": "layernorm", "activation": "swiglu",
              "n_experts": 0},
    "gena_base": {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072,
                  "activation": "gelu", "norm": "layernorm"},
}  # fmt: skip


def composed_model(name: str, vocab_size: int) -> tuple[EncoderConfig, dict]:
    """`rmt-train model=<name>`'s encoder config (through the typed options) and memory."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        options = train_options(compose("train", [f"model={name}"]))
    shape = {**options.model.encoder_fields(), "vocab_size": vocab_size}
    return EncoderConfig.from_dict(shape), asdict(options.memory)


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_new_model_configs_compose_and_build(name):
    config, memory = composed_model(name, vocab_size=512)
    assert {k: getattr(config, k) for k in NEW_MODELS[name]} == NEW_MODELS[name]
    runner = build_runner(config, {**memory, "segment_tokens": 8})
    out = runner(torch.randint(5, 512, (1, 16)))  # two segments
    assert out.memory.shape == (1, memory["memory_tokens"], config.d_model)


def test_dnafm_7b_has_about_seven_billion_parameters():
    config, _ = composed_model("dnafm_7b", vocab_size=32000)  # counted, never allocated
    assert (config.n_layers, config.d_model, config.n_heads, config.d_ff) == (32, 4352, 32, 11584)
    assert config.norm == "layernorm" and config.activation == "swiglu"
    total, active = parameter_counts(config)
    assert total == active and 6.5e9 < total < 7.5e9


def test_training_an_moe_model_logs_expert_loads(tmp_path):
    overrides = [*FAST_TRAIN, "model=genos_small", "model.moe_d_ff=64", "memory.backprop=replay"]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        options = train_options(compose("train", overrides))
    train(options, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["split"] == "train"]
    assert steps and all(r["moe_aux"] > 0 for r in steps)
    assert all(len(r["moe_load_min"]) == len(r["moe_load_max"]) == 2 for r in steps)
    assert all(
        0 <= a <= 0.25 <= b <= 1
        for r in steps
        for a, b in zip(r["moe_load_min"], r["moe_load_max"], strict=True)
    )
    runner, _ = load_model(tmp_path)
    assert (runner.encoder.config.n_experts, runner.encoder.config.n_kv_heads) == (4, 2)
