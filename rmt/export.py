"""rmt-export: a run or checkpoint as a Hugging Face model directory.

    rmt-export runs/finetune-promoters hf/promoters
    # then, anywhere with this package installed:
    import rmt.hf, transformers
    model = transformers.AutoModelForSequenceClassification.from_pretrained("hf/promoters")

OUT gets config.json (`save_pretrained`; also a valid checkpoint config), model.safetensors,
tokenizer.json and manifest.json, so `rmt.checkpoint.load_model(OUT)` and the apps'
`checkpoint=OUT` load it too. The class follows the model: a fine-tuned task head gives
RMTForSequenceClassification or RMTForTokenClassification, an MLM head RMTForMaskedLM,
neither RMTModel. A fine-tuning run exports its best model (checkpoints/best, the one its
test.json scores), any other run its newest intact checkpoint. A causal model
(model.causal=true) is refused: every class here is an encoder's.

OUT is written atomically (a temp directory beside it, then a rename): a failed export
leaves nothing, and an existing OUT that is not empty is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

from data import DNATokenizer
from rmt.best import best_checkpoint
from rmt.checkpoint import load_model, model_config, refuse_causal, resolve_checkpoint
from rmt.cli import user_errors
from rmt.hf import (
    RMTConfig,
    RMTForMaskedLM,
    RMTForSequenceClassification,
    RMTForTokenClassification,
    RMTModel,
    RMTPreTrainedModel,
)
from rmt.integrity import write_manifest
from rmt.runner import MemoryRunner

PROGRAM = "rmt-export"


def export(run_or_checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the model of `run_or_checkpoint_dir` as an HF directory `out_dir`; return it."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty directory; rmt-export writes a new "
            f"one: give another OUT, or remove {out} first"
        )
    checkpoint = resolve_checkpoint(_chosen(Path(run_or_checkpoint_dir)))
    refuse_causal(checkpoint, PROGRAM, str(run_or_checkpoint_dir))
    runner, tokenizer = load_model(checkpoint, device="cpu")
    model = hf_model(runner, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        tokenizer.save(tmp / "tokenizer.json")
        write_manifest(tmp)
        os.replace(tmp, out)  # onto nothing, or onto an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _chosen(path: Path) -> Path:
    """A fine-tuning run's best checkpoint where it has one, else `path` itself."""
    best = best_checkpoint(path)
    return best if (best / "config.json").is_file() else path


def hf_model(runner: MemoryRunner, tokenizer: DNATokenizer) -> RMTPreTrainedModel:
    """The HF model (`rmt.hf`) of the class `runner`'s heads call for, holding its weights."""
    config = RMTConfig(**model_config(runner, tokenizer))
    if config.task_head is not None:
        sequence = config.task_head["type"] == "sequence"
        model_class = RMTForSequenceClassification if sequence else RMTForTokenClassification
    else:
        model_class = RMTModel if runner.head is None else RMTForMaskedLM
    model = model_class(config)
    model.runner.load_state_dict(runner.state_dict())
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory or a checkpoint directory")
    parser.add_argument("out", help="the HF model directory to write (new, or empty)")
    args = parser.parse_args(argv)
    with user_errors(PROGRAM):
        out = export(args.run, args.out)
        print(f"rmt-export: wrote {out} (load it with rmt.hf and transformers' Auto classes)")


if __name__ == "__main__":
    main()
