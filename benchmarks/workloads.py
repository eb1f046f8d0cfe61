"""What rmt-bench measures: the RMT in each mode, and the baselines users would pick.

Each method builds, from a `Point`, one step to time (`Workload.step`) and the model
FLOPs that step performs. Inference steps encode every content token and keep nothing;
training steps are forward + backward + AdamW (`optimizer: none`: forward + backward
only) with the MLM loss on the labelled tokens.

- `rmt_infer`: streaming, one segment at a time, only the memory carried over.
- `rmt_full`, `rmt_truncated`, `rmt_replay`, `rmt_checkpoint`: one training step of the
  memory runner with that `memory.backprop` (truncated uses `bptt_depth`).
- `whole_infer`, `whole_train`: the same encoder on the whole sequence at once, no
  memory (quadratic attention): where does recurrence start to win?
- `bert_infer`, `bert_train`: Hugging Face `transformers` BertModel of the same width,
  depth and heads (GELU MLP of 4 d: the gated MLP's FLOPs) over non-overlapping windows
  of the segment length, with gradient accumulation over windows when training (same
  MLM head and loss as the RMT): the common practice today.
- `hf_rmt_infer`, `hf_rmt_train`: `rmt_infer` and `rmt_full` with that BertModel as the
  runner's encoder (`rmt.hf_encoder.HFEncoder`, GENA-LM's layout `[CLS] memory [SEP]
  segment [SEP]`): what wrapping a Hugging Face encoder costs against the native one.
- `luci_infer`, `luci_train`, `luci_replay`: lucidrains' RMT (`benchmarks.peers`), a
  causal decoder LM at the same shape: streaming inference (its transformer a segment
  at a time, no LM head), its wrapper's full-BPTT training step, and its wrapper's
  memory-replay backprop; its loss is next-token prediction on every token.
- `naive_infer`, `naive_train`: a recurrent runner as public reference implementations
  write it: every segment's outputs are kept (inference) and full logits over every
  token of every segment feed one loss at the end (training): the memory growth users
  hit.

Model FLOPs count matmuls (`benchmarks.measure.segment_flops`) of the forward, times 3
for training; recomputation (checkpoint, replay) is not counted, so it shows as a lower
utilization, as MFU is defined. lucidrains' RMT counts its own shape (`peers.luci_flops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from benchmarks.measure import head_flops, segment_flops
from benchmarks.peers import luci_flops, luci_loss, luci_model, luci_stream
from benchmarks.points import METHODS, RMT_TRAIN, Point
from data import NucleotideTokenizer
from rmt import Encoder, EncoderConfig, MemoryRunner, MLMHead, build_runner
from rmt.compile import compile_runner
from rmt.heads import IGNORE_INDEX
from rmt.hf_encoder import HFEncoder, hf_encoder_config

HF_LAYOUT = "cls_mem_sep"  # GENA-LM's RMT layout: [CLS] memory [SEP] segment [SEP]
HF_SPECIALS = 3  # the most special tokens the layout places beside memory and a segment


@dataclass
class Workload:
    """One step to time, the module it runs (to inspect its state) and its model FLOPs."""

    step: Callable[[], None]
    module: torch.nn.Module
    model_flops: float


def build(point: Point) -> Workload:
    """The workload of `point.method`, on its device, with random tokens and labels."""
    if point.method not in METHODS:
        raise ValueError(f"method {point.method!r} is not one of {', '.join(METHODS)}")
    torch.manual_seed(point.seed)
    config, device = point.config, torch.device(point.device)
    shape = (point.batch_size, point.segments * point.segment_tokens)
    input_ids = torch.randint(0, config.vocab_size, shape, device=device)
    labelled = torch.rand(shape, device=device) < point.label_fraction
    labels = torch.where(labelled, input_ids, IGNORE_INDEX)
    builder = _BUILDERS.get(point.method) or _rmt_train
    workload = builder(point, config, input_ids, labels)
    if point.dtype == "bfloat16":
        return replace(workload, step=_autocast(workload.step, point.device))
    return workload


def _autocast(step: Callable[[], None], device: str) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            step()

    return run


def _train_step(
    point: Point, model: torch.nn.Module, loss: Callable[[], torch.Tensor | None]
) -> Callable[[], None]:
    """forward + backward (+ AdamW): `loss()` may also call backward itself and return None.

    With `optimizer: none` no optimizer state exists, so the step's peak is the
    activations' and the gradients' alone.
    """
    adamw = point.optimizer == "adamw"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if adamw else None

    def step() -> None:
        model.zero_grad(set_to_none=True)
        value = loss()
        if value is not None:
            value.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def _encoder_flops(point: Point, config: EncoderConfig, span: int, memory_tokens: int) -> int:
    """Encoder FLOPs of one forward over all content tokens, in chunks of `span` tokens."""
    chunks = point.segments * point.segment_tokens // span
    return point.batch_size * chunks * segment_flops(config, span, memory_tokens, head=False)


def _labelled(labels: torch.Tensor) -> int:
    return int((labels != IGNORE_INDEX).sum())


def _runner(point: Point, config: EncoderConfig, backprop: str = "full") -> MemoryRunner:
    runner_config = {
        "memory_tokens": point.memory_tokens,
        "segment_tokens": point.segment_tokens,
        "bptt_depth": point.bptt_depth if backprop == "truncated" else -1,
        "backprop": backprop,
    }
    runner = build_runner(config, runner_config, kernels=point.kernels).to(point.device)
    return compile_runner(runner, point.compile)


def _streaming(point: Point, runner: MemoryRunner, input_ids: torch.Tensor) -> Callable[[], None]:
    """Inference a segment at a time, only the memory carried over."""
    runner.eval()
    start = runner.init_memory(point.batch_size).detach()

    @torch.inference_mode()
    def step() -> None:
        memory = start
        for segment in input_ids.split(point.segment_tokens, dim=1):
            _, memory = runner.step(segment, memory)

    return step


def _runner_training(
    point: Point, runner: MemoryRunner, input_ids: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """One training step of the runner's own forward (MLM loss on the labelled tokens)."""
    runner.train()
    return _train_step(point, runner, lambda: runner(input_ids, labels=labels).loss)


def _rmt_infer(point, config, input_ids, labels) -> Workload:
    runner = _runner(point, config)
    flops = _encoder_flops(point, config, point.segment_tokens, point.memory_tokens)
    return Workload(_streaming(point, runner, input_ids), runner, flops)


def _rmt_train(point, config, input_ids, labels) -> Workload:
    runner = _runner(point, config, RMT_TRAIN[point.method])
    step = _runner_training(point, runner, input_ids, labels)
    flops = _encoder_flops(point, config, point.segment_tokens, point.memory_tokens)
    return Workload(step, runner, 3 * (flops + head_flops(config, _labelled(labels))))


def _naive_segments(runner: MemoryRunner, input_ids: torch.Tensor, memory: torch.Tensor):
    """Yield each segment's outputs (memory positions first), the memory carried."""
    m = runner.memory_tokens
    for segment in input_ids.split(runner.segment_tokens, dim=1):
        x = torch.cat([memory, runner.encoder.embed(segment)], dim=1)
        outputs = runner.encoder.forward_embeddings(x)
        memory = outputs[:, :m]
        yield outputs


def _naive_infer(point, config, input_ids, labels) -> Workload:
    runner = _runner(point, config).eval()
    start = runner.init_memory(point.batch_size).detach()

    @torch.inference_mode()
    def step() -> None:
        torch.cat(list(_naive_segments(runner, input_ids, start)), dim=1)

    return Workload(
        step, runner, _encoder_flops(point, config, point.segment_tokens, point.memory_tokens)
    )


def _naive_train(point, config, input_ids, labels) -> Workload:
    runner = _runner(point, config).train()
    m = runner.memory_tokens

    def loss() -> torch.Tensor:
        outputs = _naive_segments(runner, input_ids, runner.init_memory(point.batch_size))
        logits = [runner.head(out[:, m:]) for out in outputs]
        logits = torch.cat(logits, dim=1)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    flops = _encoder_flops(point, config, point.segment_tokens, point.memory_tokens)
    flops += head_flops(config, point.content_tokens)  # logits for every token
    return Workload(_train_step(point, runner, loss), runner, 3 * flops)


def _whole_infer(point, config, input_ids, labels) -> Workload:
    encoder = Encoder(config, kernels=point.kernels).to(point.device).eval()

    @torch.inference_mode()
    def step() -> None:
        encoder(input_ids)

    return Workload(
        step, encoder, _encoder_flops(point, config, point.segments * point.segment_tokens, 0)
    )


def _whole_train(point, config, input_ids, labels) -> Workload:
    encoder = Encoder(config, kernels=point.kernels)
    head = MLMHead(config.d_model, config.vocab_size, encoder.embed_tokens, point.kernels)
    model = torch.nn.ModuleDict({"encoder": encoder, "head": head}).to(point.device)

    def loss() -> torch.Tensor:
        total, count = model["head"].loss(model["encoder"](input_ids), labels)
        return total / count.clamp(min=1)

    flops = _encoder_flops(point, config, point.segments * point.segment_tokens, 0)
    flops += head_flops(config, _labelled(labels))
    return Workload(_train_step(point, model, loss), model, 3 * flops)


def _bert(point: Point, config: EncoderConfig, extra_positions: int = 0):
    """A transformers BertModel of the encoder's width, depth and heads (GELU MLP of 4 d),
    with positions for a segment and `extra_positions` more (at least BERT's 512)."""
    from transformers import BertConfig, BertModel

    bert_config = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=4 * config.d_model,
        max_position_embeddings=max(512, point.segment_tokens + extra_positions),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    flop_config = replace(config, activation="gelu", d_ff=4 * config.d_model)
    return BertModel(bert_config, add_pooling_layer=False).to(point.device), flop_config


def _bert_infer(point, config, input_ids, labels) -> Workload:
    bert, flop_config = _bert(point, config)
    bert.eval()

    @torch.inference_mode()
    def step() -> None:
        for window in input_ids.split(point.segment_tokens, dim=1):
            bert(input_ids=window)

    return Workload(step, bert, _encoder_flops(point, flop_config, point.segment_tokens, 0))


def _bert_train(point, config, input_ids, labels) -> Workload:
    bert, flop_config = _bert(point, config)
    embeddings = bert.embeddings.word_embeddings
    head = MLMHead(config.d_model, config.vocab_size, embeddings, point.kernels)
    model = torch.nn.ModuleDict({"bert": bert, "head": head.to(point.device)}).train()
    count = max(_labelled(labels), 1)

    def loss() -> None:  # gradient accumulation over windows: memory stays one window's
        windows = zip(
            input_ids.split(point.segment_tokens, dim=1),
            labels.split(point.segment_tokens, dim=1),
            strict=True,
        )
        for window, window_labels in windows:
            hidden = model["bert"](input_ids=window).last_hidden_state
            total, _ = model["head"].loss(hidden, window_labels)
            (total / count).backward()

    flops = _encoder_flops(point, flop_config, point.segment_tokens, 0)
    flops += head_flops(config, _labelled(labels))
    return Workload(_train_step(point, model, loss), model, 3 * flops)


def _hf_runner(point: Point, config: EncoderConfig):
    """The memory runner around `_bert`'s BertModel (`rmt.hf_encoder`), with a tied MLM
    head; also the FLOP config and the positions beside each segment's tokens.

    The layout's special ids are those of every tokenizer of this project ([CLS] 1,
    [SEP] 2, [PAD] 3: `NucleotideTokenizer`'s); the tokens are random ids anyway.
    """
    m = point.memory_tokens
    bert, flop_config = _bert(point, config, extra_positions=m + HF_SPECIALS)
    encoder = HFEncoder(bert, hf_encoder_config(bert.config, NucleotideTokenizer(), HF_LAYOUT))
    head = MLMHead(config.d_model, config.vocab_size, encoder.embed_tokens, point.kernels)
    runner = MemoryRunner(encoder, m, point.segment_tokens, head=head).to(point.device)
    positions = m + sum(encoder.config.special_positions(m))
    return compile_runner(runner, point.compile), flop_config, positions


def _hf_rmt_infer(point, config, input_ids, labels) -> Workload:
    runner, flop_config, positions = _hf_runner(point, config)
    flops = _encoder_flops(point, flop_config, point.segment_tokens, positions)
    return Workload(_streaming(point, runner, input_ids), runner, flops)


def _hf_rmt_train(point, config, input_ids, labels) -> Workload:
    runner, flop_config, positions = _hf_runner(point, config)
    step = _runner_training(point, runner, input_ids, labels)
    flops = _encoder_flops(point, flop_config, point.segment_tokens, positions)
    return Workload(step, runner, 3 * (flops + head_flops(config, _labelled(labels))))


def _luci_infer(point, config, input_ids, labels) -> Workload:
    model = luci_model(point, config, lm_head=False)
    flops = luci_flops(point, config, lm_head=False)
    return Workload(luci_stream(point, model, input_ids), model, flops)


def _luci_train(point, config, input_ids, labels) -> Workload:
    """Full BPTT or memory replay: its loss scores every token (`labels` are the MLM's)."""
    model = luci_model(point, config)
    loss = luci_loss(model, input_ids, replay=point.method == "luci_replay")
    return Workload(_train_step(point, model, loss), model, 3 * luci_flops(point, config))


_BUILDERS = {
    "rmt_infer": _rmt_infer,
    "naive_infer": _naive_infer,
    "naive_train": _naive_train,
    "whole_infer": _whole_infer,
    "whole_train": _whole_train,
    "bert_infer": _bert_infer,
    "bert_train": _bert_train,
    "hf_rmt_infer": _hf_rmt_infer,
    "hf_rmt_train": _hf_rmt_train,
    "luci_infer": _luci_infer,
    "luci_train": _luci_train,
    "luci_replay": _luci_train,
}
