"""rmt-finetune: fine-tuning of a pre-trained recurrent-memory DNA encoder (a Hydra app).

    rmt-finetune task=sequence_classification checkpoint=runs/pretrain \
                 data.train=train.csv data.valid=valid.csv data.test=test.csv
    rmt-finetune task=sequence_regression ... task.pool=memory freeze=encoder
    rmt-finetune task=token_classification ... curriculum=doubling memory.backprop=replay
    rmt-finetune -m task=sequence_classification ... memory.bptt_depth=0,2,-1
    rmt-finetune task=sequence_classification ... freeze=all task.head=linear  # a probe
    rmt-finetune task=sequence_classification checkpoint=/path/to/gena-lm ...  # HF encoder

The same shape as rmt-train (rmt/train.py): options -> `build` -> `rmt.loop.TrainLoop`,
with the pre-trained runner (its MLM head dropped, a task head attached as
`runner.task_head`; a bare Hugging Face encoder directory gets new memory as
`memory.*` says), the labelled data (data.labelled) and `rmt.tasks.finetune`. The
run directory gets what rmt-train writes (metrics.jsonl, tensorboard/, checkpoints/,
status.json; resumed from its latest checkpoint when rerun), `checkpoints/best/` (the
model of the best `best_metric` on the valid split) and `test.json` (that model's test
metrics, memory carried, reset and, for sequence tasks, averaged over segments).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from curriculum import build_curriculum
from data import DNATokenizer
from data.labelled import LabelledData, load_dataset
from rmt.best import BestCheckpoint
from rmt.checkpoint import load_model, refuse_causal, resolve_checkpoint
from rmt.cli import user_errors
from rmt.data_config import hf_tokenizer
from rmt.finetune_options import FinetuneMemoryOptions, FinetuneOptions, finetune_options
from rmt.heads import SequenceHead, TokenClassificationHead
from rmt.hf_runner import hf_runner, is_hf_encoder_dir
from rmt.install import CONFIG_DIR, CONFIG_PATH
from rmt.option_errors import check, option_section
from rmt.runner import MemoryRunner
from rmt.sweep_summary import run_job
from rmt.tasks.finetune import FinetuneTask
from rmt.token_bases import max_token_bases
from rmt.train import Run, assemble, run_lock, run_to_end, start_run

PROGRAM = "rmt-finetune"
log = logging.getLogger(__name__)


def pretrained_runner(options: FinetuneOptions) -> tuple[MemoryRunner, DNATokenizer]:
    """The pre-trained runner without its MLM head, with the memory settings changed as
    configured, and its tokenizer: a checkpoint's, or a bare HF encoder's with new memory."""
    if is_hf_encoder_dir(options.checkpoint):
        runner, tokenizer = hf_pretrained(options)
    else:
        runner, tokenizer = checkpoint_pretrained(options)
    runner.head = None
    if runner.backprop == "truncated" and runner.bptt_depth < 0:
        raise ValueError(
            f"memory.backprop=truncated needs a depth, but the model of {options.checkpoint} "
            f"has bptt_depth={runner.bptt_depth}: set memory.bptt_depth to k >= 0"
        )
    return runner.train(), tokenizer


def checkpoint_pretrained(options: FinetuneOptions) -> tuple[MemoryRunner, DNATokenizer]:
    """A checkpoint's runner (a fine-tuned one's head dropped) with `memory` applied."""
    checkpoint = resolve_checkpoint(options.checkpoint)
    refuse_causal(checkpoint, PROGRAM, f"checkpoint={options.checkpoint}")
    log.info("pre-trained model: %s", checkpoint)
    runner, tokenizer = load_model(checkpoint, kernels=options.kernels)
    if hasattr(runner, "task_head"):  # a fine-tuned checkpoint: its head is replaced
        del runner.task_head
    m = options.memory
    pretrained = runner.memory_tokens
    check(m.memory_tokens in (None, pretrained), "memory.memory_tokens", m.memory_tokens,
          f"differs from the {pretrained} memory tokens {checkpoint} was pre-trained with: "
          "leave it null (it sizes a Hugging Face encoder's new memory)")  # fmt: skip
    for key in ("backprop", "bptt_depth", "segment_tokens"):
        if getattr(m, key) is not None:
            setattr(runner, key, getattr(m, key))
    return runner, tokenizer


def hf_pretrained(options: FinetuneOptions) -> tuple[MemoryRunner, DNATokenizer]:
    """The bare HF encoder in `checkpoint` with fresh memory (`memory`, its nulls as
    `FinetuneMemoryOptions` says) and the tokenizer.json beside it."""
    path, m, hf = Path(options.checkpoint), options.memory, options.hf
    tokenizer = hf_tokenizer(path, "checkpoint")
    memory_tokens = default_memory_tokens() if m.memory_tokens is None else m.memory_tokens
    memory = {"memory_tokens": memory_tokens, "segment_tokens": m.segment_tokens}
    memory |= {k: getattr(m, k) for k in ("backprop", "bptt_depth") if getattr(m, k) is not None}
    with option_section("memory", FinetuneMemoryOptions):  # a segment too long for the model
        runner = hf_runner(
            path, tokenizer, memory, hf.layout, hf.attn_implementation, hf.trust_remote_code,
            kernels=options.kernels,
        )  # fmt: skip
    log.info("pre-trained Hugging Face encoder: %s, with %d new memory tokens and %d-token "
             "segments", path, runner.memory_tokens, runner.segment_tokens)  # fmt: skip
    return runner, tokenizer


def default_memory_tokens() -> int:
    """rmt-train's memory size (conf/memory/default.yaml), for an encoder without memory."""
    return int(OmegaConf.load(CONFIG_DIR / "memory" / "default.yaml").memory_tokens)


def make_task_head(
    kind: str,
    data: LabelledData,
    runner: MemoryRunner,
    tokenizer: DNATokenizer,
    pool: str,
    head: str = "mlp",
) -> SequenceHead | TokenClassificationHead:
    """A fresh `head` (mlp | linear) for `kind` on `runner`'s width; regression targets
    are normalised by the train split's mean and std."""
    d_model = runner.encoder.config.d_model
    if kind != "token_classification" and pool != "mean" and runner.memory_tokens == 0:
        raise ValueError(
            f"task.pool={pool} reads the memory, but the checkpoint was pre-trained without "
            "memory tokens (memory.memory_tokens=0); use task.pool=mean"
        )
    if kind == "token_classification":
        return TokenClassificationHead(
            d_model, len(data.classes), max_token_bases(tokenizer), data.classes, head
        )
    if kind == "sequence_classification":
        return SequenceHead(d_model, len(data.classes), "classification", pool, data.classes, head)
    regression = SequenceHead(d_model, len(data.targets), "regression", pool, data.targets, head)
    targets = np.array([np.atleast_1d(x.target) for x in data.train], dtype=np.float64)
    std = targets.std(0)
    if not (std > 0).all():
        constant = [name for name, s in zip(data.targets, std, strict=True) if s == 0]
        raise ValueError(
            f"the regression target {', '.join(constant)} is the same in every training "
            "example of data.train: nothing to learn; check data.label_column"
        )
    regression.set_normalization(torch.as_tensor(targets.mean(0)), torch.as_tensor(std))
    return regression


#: per `freeze` mode but none, the parameter-name prefixes that keep training (None: every
#: one outside `encoder.`, which never trains then): the runner's learned memory is
#: `memory.weight` (rmt.runner.LearnedMemory), the task head's weights `task_head.*`
TRAINED = {
    "encoder": None,
    "all_but_memory_head": ("memory.", "task_head."),
    "all": ("task_head.",),
}


def freeze(runner: MemoryRunner, mode: str) -> None:
    """Stop gradients to the weights `freeze` names (they keep their pre-trained values)."""
    if mode == "none":
        return
    trained = TRAINED[mode]
    for name, parameter in runner.named_parameters():
        if name.startswith("encoder.") or (trained is not None and not name.startswith(trained)):
            parameter.requires_grad_(False)


def check_splits(data: LabelledData, options: FinetuneOptions) -> None:
    if not data.train:
        raise ValueError(f"data.train={options.data.train} holds no examples: check the file")
    if not data.valid:
        log.warning("no valid split (data.valid, data.split_column or data.valid_records): "
                    "checkpoints/best is the final model")  # fmt: skip


def build(options: FinetuneOptions, run_dir: Path) -> Run:
    """The run's parts, restored from the run directory's latest checkpoint if it has one."""
    t = options.trainer
    world, amp = start_run(options.seed, t, run_dir)  # the same head on every rank
    kind = options.task.kind
    data = load_dataset(options.data, kind)
    check_splits(data, options)
    runner, tokenizer = pretrained_runner(options)
    runner.task_head = make_task_head(
        kind, data, runner, tokenizer, options.task.pool, options.task.head
    )
    freeze(runner, options.freeze)
    runner.to(world.device)
    task = FinetuneTask(
        kind, data, tokenizer, segment_tokens=runner.segment_tokens,
        loss_on=runner.loss_on, token_bases=getattr(runner.task_head, "max_token_bases", 1),
        seed=options.seed, eval_max_segments=options.eval.max_segments,
        eval_batch_size=t.eval_batch_size, device=world.device, amp=amp, kernels=options.kernels,
    )  # fmt: skip
    curriculum = build_curriculum(asdict(options.curriculum), seed=options.seed)
    best = BestCheckpoint(options.metric, options.higher_is_better)
    return assemble(run_dir, t, world, runner, task, tokenizer, curriculum, asdict(options), best)


def finetune(options: FinetuneOptions, run_dir: str | Path, *, lock: bool = True) -> dict:
    """Fine-tune as configured, writing everything into `run_dir`; the final metrics.

    `lock=False` when the caller holds the run directory's lock already (`main`).
    """
    return run_to_end(Path(run_dir), PROGRAM, lambda: build(options, Path(run_dir)), lock)


@hydra.main(config_path=CONFIG_PATH, config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    """The Hydra task: returns the final metrics (test_<metric>, ...)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("run directory: %s", run_dir)
    with user_errors(PROGRAM), run_lock(run_dir, PROGRAM):
        job = lambda: finetune(finetune_options(cfg), run_dir, lock=False)  # noqa: E731
        return run_job(job, run_dir, PROGRAM)


if __name__ == "__main__":
    from rmt.entry import run_app  # config mistakes: one line, exit 2, as rmt-train

    run_app(main, PROGRAM)
