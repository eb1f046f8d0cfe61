"""rmt-generate's entry points: options -> model and prompt -> sampled tokens -> FASTA.

``main`` (the Hydra app) converts the config once (``generate_options``);
``run_generation`` takes the typed options, loads the causal model and the prompt, samples
``batch`` sequences at once and writes them to ``output`` (FASTA) and the run's settings
and figures to generate.json. Each sequence's bases are spooled to a file of its own while
they are drawn (memory stays flat however long the output), and the FASTA is assembled
from the spools at the end and moved into place in one rename: a killed run leaves no
half-written FASTA.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data import DNATokenizer
from data.atomic import atomic_path
from rmt.checkpoint import load_model, resolve_checkpoint
from rmt.cli import autocast_dtype, pick_device, user_errors, write_json
from rmt.generate.options import PROGRAM, GenerateOptions, generate_options
from rmt.generate.prompt import read_prompt
from rmt.generate.sample import Sampling, banned_tokens, sample_tokens
from rmt.infer.stream import peak_rss_mb
from rmt.install import CONFIG_PATH
from rmt.runner import MemoryRunner

FIRST_BASES = "ACGT"  # the random first base of a run without a prompt


def load_causal_model(checkpoint: str, device: torch.device, kernels: str):
    """(checkpoint directory, runner, tokenizer), refusing a model that cannot generate."""
    path = resolve_checkpoint(checkpoint)
    runner, tokenizer = load_model(path, device, kernels)
    if not getattr(runner.encoder.config, "causal", False):
        raise ValueError(
            f"checkpoint={checkpoint}: the model in {path} is bidirectional (masked-LM) and "
            "cannot generate; train a causal one with rmt-train task=clm model.causal=true"
        )
    if runner.head is None:
        raise ValueError(
            f"checkpoint={checkpoint}: the model in {path} has no language-model head "
            "(saved by rmt-finetune); use the rmt-train checkpoint it was fine-tuned from"
        )
    return path, runner, tokenizer


def prompt_ids(
    tokenizer: DNATokenizer, prompt: str, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """(batch, P) token ids every sequence starts from, and the bases each output begins
    with: none after a prompt, else a random first base per sequence (from `generator`)."""
    if prompt:
        ids = torch.as_tensor(tokenizer.encode(prompt).ids)
        return ids.repeat(batch, 1), [""] * batch
    draws = torch.randint(len(FIRST_BASES), (batch,), generator=generator, device=generator.device)
    first = [FIRST_BASES[i] for i in draws.tolist()]
    rows = [tokenizer.encode(base).ids.tolist() for base in first]
    if any(len(row) != 1 for row in rows):
        raise ValueError(f"{tokenizer!r} does not spell a single base as one token; give a prompt")
    return torch.tensor(rows), first


class FastaSpool:
    """Each record's bases appended to a spool file of its own; `finish` writes the FASTA
    (header, `line_width`-base lines) beside `output` and renames it into place."""

    def __init__(self, output: Path, names: list[str], line_width: int) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output, self.names, self.line_width = output, names, line_width
        self.dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        self.files = [(self.dir / f"{i}.seq").open("w") for i in range(len(names))]

    def write(self, record: int, bases: str) -> None:
        self.files[record].write(bases)

    def finish(self) -> None:
        for spool in self.files:
            spool.close()
        chunk = self.line_width * 4096
        with atomic_path(self.output) as tmp, tmp.open("w") as fasta:
            for i, name in enumerate(self.names):
                fasta.write(f">{name}\n")
                with (self.dir / f"{i}.seq").open() as spool:
                    while bases := spool.read(chunk):
                        fasta.writelines(self._lines(bases))

    def _lines(self, bases: str):
        width = self.line_width
        return (bases[j : j + width] + "\n" for j in range(0, len(bases), width))

    def close(self) -> None:
        """Remove the spools (after `finish`, or when the run failed)."""
        for spool in self.files:
            spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def generate_into(
    spool: FastaSpool,
    runner: MemoryRunner,
    tokenizer: DNATokenizer,
    options: GenerateOptions,
    prompt: str,
    device: torch.device,
    amp: torch.dtype | None,
) -> int:
    """Sample until every sequence holds `options.length` bases (the last token's bases
    cut to fit); the tokens drawn per sequence."""
    generator = torch.Generator(device).manual_seed(options.seed)
    ids, first = prompt_ids(tokenizer, prompt, options.batch, generator)
    pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    banned = banned_tokens(tokenizer).to(device)
    left = [options.length] * options.batch
    for record, bases in enumerate(first):
        spool.write(record, bases)
        left[record] -= len(bases)
    sampling = Sampling(options.temperature, options.top_k, options.top_p)
    progress = tqdm(
        total=options.length * options.batch, initial=len("".join(first)), unit="bp",
        unit_scale=True, disable=not options.progress, desc=PROGRAM,
    )  # fmt: skip
    tokens = 0
    with progress, torch.autocast(device.type, amp, enabled=amp is not None):
        steps = sample_tokens(runner, ids.to(device), sampling, banned, generator)
        while any(left):
            drawn = next(steps).tolist()
            tokens += 1
            for record, token in enumerate(drawn):
                bases = pieces[token][: left[record]]
                spool.write(record, bases)
                left[record] -= len(bases)
                progress.update(len(bases))
    return tokens


def run_generation(options: GenerateOptions) -> dict:
    """Write `options.batch` sampled sequences to `options.output`; the summary."""
    started = time.perf_counter()
    if options.threads:
        torch.set_num_threads(options.threads)
    output = Path(options.output)
    if output.is_dir():
        raise ValueError(f"output={output} is a directory: give a FASTA file path (OUT.fa)")
    device = pick_device(options.device)
    amp = autocast_dtype(options.precision, device, key="precision")
    prompt = read_prompt(options.prompt)
    checkpoint, runner, tokenizer = load_causal_model(options.checkpoint, device, options.kernels)
    loaded = time.perf_counter()
    spool = FastaSpool(output, options.names, options.line_width)
    try:
        tokens = generate_into(spool, runner, tokenizer, options, prompt, device, amp)
        sampled_s = time.perf_counter() - loaded
        spool.finish()
    finally:
        spool.close()
    summary = {
        "program": PROGRAM,
        "checkpoint": str(checkpoint),
        "output": str(output),
        "settings": asdict(options),
        "records": options.names,
        "prompt_bp": len(prompt),
        "bp_per_record": options.length,
        "tokens_per_record": tokens,
        "sample_s": sampled_s,
        "bp_per_s": options.length * options.batch / max(sampled_s, 1e-9),
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "segment_tokens": runner.segment_tokens,
        "memory_tokens": runner.memory_tokens,
    }
    write_json(options.summary_path, summary)
    return summary


@hydra.main(config_path=CONFIG_PATH, config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with user_errors(PROGRAM):
        options = generate_options(cfg)
        summary = run_generation(options)
        print(
            f"{PROGRAM}: wrote {options.output} ({options.batch} x {options.length:,} bp, "
            f"{summary['bp_per_s']:,.0f} bp/s, peak RSS {summary['peak_rss_mb']:,.0f} MB) "
            f"and {options.summary_path}"
        )
        return summary
