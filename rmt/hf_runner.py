"""A pretrained local Hugging Face encoder as a memory runner with a tied MLM head.

rmt-train (`model.hf=DIR`: continued MLM pre-training with memory), rmt-finetune and
rmt-infer (`checkpoint=DIR`) start from such a directory: GENA-LM, or any BERT-style
encoder saved with `save_pretrained` beside its tokenizer.json. Its masked-LM head,
when the weights hold a BERT one (`mlm_head_weights`), becomes the runner's, so
continued pre-training does not restart from a random head. What training writes is
this project's checkpoint (rmt.checkpoint), loadable without the directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from data import DNATokenizer
from rmt.checkpoint import HF_MODEL_TYPE, mlm_head
from rmt.data_config import hf_tokenizer
from rmt.heads import MLMHead
from rmt.hf_encoder import HFEncoder, load_hf_encoder, mlm_head_weights
from rmt.runner import MemoryRunner

log = logging.getLogger(__name__)


def is_hf_encoder_dir(path: str | os.PathLike) -> bool:
    """A bare pretrained HF encoder rather than one of this project's models: config.json
    names a model_type other than rmt-dna and has no "format" key (checkpoints have)."""
    config = Path(path) / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(values, dict)
        and "format" not in values
        and values.get("model_type") not in (None, HF_MODEL_TYPE)
    )


def pretrained_mlm_head(encoder: HFEncoder, path: Path, kernels: str = "auto") -> MLMHead:
    """`mlm_head`, with the BERT MLM head in `path`'s weights when they hold one."""
    head = mlm_head(encoder, kernels)
    weights = mlm_head_weights(path)
    if not weights:
        log.info("%s holds no BERT masked-LM head: the MLM head starts untrained",
                 path / "model.safetensors")  # fmt: skip
        return head
    try:
        missing, _ = head.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise ValueError(
            f"{path / 'model.safetensors'}: its masked-LM head does not fit the encoder "
            f"({str(err).splitlines()[-1].strip()}); re-save the model with save_pretrained"
        ) from err
    if missing != ["decoder.weight"]:  # the decoder is tied to the token embeddings
        raise ValueError(
            f"{path / 'model.safetensors'} holds only part of a BERT masked-LM head (missing "
            f"{[m for m in missing if m != 'decoder.weight']}); re-save it with save_pretrained"
        )
    return head


def fitting_segment_tokens(encoder: HFEncoder, memory_tokens: int, path: Path) -> int:
    """The longest segment the model's positions hold beside the memory and specials."""
    longest = encoder.max_segment_tokens(memory_tokens)
    if longest is None:
        raise ValueError(
            f"{path / 'config.json'} sets no max_position_embeddings, so no segment length "
            "follows from it: set memory.segment_tokens"
        )
    if longest < 1:
        raise ValueError(
            f"{path / 'config.json'}: max_position_embeddings={encoder.config.max_positions} "
            f"leaves no room for tokens beside {memory_tokens} memory tokens and the "
            f"{encoder.config.layout} layout's special tokens: use fewer memory tokens"
        )
    return longest


def hf_runner(
    path: str | os.PathLike,
    tokenizer,
    runner_config: dict,
    layout: str = "cls_mem_sep",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    kernels: str = "auto",
) -> MemoryRunner:
    """The HF encoder in `path` with its MLM head (`pretrained_mlm_head`) as a runner.

    `runner_config` holds MemoryRunner's keyword arguments; a `segment_tokens` of None is
    the longest segment that fits the model's positions (`fitting_segment_tokens`).
    """
    path = Path(path)
    encoder = load_hf_encoder(path, tokenizer, layout, attn_implementation, trust_remote_code)
    options = dict(runner_config)
    if options.get("segment_tokens") is None:
        options["segment_tokens"] = fitting_segment_tokens(
            encoder, options.get("memory_tokens", 0), path
        )
    return MemoryRunner(encoder, head=pretrained_mlm_head(encoder, path, kernels), **options)


def bare_hf_model(
    path: str | os.PathLike,
    layout: str = "cls_mem_sep",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    kernels: str = "auto",
    key: str = "checkpoint",
) -> tuple[MemoryRunner, DNATokenizer]:
    """A bare HF encoder directory for inference: no memory (none was trained), the
    longest segments its positions hold, its MLM head only if the weights hold one (an
    untrained head's scores would mean nothing), and its tokenizer.json. `key` names
    where the directory was given, for errors."""
    path = Path(path)
    tokenizer = hf_tokenizer(path, key)
    runner = hf_runner(
        path, tokenizer, {"memory_tokens": 0, "segment_tokens": None}, layout,
        attn_implementation, trust_remote_code, kernels=kernels,
    )  # fmt: skip
    if not mlm_head_weights(path):
        runner.head = None
    return runner.eval(), tokenizer


__all__ = [
    "bare_hf_model",
    "fitting_segment_tokens",
    "hf_runner",
    "is_hf_encoder_dir",
    "pretrained_mlm_head",
]
