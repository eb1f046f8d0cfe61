"""The Triton kernels against their torch references, forward and every gradient.

Without a GPU they run under Triton's CPU interpreter (TRITON_INTERPRET=1, set by
conftest.py before anything imports kernels.*): fp32 only, small shapes, odd widths.
The CUDA tests (skipped here) check bf16: the kernels' error against an fp32 reference
must be at most twice torch's own bf16 error.
"""

from __future__ import annotations

import csv

import pytest
import torch
from einops import rearrange

import kernels
from kernels import add_norm, cross_entropy, device, glu, reference, rotary
from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_interpreter = pytest.mark.skipif(CUDA, reason="the CPU interpreter tests run without CUDA")
DEVICE = "cuda" if CUDA else "cpu"


def run_both(kernel, ref, inputs, cotangent_seed=0):
    """Outputs and input gradients of `kernel` and `ref` on copies of the same inputs,
    with the same random cotangent on every output."""
    results = []
    for fn in (kernel, ref):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        g = torch.Generator(device=outs[0].device).manual_seed(cotangent_seed)
        # drawn in fp32 whatever the output dtype, so fp32 and bf16 runs get the same one
        cot = [torch.randn(o.shape, generator=g, device=o.device).to(o.dtype) for o in outs]
        torch.autograd.backward(outs, cot)
        grads = [leaf.grad for leaf in leaves if leaf.requires_grad]
        results.append(([o.detach() for o in outs], grads))
    return results


def assert_match(kernel, ref, inputs, atol=2e-5, rtol=2e-5):
    (outs, grads), (ref_outs, ref_grads) = run_both(kernel, ref, inputs)
    assert len(outs) == len(ref_outs) and len(grads) == len(ref_grads)
    for got, want in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert got is not None and got.shape == want.shape and got.dtype == want.dtype
        assert want.abs().max() > 0  # a zero reference would prove nothing
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, device=DEVICE) * scale


# -- residual add + norm -----------------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("rows", [1, 23])
@pytest.mark.parametrize("width", [40, 200])
@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("kind", ["rms", "layer", "layer_nobias"])
def test_add_norm_matches_reference(kind, with_delta, width, rows):
    torch.manual_seed(width + rows)
    x, delta = randn(rows, width) * 2 + 0.5, randn(rows, width)
    weight, bias = randn(width) + 1, randn(width)
    extra = [delta] if with_delta else []
    if kind == "rms":

        def call(impl):
            def fn(x, w, *d):
                return impl.add_rms_norm(x, d[0] if d else None, w, 1e-6)

            return fn

        inputs = [x, weight, *extra]
    elif kind == "layer":

        def call(impl):
            def fn(x, w, b, *d):
                return impl.add_layer_norm(x, d[0] if d else None, w, b, 1e-5)

            return fn

        inputs = [x, weight, bias, *extra]
    else:

        def call(impl):
            def fn(x, w, *d):
                return impl.add_layer_norm(x, d[0] if d else None, w, None, 1e-5)

            return fn

        inputs = [x, weight, *extra]
    assert_match(call(add_norm), call(reference), inputs)


@needs_interpreter
@pytest.mark.parametrize("used", [0, 1])
def test_add_norm_when_only_one_output_is_used(used):
    """The encoder's final norm uses only `normed`: the other output's gradient is None.
    (With only the stream used, the weight is left out: torch gives it no gradient.)"""
    x, delta, weight = randn(3, 5, 40), randn(3, 5, 40), randn(40) + 1

    def only(impl):
        return lambda x, d, *w: impl.add_rms_norm(x, d, w[0] if w else weight, 1e-6)[used]

    assert_match(only(add_norm), only(reference), [x, delta, *([weight] if used == 0 else [])])


@needs_interpreter
def test_add_norm_weight_gradient_is_reduced_over_all_rows():
    """More rows than reduction programs: every row must land in some partial sum."""
    rows = 4 * device.reduction_programs(10**6, torch.device(DEVICE)) + 3
    x, weight = randn(rows, 40), torch.ones(40, device=DEVICE, requires_grad=True)
    normed, _ = add_norm.add_rms_norm(x, None, weight, 1e-6)
    normed.sum().backward()
    want = reference.rms_norm(x, torch.ones(40, device=DEVICE), 1e-6).sum(0)
    torch.testing.assert_close(weight.grad, want, atol=1e-4, rtol=1e-5)


# -- gated activations -------------------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("name", ["swiglu", "geglu"])
@pytest.mark.parametrize("shape", [(1, 40), (3, 5, 200)])
def test_glu_on_split_projection_matches_reference(name, shape):
    """gate and up as the MLP passes them: strided halves of one tensor."""
    h = randn(*shape[:-1], 2 * shape[-1], scale=3)

    def split(impl):
        return lambda h: getattr(impl, name)(*h.chunk(2, dim=-1))

    assert_match(split(glu), split(reference), [h])


@needs_interpreter
@pytest.mark.parametrize("name", ["swiglu", "geglu"])
# numpy's exp overflows to inf for sigmoid at large |x|; the sigmoid (0 or 1) is still right
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_glu_on_separate_inputs_matches_reference(name):
    gate, up = randn(7, 40, scale=4), randn(7, 40)
    assert_match(getattr(glu, name), getattr(reference, name), [gate, up])


# -- rotary ------------------------------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize(
    ("batch", "heads", "length", "head_dim"),
    [(1, 1, 528, 16), (2, 3, 7, 40), (1, 2, 1, 8)],  # 512 content + 16 memory tokens; odd
)
def test_rotary_on_qkv_views_matches_reference(batch, heads, length, head_dim):
    qkv = randn(batch, length, 3 * heads * head_dim)
    cos, sin = reference.rotary_tables(length, head_dim, 1e4, torch.device(DEVICE), qkv.dtype)

    def rotate(impl):
        def fn(qkv):
            q, k, _ = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=heads)
            return impl.apply_rotary(q, k, cos, sin)

        return fn

    assert_match(rotate(rotary), rotate(reference), [qkv])


@needs_interpreter
def test_rotary_on_contiguous_inputs_matches_reference():
    q, k = randn(2, 2, 9, 12), randn(2, 2, 9, 12)
    cos, sin = reference.rotary_tables(9, 12, 1e4, torch.device(DEVICE), q.dtype)
    assert_match(
        lambda q, k: rotary.apply_rotary(q, k, cos, sin),
        lambda q, k: reference.apply_rotary(q, k, cos, sin),
        [q, k],
    )


# -- fused linear + cross-entropy -------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize(
    ("rows", "vocab", "chunk_rows", "with_bias"),
    [(1, 200, None, True), (37, 200, 16, True), (37, 200, 16, False), (5, 4100, 2, True)],
)
def test_linear_cross_entropy_matches_reference(rows, vocab, chunk_rows, with_bias):
    """Chunks cross row borders (37 rows in 16s), vocab crosses the 4096 block."""
    torch.manual_seed(rows + vocab)
    x, weight, bias = randn(rows, 40), randn(vocab, 40, scale=0.5), randn(vocab)
    labels = torch.randint(0, vocab, (rows,), device=DEVICE)
    labels[1::3] = reference.IGNORE_INDEX

    def kernel(x, w, *b):
        b = b[0] if b else None
        return cross_entropy.linear_cross_entropy(x, w, b, labels, chunk_rows=chunk_rows)

    def ref(x, w, *b):
        return reference.linear_cross_entropy(x, w, b[0] if b else None, labels)

    assert_match(kernel, ref, [x, weight, *([bias] if with_bias else [])], atol=1e-4)


@needs_interpreter
def test_linear_cross_entropy_backward_can_run_twice_and_without_grad():
    """The runner's backward may differentiate the same loss twice (retain_graph)."""
    x = randn(9, 40).requires_grad_()
    weight, labels = randn(50, 40), torch.randint(0, 50, (9,), device=DEVICE)
    loss = cross_entropy.linear_cross_entropy(x, weight, None, labels, chunk_rows=4)
    first = torch.autograd.grad(loss, x, torch.tensor(2.0), retain_graph=True)[0]
    second = torch.autograd.grad(loss, x, torch.tensor(2.0))[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    with torch.no_grad():
        again = cross_entropy.linear_cross_entropy(x, weight, None, labels, chunk_rows=4)
    torch.testing.assert_close(again, loss.detach(), atol=0, rtol=0)
    torch.testing.assert_close(
        loss, reference.linear_cross_entropy(x, weight, None, labels), atol=1e-4, rtol=1e-5
    )


# -- the model on either backend --------------------------------------------------------


def tiny_runner(backend: str, norm: str, activation: str) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(
        vocab_size=50, d_model=32, n_layers=2, n_heads=2, norm=norm, activation=activation,
    )  # fmt: skip
    encoder = Encoder(config, kernels=backend)
    head = MLMHead(32, 50, encoder.embed_tokens, kernels=backend)
    return MemoryRunner(encoder, 3, 8, head=head).to(DEVICE)


@needs_interpreter
@pytest.mark.parametrize(("norm", "activation"), [("rmsnorm", "swiglu"), ("layernorm", "geglu")])
def test_encoder_loss_and_gradients_are_the_same_on_both_backends(norm, activation):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 24), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, -100)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # a padded sample: the masked attention path
    results = {}
    for backend in ("torch", "triton"):
        runner = tiny_runner(backend, norm, activation)
        out = runner(ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE))
        out.loss.backward()
        results[backend] = (out.loss.detach(), {n: p.grad for n, p in runner.named_parameters()})
    fused = tiny_runner("triton", norm, activation)
    assert fused.encoder.blocks[0].norm1.ops.add_rms_norm is add_norm.add_rms_norm
    assert fused.head.decoder.ops.linear_cross_entropy is cross_entropy.linear_cross_entropy
    (loss_t, grads_t), (loss_k, grads_k) = results["torch"], results["triton"]
    torch.testing.assert_close(loss_k, loss_t, atol=1e-5, rtol=1e-5)
    assert grads_k.keys() == grads_t.keys()
    for name, grad in grads_t.items():
        torch.testing.assert_close(grads_k[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_triton_table_falls_back_to_torch_for_cpu_tensors(monkeypatch):
    """A model built with kernels=auto on a GPU machine still runs on the CPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, delta, weight = torch.randn(4, 40), torch.randn(4, 40), torch.randn(40)
    got = add_norm.add_rms_norm(x, delta, weight, 1e-6)
    want = reference.add_rms_norm(x, delta, weight, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# -- choosing a backend ------------------------------------------------------------------


def test_resolve_backend_choices_and_errors(monkeypatch):
    with pytest.raises(ValueError, match="kernels='cuda' is not a backend; choose one of auto"):
        kernels.resolve_backend("cuda")
    assert kernels.resolve_backend("torch") == "torch"
    assert kernels.get_ops("torch").add_rms_norm is reference.add_rms_norm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.resolve_backend("auto") == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_backend("triton") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match=r"needs a CUDA GPU.*TRITON_INTERPRET=1.*kernels=torch"):
        kernels.resolve_backend("triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        MLMHead(8, 10, kernels="triton")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.resolve_backend("auto") == "triton"
    monkeypatch.setattr(kernels, "_triton_imports", lambda: False)
    assert kernels.resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match=r"triton package is not installed; pip install"):
        kernels.resolve_backend("triton")


def test_kernel_benchmark_dry_run_writes_its_csv(tmp_path):
    from benchmarks import kernels as bench

    out = tmp_path / "kernels.csv"
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("device,case,provider")
    providers = {line.split(",")[2] for line in lines[1:]}
    assert "torch" in providers and ("triton" in providers) == (not CUDA)
    assert len(lines) == 1 + 7 * len(providers)  # 6 kernels + the training step
    rows = list(csv.DictReader(lines))
    memory_bound = [r for r in rows if r["gb_per_s"]]
    assert memory_bound and all(float(r["bandwidth_fraction"]) > 0 for r in memory_bound)


# -- CUDA: bf16 accuracy and the loss's memory --------------------------------------------


def bf16_errors(kernel, ref, inputs):
    """Max abs error of kernel(bf16) and ref(bf16) against ref(fp32), per output/grad."""
    exact = run_both(ref, ref, [x.float() for x in inputs])[0]
    (k_outs, k_grads), (r_outs, r_grads) = run_both(kernel, ref, [x.bfloat16() for x in inputs])
    want = exact[0] + exact[1]
    return [
        ((k.float() - w).abs().max().item(), (r.float() - w).abs().max().item())
        for k, r, w in zip(k_outs + k_grads, r_outs + r_grads, want, strict=True)
    ]


@needs_cuda
@pytest.mark.parametrize("case", ["rms", "layer", "swiglu", "geglu", "rotary"])
def test_bf16_error_is_at_most_twice_torch_own(case):
    torch.manual_seed(0)
    if case == "rms":
        inputs = [randn(4224, 768), randn(4224, 768), randn(768) + 1]
        kernel = lambda x, d, w: add_norm.add_rms_norm(x, d, w, 1e-6)  # noqa: E731
        ref = lambda x, d, w: reference.add_rms_norm(x, d, w, 1e-6)  # noqa: E731
    elif case == "layer":
        inputs = [randn(4224, 768), randn(4224, 768), randn(768) + 1, randn(768)]
        kernel = lambda x, d, w, b: add_norm.add_layer_norm(x, d, w, b, 1e-5)  # noqa: E731
        ref = lambda x, d, w, b: reference.add_layer_norm(x, d, w, b, 1e-5)  # noqa: E731
    elif case in ("swiglu", "geglu"):
        inputs = [randn(4224, 2 * 2048, scale=2)]
        kernel = lambda h: getattr(glu, case)(*h.chunk(2, -1))  # noqa: E731
        ref = lambda h: getattr(reference, case)(*h.chunk(2, -1))  # noqa: E731
    else:
        cos, sin = reference.rotary_tables(528, 64, 1e4, torch.device("cuda"), torch.float32)

        def rotate(impl):
            def fn(qkv):
                q, k, _ = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=12)
                return impl.apply_rotary(q, k, cos.to(qkv.dtype), sin.to(qkv.dtype))

            return fn

        inputs, kernel, ref = [randn(8, 528, 3 * 768)], rotate(rotary), rotate(reference)
    for kernel_err, torch_err in bf16_errors(kernel, ref, inputs):
        assert kernel_err <= 2 * torch_err + 1e-6


@needs_cuda
def test_bf16_loss_error_and_peak_memory():
    torch.manual_seed(0)
    rows, vocab, width = 4224, 32768, 768
    x, weight, bias = randn(rows, width), randn(vocab, width, scale=0.02), randn(vocab, scale=0.02)
    labels = torch.randint(0, vocab, (rows,), device="cuda")
    errors = bf16_errors(
        lambda x, w, b: cross_entropy.linear_cross_entropy(x, w, b, labels),
        lambda x, w, b: reference.linear_cross_entropy(x, w, b, labels),
        [x, weight, bias],
    )
    for kernel_err, torch_err in errors:
        assert kernel_err <= 2 * torch_err + 1e-6
    peaks = []
    for fn in (cross_entropy.linear_cross_entropy, reference.linear_cross_entropy):
        leaves = [t.detach().bfloat16().requires_grad_() for t in (x, weight, bias)]
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*leaves, labels).backward()
        peaks.append(torch.cuda.max_memory_allocated() - before)
    logits_bytes = rows * vocab * 4
    assert peaks[0] < logits_bytes / 2 < peaks[1]


@needs_cuda
def test_encoder_under_bf16_autocast_matches_torch_backend():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 24), generator=g).cuda()
    labels = torch.where(torch.rand(ids.shape, generator=g).cuda() < 0.4, ids, -100)
    losses = []
    for backend in ("torch", "triton"):
        runner = tiny_runner(backend, "rmsnorm", "swiglu")
        with torch.autocast("cuda", torch.bfloat16):
            losses.append(runner(ids, None, labels).loss.float())
    torch.testing.assert_close(losses[1], losses[0], atol=2e-2, rtol=1e-2)
