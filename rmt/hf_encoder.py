"""A Hugging Face encoder (GENA-LM, BERT, RoBERTa, ModernBERT, ...) as the runner's encoder.

The runner needs three things of an encoder: `config` (d_model, vocab_size, dropout,
init_std), `embed_tokens` (the input embedding, which the MLM head ties to) and
`forward_with_memory(memory, input_ids, mask)`. `HFEncoder` gives them for any HF model
that accepts `inputs_embeds` and returns `last_hidden_state`. Memory vectors go in as
input embeddings at dedicated positions, so the model adds its own absolute positions and
token types to them, as the RMT authors' wrapper does. Layouts (`LAYOUTS`):

- `cls_mem_sep` (default; GENA-LM's RMT): `[CLS] mem [SEP] tokens [SEP]`
- `cls_mem`: `[CLS] mem tokens [SEP]`
- `mem`: `mem tokens` (no special tokens: for encoders trained without them)

With no memory tokens, `cls_mem_sep` and `cls_mem` are `[CLS] tokens [SEP]`: one segment
is then exactly the HF model's own output. A sample's closing `[SEP]` follows its last
token, not the padded segment's end, so short segments see the positions they would alone.

Attention is the HF model's business (`attn_implementation`: sdpa, flash_attention_2);
this project's Triton kernels apply to its own encoder only.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

HF_KEY = "hf"  # config.json's encoder entry holds the HF model's config under this key
LAYOUTS = ("cls_mem_sep", "cls_mem", "mem")
# Models whose absolute positions start after the padding index (RoBERTa's convention).
_PADDING_OFFSET = ("roberta", "xlm-roberta", "camembert", "esm")
log = logging.getLogger(__name__)
_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout",
             "mlp_dropout", "embedding_dropout", "dropout")  # fmt: skip


@dataclass
class HFEncoderConfig:
    """What the runner and checkpoints need of a wrapped HF encoder.

    hf: the HF model's `config.to_dict()`, from which the model is rebuilt; cls_id, sep_id,
    pad_id: the tokenizer's special ids the layout places; max_positions: how many
    positions one segment (memory and special tokens included) may use (None: unbounded).
    """

    hf: dict
    layout: str
    cls_id: int
    sep_id: int
    pad_id: int
    d_model: int
    vocab_size: int
    dropout: float
    init_std: float
    max_positions: int | None
    trust_remote_code: bool = False
    source: str | None = None  # the directory it came from (remote code is loaded from it)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}; choose one of {LAYOUTS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HFEncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown HF encoder keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def special_positions(self, memory_tokens: int) -> tuple[int, int]:
        """(positions before the segment's tokens besides memory, positions after them)."""
        if self.layout == "mem":
            return 0, 0
        between = 1 if self.layout == "cls_mem_sep" and memory_tokens > 0 else 0
        return 1 + between, 1


class HFEncoder(nn.Module):
    """An HF encoder model run segment by segment with memory at the layout's positions."""

    def __init__(self, model: nn.Module, config: HFEncoderConfig) -> None:
        super().__init__()
        if "inputs_embeds" not in inspect.signature(model.forward).parameters:
            raise ValueError(
                f"{type(model).__name__} does not accept inputs_embeds, which the memory "
                "runner needs to place memory vectors; wrap an encoder that does (BertModel, "
                "RobertaModel, ModernBertModel, ...)"
            )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused here; unused weights would stall DDP's reducer
        self.model = model
        self.config = config

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def max_segment_tokens(self, memory_tokens: int) -> int | None:
        """The longest segment the model's positions allow beside `memory_tokens` (None: any)."""
        if self.config.max_positions is None:
            return None
        return (
            self.config.max_positions
            - memory_tokens
            - sum(self.config.special_positions(memory_tokens))
        )

    def forward_with_memory(
        self, memory: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory states (b, m, d), token states (b, s, d)) of one segment in the layout."""
        b, s = input_ids.shape
        m, c = memory.shape[1], self.config
        longest = self.max_segment_tokens(m)
        if longest is not None and s > longest:
            raise ValueError(
                f"a segment of {s} tokens does not fit the HF model beside {m} memory tokens "
                f"and the {c.layout} layout's special tokens (max_position_embeddings allows "
                f"{c.max_positions} positions); set memory.segment_tokens <= {longest}"
            )
        before, after = c.special_positions(m)
        lengths = mask.sum(1) if mask is not None else input_ids.new_full((b,), s)
        positions = torch.arange(s + after, device=input_ids.device)
        body = torch.where(positions[None, :s] < lengths[:, None], input_ids, c.pad_id)
        if after:  # the closing [SEP] right after each sample's last token
            body = torch.cat([body, body.new_full((b, 1), c.pad_id)], 1)
            body = body.scatter(1, lengths[:, None].long(), c.sep_id)

        def special(token_id: int) -> torch.Tensor:
            return self.embed(input_ids.new_full((b, 1), token_id))

        parts = [memory.to(self.embed_tokens.weight.dtype), self.embed(body)]
        if before:  # [CLS] first; with cls_mem_sep and memory, a [SEP] after the memory
            parts = [special(c.cls_id), parts[0], *[special(c.sep_id)] * (before - 1), parts[1]]
        valid = torch.cat(
            [lengths.new_ones(b, m + before), positions[None] < (lengths[:, None] + after)], 1
        )
        h = self.model(inputs_embeds=torch.cat(parts, 1), attention_mask=valid.long())
        h = h.last_hidden_state
        first = 1 if before else 0
        return h[:, first : first + m], h[:, m + before : m + before + s]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token states of one segment without memory, in the layout (the bare encoder)."""
        d = self.config.d_model
        memory = input_ids.new_zeros((input_ids.shape[0], 0, d), dtype=torch.float)
        mask = attention_mask.bool() if attention_mask is not None else None
        return self.forward_with_memory(memory, input_ids, mask)[1]


def hf_encoder_config(
    hf_config, tokenizer, layout: str = "cls_mem_sep", **extra
) -> HFEncoderConfig:
    """The `HFEncoderConfig` of an HF `PretrainedConfig` and this project's tokenizer."""
    if tokenizer.vocab_size > hf_config.vocab_size:
        raise ValueError(
            f"{tokenizer!r} has {tokenizer.vocab_size:,} ids but the HF model embeds "
            f"{hf_config.vocab_size:,}; use the tokenizer.json saved with the model"
        )
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is not None and hf_config.model_type in _PADDING_OFFSET:
        limit -= (hf_config.pad_token_id or 0) + 1
    return HFEncoderConfig(
        hf=hf_config.to_dict(),
        layout=layout,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
        d_model=hf_config.hidden_size,
        vocab_size=hf_config.vocab_size,
        dropout=max(float(getattr(hf_config, key, 0.0) or 0.0) for key in _DROPOUTS),
        init_std=getattr(hf_config, "initializer_range", 0.02),
        max_positions=limit,
        **extra,
    )


def load_hf_encoder(
    path: str | os.PathLike,
    tokenizer,
    layout: str = "cls_mem_sep",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> HFEncoder:
    """The pretrained HF encoder in local directory `path` (nothing is downloaded)."""
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    check_hf_dir(path)
    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    hf_config = AutoConfig.from_pretrained(path, **options)
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    # fp32 whatever dtype it was saved in: the runner's memory and heads are fp32, and
    # training keeps fp32 weights (autocast computes in bf16)
    model = _quietly_loaded(AutoModel, path, dtype=torch.float32, **options)
    config = hf_encoder_config(
        hf_config, tokenizer, layout, trust_remote_code=trust_remote_code, source=str(path)
    )
    return HFEncoder(model, config)


def _quietly_loaded(auto_class, path: Path, **options) -> nn.Module:
    """`from_pretrained` without transformers' load report, which calls the unused pooler
    "missing" and a masked-LM head "unexpected"; one warning instead for encoder weights
    the directory lacks (they start untrained)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_class.from_pretrained(path, output_loading_info=True, **options)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    if missing:
        log.warning("%s lacks %d of the encoder's weights, which start untrained: %s",
                    path, len(missing), ", ".join(sorted(missing)[:4]))  # fmt: skip
    return model


def hf_encoder_from_dict(values: dict) -> HFEncoder:
    """An untrained `HFEncoder` from `HFEncoderConfig.to_dict()` (checkpoints load weights)."""
    from transformers import AutoConfig, AutoModel

    config = HFEncoderConfig.from_dict(values)
    if config.trust_remote_code:  # the model's code lives beside its original weights
        hf_config = AutoConfig.from_pretrained(
            config.source, local_files_only=True, trust_remote_code=True
        )
    else:
        hf = dict(config.hf)
        hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = AutoModel.from_config(
        hf_config, trust_remote_code=config.trust_remote_code, dtype=torch.float32
    )
    return HFEncoder(model, config)


def check_hf_dir(path: Path) -> None:
    """A clear error unless `path` is a local HF model directory (config.json + model_type)."""
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(
            f"{path} is not a Hugging Face model directory (no config.json); give the local "
            "directory that save_pretrained wrote (config.json, model.safetensors, "
            "tokenizer.json): nothing is downloaded"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{config} is not a JSON object ({err}); restore the file") from err
    if not model_type:
        raise ValueError(
            f"{config} has no model_type, so it is not a Hugging Face model config; give the "
            "directory of a model saved with save_pretrained"
        )


def mlm_head_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A BERT-style masked-LM head's weights in `path`'s model.safetensors, named as
    `rmt.heads.MLMHead`'s (dense, norm, decoder.bias); {} when the file has none.

    So continued pre-training of a BertForMaskedLM checkpoint (GENA-LM's) starts from its
    trained MLM head instead of a random one.
    """
    from safetensors import safe_open

    file = Path(path) / "model.safetensors"
    if not file.is_file():
        return {}
    names = {
        "predictions.transform.dense.weight": "dense.weight",
        "predictions.transform.dense.bias": "dense.bias",
        "predictions.transform.LayerNorm.weight": "norm.weight",
        "predictions.transform.LayerNorm.bias": "norm.bias",
        "predictions.bias": "decoder.bias",
    }
    out = {}
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            for suffix, name in names.items():
                if key.endswith("cls." + suffix):
                    out[name] = f.get_tensor(key)
    return out


__all__ = [
    "HF_KEY",
    "LAYOUTS",
    "HFEncoder",
    "HFEncoderConfig",
    "check_hf_dir",
    "hf_encoder_config",
    "hf_encoder_from_dict",
    "load_hf_encoder",
    "mlm_head_weights",
]
