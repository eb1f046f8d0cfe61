"""`RMTConfig`: this project's model config as a Hugging Face `PretrainedConfig`.

Its own attributes are the keys of `rmt.checkpoint.model_config` (format, encoder, runner,
head, tokenizer, tokenizer_fingerprint, task_head), so the config.json `save_pretrained`
writes is also a checkpoint config that `rmt.checkpoint.load_model` reads: one file, two
readers, nothing to keep in step. A fine-tuned model's labels (`num_labels`, `id2label`,
`problem_type`) follow from its task head, as HF's classification tooling expects.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from rmt.checkpoint import HF_MODEL_TYPE
from rmt.integrity import FORMAT

MODEL_CONFIG_KEYS = (
    "format",
    "encoder",
    "runner",
    "head",
    "tokenizer",
    "tokenizer_fingerprint",
    "task_head",
)


class RMTConfig(PretrainedConfig):
    """What `rmt.checkpoint.runner_from_config` needs to rebuild a model, HF-style.

    `tie_word_embeddings` is always true: the MLM head shares the token embeddings by
    construction (`rmt.checkpoint.build_runner`), so loading must re-tie them.
    """

    model_type = HF_MODEL_TYPE

    def __init__(
        self,
        format: str = FORMAT,
        encoder: dict | None = None,
        runner: dict | None = None,
        head: str | None = "mlm",
        tokenizer: str = "tokenizer.json",
        tokenizer_fingerprint: str | None = None,
        task_head: dict | None = None,
        **kwargs,
    ) -> None:
        self.format, self.encoder, self.runner, self.head = format, encoder, runner, head
        self.tokenizer, self.tokenizer_fingerprint = tokenizer, tokenizer_fingerprint
        self.task_head = task_head
        if task_head is not None:
            kwargs.update(label_options(task_head, kwargs.pop("num_labels", None)))
        kwargs["tie_word_embeddings"] = True
        super().__init__(**kwargs)

    def model_config(self) -> dict:
        """The `rmt.checkpoint.model_config` dict this config holds."""
        return {key: getattr(self, key) for key in MODEL_CONFIG_KEYS}


def task_outputs(task_head: dict) -> int:
    """How many labels (classes or regression targets) a task head's config gives."""
    return task_head["num_outputs" if task_head.get("type") == "sequence" else "num_classes"]


def label_options(task_head: dict, num_labels: int | None = None) -> dict:
    """id2label, label2id and problem_type of a task head config (`head.config()`).

    A `num_labels` other than the head's is refused: the head's size is in its weights.
    """
    count = task_outputs(task_head)
    if num_labels is not None and num_labels != count:
        raise ValueError(
            f"num_labels={num_labels}, but the model's fine-tuned task head has {count} "
            "outputs; drop num_labels (it follows from the head), or fine-tune a model with "
            f"{num_labels} (rmt-finetune) and export that run"
        )
    names = task_head.get("names") or [f"LABEL_{i}" for i in range(count)]
    options = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if task_head.get("type") == "sequence":
        regression = task_head.get("kind") == "regression"
        options["problem_type"] = "regression" if regression else "single_label_classification"
    return options


__all__ = ["MODEL_CONFIG_KEYS", "RMTConfig", "label_options", "task_outputs"]
