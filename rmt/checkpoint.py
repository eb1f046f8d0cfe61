"""Checkpoints: safetensors weights + a JSON config + the tokenizer, written atomically.

A checkpoint directory holds everything needed to use the model without the training
code (`load_model`), plus `trainer_state.pt` when it was written by training (optimizer,
schedule, data RNG: what resuming needs).

    checkpoints/
      step-00000300/  model.safetensors  config.json  tokenizer.json  trainer_state.pt
      latest          (text file naming the newest complete step directory)
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
from data.atomic import atomic_path
from rmt.encoder import Encoder, EncoderConfig
from rmt.heads import MLMHead
from rmt.runner import MemoryRunner

FORMAT = "rmt-dna/1"
RUNNER_KEYS = ("memory_tokens", "segment_tokens", "bptt_depth", "loss_on", "backprop")


def build_runner(
    encoder_config: EncoderConfig, runner_config: dict, kernels: str = "auto"
) -> MemoryRunner:
    """A fresh runner with an MLM head tied to the token embeddings."""
    encoder = Encoder(encoder_config, kernels=kernels)
    head = MLMHead(
        encoder_config.d_model, encoder_config.vocab_size, encoder.embed_tokens, kernels=kernels
    )
    return MemoryRunner(encoder, head=head, **runner_config)


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


def load_weights(module: torch.nn.Module, path: str | os.PathLike, device="cpu") -> None:
    """Load `_unique_tensors` output back; names left out must be ties of loaded ones."""
    state = load_file(str(path), device=str(device))
    missing, unexpected = module.load_state_dict(state, strict=False)
    current = module.state_dict()

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
    """Write a complete checkpoint directory atomically (a temp dir, then a rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(_unique_tensors(runner), str(tmp / "model.safetensors"))
        tokenizer.save(tmp / "tokenizer.json")
        config = {
            "format": FORMAT,
            "encoder": runner.encoder.config.to_dict(),
            "runner": runner_config(runner),
            "head": "mlm",
            "tokenizer": "tokenizer.json",
            **(metadata or {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        _readable(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _readable(directory: Path) -> None:
    """Give a temp directory the permissions a normally created one would have."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from itself, a run directory, or its `checkpoints/` folder."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    for folder in (path / "checkpoints", path):
        latest = folder / "latest"
        if latest.is_file():
            return folder / latest.read_text().strip()
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a directory with config.json and "
        "model.safetensors, or a run directory with checkpoints/latest"
    )


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", kernels: str = "auto"
) -> tuple[MemoryRunner, DNATokenizer]:
    """Load (runner with its MLM head, tokenizer) from a checkpoint or run directory.

    `kernels` replaces the backend the model was trained with: it is a property of the
    machine that runs the model, not of its weights (a model trained with
    `kernels=triton` on a GPU loads on a laptop).
    """
    ckpt = resolve_checkpoint(path)
    config = json.loads((ckpt / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{ckpt / 'config.json'}: unknown checkpoint format {config.get('format')!r}"
        )
    encoder = {k: v for k, v in config["encoder"].items() if k != "kernels"}  # older files
    runner_options = dict(config["runner"])
    if "num_memory_tokens" in runner_options:  # the name before 0.2
        runner_options["memory_tokens"] = runner_options.pop("num_memory_tokens")
    runner = build_runner(EncoderConfig.from_dict(encoder), runner_options, kernels=kernels)
    load_weights(runner, ckpt / "model.safetensors", device)
    runner.to(device).eval()
    return runner, load_tokenizer(ckpt / config["tokenizer"])


def write_latest(checkpoints: Path, name: str, keep: int) -> None:
    """Point `latest` at a finished checkpoint, then prune all but the newest `keep`."""
    with atomic_path(checkpoints / "latest") as tmp:
        tmp.write_text(name + "\n")
    steps = sorted(p for p in checkpoints.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old)
