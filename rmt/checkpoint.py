"""Checkpoints: safetensors weights + a JSON config + the tokenizer, written atomically.

A checkpoint directory holds everything needed to use the model without the training
code (`load_model`), plus `trainer_state.pt` when it was written by training (optimizer,
schedule, data RNG: what resuming needs), and `manifest.json`: the size and SHA-256 of
every other file, checked before any of them is used (`rmt.integrity`).

    checkpoints/
      step-00000300/  model.safetensors  config.json  tokenizer.json  trainer_state.pt
                      manifest.json
      latest          (text file naming the newest complete step directory)

Nothing is lost to a fault: weights that are not finite are never written, pruning keeps
what `latest` names, and a run whose `latest` is damaged resumes from its newest intact
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data import DNATokenizer, load_tokenizer
from rmt.encoder import Encoder, EncoderConfig
from rmt.heads import MLMHead, build_task_head
from rmt.hf_encoder import HF_KEY, hf_encoder_from_dict
from rmt.integrity import FORMAT, CheckpointError, verify_checkpoint, write_manifest
from rmt.run_checkpoints import remove_stale_temps, resolve_checkpoint, write_latest
from rmt.runner import MemoryRunner

__all__ = [
    "HF_MODEL_TYPE",
    "HF_PREFIX",
    "CheckpointError",
    "build_runner",
    "load_model",
    "load_weights",
    "mlm_head",
    "model_config",
    "refuse_causal",
    "remove_stale_temps",
    "resolve_checkpoint",
    "runner_config",
    "runner_from_config",
    "save_checkpoint",
    "verify_checkpoint",
    "verify_tokenizer",
    "write_latest",
]
RUNNER_KEYS = ("memory_tokens", "segment_tokens", "bptt_depth", "loss_on", "backprop")
# An `rmt-export` directory (rmt.hf) says so by its config.json "model_type"; its weights
# are named as the Hugging Face model holds the runner: `runner.<name here>`.
HF_MODEL_TYPE = "rmt-dna"
HF_PREFIX = "runner."


def build_runner(
    encoder_config: EncoderConfig, runner_config: dict, kernels: str = "auto"
) -> MemoryRunner:
    """A fresh runner with an MLM head tied to the token embeddings."""
    return _with_mlm_head(Encoder(encoder_config, kernels=kernels), runner_config, kernels)


def mlm_head(encoder, kernels: str = "auto") -> MLMHead:
    """An untrained MLM head tied to the encoder's token embeddings. A wrapped HF encoder's
    normalises with the HF model's eps (BERT's 1e-12, not torch's 1e-5), as its pretrained
    head was trained, and as it must again after a reload."""
    config = encoder.config
    head = MLMHead(config.d_model, config.vocab_size, encoder.embed_tokens, kernels=kernels)
    hf = getattr(config, HF_KEY, None)
    if hf is not None:
        head.norm.eps = hf.get("layer_norm_eps", head.norm.eps)
    return head


def _with_mlm_head(encoder, runner_config: dict, kernels: str) -> MemoryRunner:
    return MemoryRunner(encoder, head=mlm_head(encoder, kernels), **runner_config)


def model_config(runner: MemoryRunner, tokenizer: DNATokenizer) -> dict:
    """What config.json records of a model: enough for `runner_from_config` to rebuild it."""
    config = {
        "format": FORMAT,
        "encoder": runner.encoder.config.to_dict(),
        "runner": runner_config(runner),
        "head": None if runner.head is None else "mlm",  # None: fine-tuned without it
        "tokenizer": "tokenizer.json",
        "tokenizer_fingerprint": tokenizer.fingerprint(),
    }
    task_head = getattr(runner, "task_head", None)
    if task_head is not None:  # a fine-tuned model; its weights are under task_head.
        config["task_head"] = task_head.config()
    return config


def runner_from_config(config: dict, kernels: str = "auto", where: str = "config.json"):
    """The untrained model `config` (a `model_config` dict) describes: encoder (this
    project's or a wrapped Hugging Face one), MLM head unless "head" is null, and
    `runner.task_head` for a fine-tuned model. A CheckpointError names `where` and the key.
    """
    try:
        encoder = {k: v for k, v in config["encoder"].items() if k != "kernels"}  # older files
        runner_options = dict(config["runner"])
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{where} lacks a valid {err} entry") from err
    if "num_memory_tokens" in runner_options:  # the name before 0.2
        runner_options["memory_tokens"] = runner_options.pop("num_memory_tokens")
    if HF_KEY in encoder:
        runner = _with_mlm_head(hf_encoder_from_dict(encoder), runner_options, kernels)
    else:
        runner = build_runner(EncoderConfig.from_dict(encoder), runner_options, kernels=kernels)
    if config.get("head", "mlm") is None:  # saved without its MLM head (rmt-finetune)
        runner.head = None
    if config.get("task_head") is not None:
        runner.task_head = _task_head(where, config["task_head"])
    return runner


def _unique_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once (under its first name), as fresh copies.

    Copies, because engines like DeepSpeed keep parameters as views into one flat buffer,
    which safetensors refuses to write as it stands.
    """
    seen, out = set(), {}
    for name, tensor in module.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def load_weights(
    module: torch.nn.Module, path: str | os.PathLike, device="cpu", prefix: str = ""
) -> None:
    """Load `_unique_tensors` output back; names left out must be ties of loaded ones.

    `prefix` is taken off every name first (HF_PREFIX: an `rmt-export` directory's).
    """
    state = load_file(str(path), device=str(device))
    if prefix:
        state = {name.removeprefix(prefix): tensor for name, tensor in state.items()}
    current = module.state_dict()
    reshaped = [
        f"{name} {tuple(tensor.shape)} (model {tuple(current[name].shape)})"
        for name, tensor in state.items()
        if name in current and tensor.shape != current[name].shape
    ]
    if reshaped:
        raise ValueError(
            f"{path}: weights have other shapes than the model (a different model or "
            f"tokenizer): {', '.join(reshaped[:3])}"
        )
    missing, unexpected = module.load_state_dict(state, strict=False)

    def storage(name: str) -> tuple:
        return current[name].data_ptr(), tuple(current[name].shape)

    loaded = {storage(name) for name in state if name in current}
    untied = [name for name in missing if storage(name) not in loaded]
    if untied or unexpected:
        raise ValueError(
            f"{path}: weights do not match the model (missing {untied}, unexpected {unexpected})"
        )


def runner_config(runner: MemoryRunner) -> dict:
    return {key: getattr(runner, key) for key in RUNNER_KEYS}


def save_checkpoint(
    directory: str | os.PathLike,
    runner: MemoryRunner,
    tokenizer: DNATokenizer,
    trainer_state: dict | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (a temp dir, then a rename).

    Refuses (ValueError, nothing written) weights that are not finite: a diverged run must
    not replace good checkpoints with NaN ones. `manifest.json` is written last.
    """
    directory = Path(directory)
    tensors = _unique_tensors(runner)
    _check_finite(tensors, directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"))
        tokenizer.save(tmp / "tokenizer.json")
        config = {**model_config(runner, tokenizer), **(metadata or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        write_manifest(tmp)
        _readable(tmp)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _check_finite(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"refusing to write checkpoint {directory}: weight {name!r} holds {bad:,} NaN "
                "or infinite values (training diverged); lower the learning rate, or resume "
                "from the last checkpoint"
            )


def _replace_dir(new: Path, directory: Path) -> None:
    """Move `new` onto `directory`; an existing one is first renamed to a hidden name that
    `remove_stale_temps` clears, so a kill at any point leaves no half-deleted checkpoint."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(new, directory)
        shutil.rmtree(old)
    else:
        os.replace(new, directory)


def _readable(directory: Path) -> None:
    """Give a temp directory the permissions a normally created one would have."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", kernels: str = "auto"
) -> tuple[MemoryRunner, DNATokenizer]:
    """Load (runner with its MLM head, tokenizer) from a checkpoint or run directory, or
    a directory `rmt-export` wrote (Hugging Face layout; its config.json is a superset).

    A fine-tuned checkpoint (config.json has "task_head") also gets its head back, as
    `runner.task_head` with its weights; a pre-trained one has no `task_head` attribute.

    `kernels` replaces the backend the model was trained with: it is a property of the
    machine that runs the model, not of its weights (a model trained with
    `kernels=triton` on a GPU loads on a laptop).
    """
    ckpt = resolve_checkpoint(path)
    config = json.loads((ckpt / "config.json").read_text())  # verified just now
    try:
        tokenizer = load_tokenizer(ckpt / config["tokenizer"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{ckpt / 'config.json'} lacks a valid {err} entry") from err
    verify_tokenizer(ckpt, tokenizer, config)
    runner = runner_from_config(config, kernels, where=str(ckpt / "config.json"))
    prefix = HF_PREFIX if config.get("model_type") == HF_MODEL_TYPE else ""
    load_weights(runner, ckpt / "model.safetensors", device, prefix)
    runner.to(device).eval()
    return runner, tokenizer


def refuse_causal(checkpoint: str | os.PathLike, program: str, given: str) -> None:
    """Stop `program`, which needs a bidirectional (masked-LM) encoder, at a causal model.

    A decoder RMT (model.causal=true, trained with task=clm) loads like any other model,
    so an app reading it as an encoder would give masked-LM scores, embeddings or an
    export of a model that is none: plausible numbers, wrong meaning. Reads config.json
    alone, of a `checkpoint` already resolved and verified, so the refusal comes before
    the weights or any input are read. `given`: the checkpoint as the user named it, e.g.
    "checkpoint=runs/x".
    """
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    encoder = config.get("encoder") if isinstance(config, dict) else None
    if isinstance(encoder, dict) and encoder.get("causal") is True:
        raise ValueError(
            f"{given} holds a causal model (model.causal=true, trained with task=clm): "
            f"{program} needs a masked-LM encoder; sample from it with rmt-generate"
        )


def _task_head(where: str, head_config: dict) -> torch.nn.Module:
    """The fine-tuned head config.json describes, as a CheckpointError if it cannot be built."""
    try:
        return build_task_head(head_config)
    except (TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{where} has an invalid task_head entry: {err}") from err


def verify_tokenizer(
    checkpoint: str | os.PathLike, tokenizer: DNATokenizer, config: dict | None = None
) -> None:
    """Refuse a tokenizer other than the one the checkpoint's model was trained with.

    Its ids would index the wrong embeddings and give plausible, wrong results. Checked by
    vocabulary size and, for checkpoints that have one, the tokenizer's fingerprint.
    Public so that resuming can check the run's tokenizer against its checkpoint.
    """
    checkpoint = Path(checkpoint)
    config = config or verify_checkpoint(checkpoint)
    expected_size = config["encoder"]["vocab_size"]
    expected = config.get("tokenizer_fingerprint")
    if tokenizer.vocab_size != expected_size:
        why = f"{tokenizer.vocab_size:,} ids, the model has {expected_size:,}"
    elif expected is not None and tokenizer.fingerprint() != expected:
        why = "same size, other vocabulary or merges: its fingerprint differs"
    else:
        return
    saved = checkpoint / config.get("tokenizer", "tokenizer.json")
    raise CheckpointError(
        f"{tokenizer!r} is not the tokenizer the model in {checkpoint} was trained with ({why})",
        fix=f"use the tokenizer saved with the model ({saved}; restore it if it was replaced)",
    )
