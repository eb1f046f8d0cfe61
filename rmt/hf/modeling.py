"""Hugging Face model classes around this project's `MemoryRunner`.

Each holds the whole model as `self.runner`, built by `rmt.checkpoint.runner_from_config`
from the `RMTConfig` (native or wrapped HF encoder, MLM head, fine-tuned task head), so
its weights are the checkpoint's under `runner.` (`rmt.checkpoint.HF_PREFIX`). `forward`
runs the runner over the whole sequence, segment by segment with memory carried, so any
length works, and returns HF's outputs (`loss`, `logits`): Trainer and PEFT work as with
any HF model. Losses are the runner's: means over what the batch labels, cut off through
memory as the model's `bptt_depth` / `backprop` / `loss_on` say.

The MLM head's vocab projection is the token embedding; the tie is declared the way the
installed transformers reads it (`_tied_weights_keys`: a list of tied names on 4.x, a
`{target: source}` dict on 5.x), so it survives save_pretrained / from_pretrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from rmt.checkpoint import HF_PREFIX, runner_from_config
from rmt.heads import SequenceHead, TokenClassificationHead
from rmt.hf.configuration import RMTConfig, task_outputs

TIES_AS_DICT = Version(transformers.__version__).major >= 5
RUNNER = HF_PREFIX.rstrip(".")  # the attribute that holds the runner


@dataclass
class RMTModelOutput(ModelOutput):
    """last_hidden_state: (b, T, d) content-token states (no memory or special tokens);
    memory: (b, m, d) the memory after each sequence's last segment."""

    last_hidden_state: torch.FloatTensor | None = None
    memory: torch.FloatTensor | None = None


class RMTPreTrainedModel(PreTrainedModel):
    """The runner `config` describes, as an HF model; its modules initialise themselves."""

    config_class = RMTConfig
    base_model_prefix = RUNNER
    supports_gradient_checkpointing = False  # the runner's backprop= modes do that job
    accepts_loss_kwargs = False  # losses are means: Trainer scales them for accumulation

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        source = config.name_or_path
        where = str(Path(source) / "config.json") if source else "the RMTConfig"
        self.runner = runner_from_config(config.model_config(), where=where)
        if self.runner.head is not None:
            self._tied_weights_keys = self._tie()
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: each module initialises itself when built, as in `rmt.checkpoint`."""

    def _tie(self) -> dict[str, str] | list[str]:
        """The MLM head's vocab projection is the token embedding: its names here."""
        embedding = self.get_input_embeddings()
        source = next(f"{n}.weight" for n, m in self.named_modules() if m is embedding)
        target = f"{HF_PREFIX}head.decoder.weight"
        return {target: source} if TIES_AS_DICT else [target]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.runner.encoder.embed_tokens

    def get_output_embeddings(self) -> nn.Linear | None:
        """The MLM head's vocab projection (what transformers 4.x ties to the embedding)."""
        return None if self.runner.head is None else self.runner.head.decoder

    def _task_head(self, head_type: type, task: str) -> nn.Module:
        """The fine-tuned head this class needs, with a clear error for a model without."""
        head, source = getattr(self.runner, "task_head", None), self.config.name_or_path
        if not isinstance(head, head_type):
            what = "no task head" if head is None else f"a {type(head).__name__}"
            raise ValueError(
                f"{source or 'this RMTConfig'} has {what}, not the {head_type.__name__} "
                f"{type(self).__name__} needs; fine-tune one (rmt-finetune task={task} ...) "
                "and export that run with rmt-export, or load this model with the Auto class "
                "of its own task"
            )
        if self.config.num_labels != task_outputs(head.config()):
            raise ValueError(
                f"num_labels={self.config.num_labels}, but {source}'s task head has "
                f"{task_outputs(head.config())} outputs; drop num_labels when loading"
            )
        return head

    def _refuse(self, options: dict) -> None:
        """A clear error for HF options these models cannot honour (PEFT passes them as None)."""
        asked = sorted(name for name, value in options.items() if value not in (None, False))
        if asked:
            raise TypeError(
                f"{type(self).__name__}.forward does not take {', '.join(asked)}: it reads "
                "token ids segment by segment and returns the last hidden states and memory, "
                "not per-layer outputs or attentions"
            )

    def _result(self, output: ModelOutput, return_dict: bool | None):
        """`output`, or its tuple where return_dict (or the config's) is False."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


class RMTModel(RMTPreTrainedModel):
    """Content-token hidden states and the final memory of a whole (long) sequence."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **refused,
    ) -> RMTModelOutput | tuple:
        self._refuse(refused)
        out = self.runner(input_ids, attention_mask, return_hidden=True)
        output = RMTModelOutput(last_hidden_state=out.hidden, memory=out.memory)
        return self._result(output, return_dict)


class RMTForMaskedLM(RMTPreTrainedModel):
    """Token logits from the (tied) MLM head; `labels` (b, T), -100 where not scored."""

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        if self.runner.head is None:
            raise ValueError(
                f"{config.name_or_path or 'this RMTConfig'} was saved without its MLM head "
                '(config.json "head": null, a fine-tuned model); load it with the Auto class '
                "of its task (AutoModelForSequenceClassification, ...) or AutoModel"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **refused,
    ) -> MaskedLMOutput | tuple:
        self._refuse(refused)
        out = self.runner(input_ids, attention_mask, labels, return_hidden=True)
        output = MaskedLMOutput(loss=out.loss, logits=self.runner.head(out.hidden))
        return self._result(output, return_dict)


class RMTForSequenceClassification(RMTPreTrainedModel):
    """Per-sequence logits (classification) or values in the targets' units (regression)
    from the fine-tuned `SequenceHead`, read at each sequence's last segment.

    labels: (b,) class indices, or (b,) / (b, k) regression targets.
    """

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self._task_head(SequenceHead, "sequence_classification")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **refused,
    ) -> SequenceClassifierOutput | tuple:
        self._refuse(refused)
        head = self.runner.task_head
        out = self.runner(input_ids, attention_mask, final_head=head, targets=labels)
        output = SequenceClassifierOutput(loss=out.loss, logits=out.final_outputs)
        return self._result(output, return_dict)


class RMTForTokenClassification(RMTPreTrainedModel):
    """Per-base logits (b, T, max_token_bases, C): for each BPE token, one row of classes
    per base it spans (`rmt.heads.TokenClassificationHead`).

    labels (b, T, max_token_bases): `rmt.token_bases.token_base_labels` of the per-base
    labels through each sequence's token offsets, -100 where there is nothing to score;
    `rmt.token_bases.base_predictions` maps logits back to bases.
    """

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self._task_head(TokenClassificationHead, "token_classification")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **refused,
    ) -> TokenClassifierOutput | tuple:
        self._refuse(refused)
        head = self.runner.task_head
        out = self.runner(input_ids, attention_mask, labels, return_hidden=True, head=head)
        output = TokenClassifierOutput(loss=out.loss, logits=head(out.hidden))
        return self._result(output, return_dict)


__all__ = [
    "RMTForMaskedLM",
    "RMTForSequenceClassification",
    "RMTForTokenClassification",
    "RMTModel",
    "RMTModelOutput",
    "RMTPreTrainedModel",
]
