"""Checkpoint integrity: a manifest of sizes and SHA-256 digests, checked before use.

A checkpoint is written into a temp directory and renamed into place, so a killed write
never leaves a half-written `step-*` directory; but a disk can still truncate a file, a
copy can be cut short, and a user can swap a file. `manifest.json`, written last into the
temp directory, lists every file with its size and digest; `verify_checkpoint` checks
them (sizes first, which is cheap) so a damaged checkpoint is refused with the file
named, and a run directory falls back to its newest intact checkpoint. Checkpoints
written before manifests existed are loaded with a warning after cheaper checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from rmt.cli import write_json

FORMAT = "rmt-dna/1"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rmt-dna-manifest/1"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")

log = logging.getLogger(__name__)


FIX = "use another checkpoint of the run (its checkpoints/step-* directories) or retrain"


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete, damaged or not a checkpoint.

    The message is `problem; fix`; `problem` alone serves warnings that already act on
    it (a fallback to another checkpoint).
    """

    def __init__(self, problem: str, fix: str = FIX) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """List every file of `directory` (not in subdirectories) with its size and digest."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    write_json(directory / MANIFEST, {"format": MANIFEST_FORMAT, "files": files})


def verify_checkpoint(directory: str | Path) -> dict:
    """Check a checkpoint directory's files against its manifest; return its config.

    Raises CheckpointError naming the first missing, truncated or changed file. Files a
    later writer added (DeepSpeed's optimizer shards) are not in the manifest and are
    not checked here.
    """
    directory = Path(directory)
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory} is not a complete checkpoint: {', '.join(missing)} missing"
        )
    manifest = directory / MANIFEST
    if manifest.is_file():
        _check_manifest(directory, _read_json(manifest))
    else:
        log.warning(
            "%s has no %s (written before checkpoints were verified): its files cannot be "
            "checked (save_checkpoint writes one)",
            directory,
            MANIFEST,
        )
        _check_safetensors_size(directory / "model.safetensors")
    config = _read_json(directory / "config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else config
        raise CheckpointError(
            f"{directory / 'config.json'}: unknown checkpoint format {found!r} "
            f"(expected {FORMAT!r})"
        )
    return config


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} is unreadable ({err})") from err


def _check_manifest(directory: Path, manifest) -> None:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or not set(REQUIRED) <= set(files)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("bytes"), int)
            and isinstance(e.get("sha256"), str)
            for e in files.values()
        )
    ):
        raise CheckpointError(f"{directory / MANIFEST} does not list the checkpoint's files")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"{path} is {size:,} bytes but was written as {entry['bytes']:,} "
                "(truncated or replaced)"
            )
    for name, entry in files.items():
        if sha256_file(directory / name) != entry["sha256"]:
            raise CheckpointError(
                f"{directory / name} has changed since it was written (its SHA-256 differs "
                f"from {MANIFEST})",
                fix=f"restore the original file, or {FIX}",
            )


def _check_safetensors_size(path: Path) -> None:
    """A truncated safetensors file is shorter than its header says (legacy checkpoints)."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        try:
            header = json.loads(fh.read(header_len))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)  # fmt: skip
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{path} has no readable safetensors header") from err
    if path.stat().st_size != 8 + header_len + end:
        raise CheckpointError(
            f"{path} is {path.stat().st_size:,} bytes, its header says "
            f"{8 + header_len + end:,} (truncated)"
        )
