"""Species of origin on unseen strains: does recurrent memory beat averaging over segments?

    python -m benchmarks.species --out runs/species              # ~1 h on 2 CPU cores
    python -m benchmarks.species --out runs/species --stage evaluate   # redo the tables
    python -m benchmarks.species --out runs/species_gpu \
        --pretrain-experiment species_pretrain_gpu --finetune-steps 3000  # a GPU

Stages, each a fresh process through the user-facing apps (a stage whose outputs exist
is skipped, so a killed run picks up where it stopped):

1. prepare: class-balanced windows of four species (benchmarks/species_data.py);
2. pretrain: `rmt-train experiment=species_pretrain` on the training strains, with
   memory (8 tokens) and without (0), the same data, steps and tokens;
3. finetune: `rmt-finetune task=sequence_classification` from each, the same steps and
   tokens for every variant:
   - `rmt`: the memory model on windows of up to `--segments` segments (curriculum);
   - `segment`: the memory model on single segments (its memory never carries);
   - `nomemory`: the no-memory model on single segments;
4. evaluate: test windows of unseen strains, accuracy at N = 1, 2, 4, ... segments of
   context ending at the same base, for the RMT with memory carried, the same model with
   memory reset before every segment, and each model averaging its per-segment
   predictions (the honest baseline); JSON + plot into `--results`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.species_data import (
    default_bacteria_dir,
    split_windows,
    train_files,
    write_fasta,
    write_labels,
)
from benchmarks.species_eval import evaluate


@dataclass(frozen=True)
class SpeciesOptions:
    out: Path
    results: Path
    bacteria: Path
    window_bp: int
    train_windows: int  # per species
    valid_windows: int
    test_windows: int
    segments: int  # the longest context evaluated
    finetune_steps: int
    pretrain_experiment: str  # species_pretrain (CPU) or species_pretrain_gpu
    seed: int
    stage: str


def run_app(args: list[str], log: Path) -> None:
    """One app run in a fresh process; its output goes to `log`, a failure stops here."""
    print("$", " ".join(args), flush=True)
    with open(log, "w") as f:
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{args[0]} failed (exit {done.returncode}); see {log}")


def prepare(o: SpeciesOptions) -> Path:
    data = o.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "labels.tsv").is_file():
        counts = {"train": o.train_windows, "valid": o.valid_windows, "test": o.test_windows}
        every = []
        for split, count in counts.items():
            windows = split_windows(o.bacteria, split, count, o.window_bp, o.seed)
            write_fasta(windows, data / f"{split}.fa")
            every += windows
        write_labels(every, data / "labels.tsv")
    return data


def pretrain(o: SpeciesOptions, memory_tokens: int) -> Path:
    run = o.out / f"pretrain_memory{memory_tokens}"
    if not (run / "eval.json").is_file():
        fasta = ",".join(str(p) for p in train_files(o.bacteria))
        run_app(
            [
                "rmt-train", f"experiment={o.pretrain_experiment}", f"data.fasta=[{fasta}]",
                f"memory.memory_tokens={memory_tokens}", f"seed={o.seed}",
                f"hydra.run.dir={run}",
            ],
            o.out / f"pretrain_memory{memory_tokens}.log",
        )  # fmt: skip
    return run


# Fine-tuning variants: pre-trained memory tokens, segments per window of each curriculum
# stage (steps split evenly among them), head pooling.
VARIANTS = {
    "rmt": (8, (1, 2, 4, 8, 16), "both"),
    "segment": (8, (1,), "both"),
    "nomemory": (0, (1,), "mean"),
}


def stages(segments: tuple[int, ...], steps: int) -> str:
    """A curriculum.stages override: `steps` split evenly over the stages."""
    each = steps // len(segments)
    return "[" + ",".join(f"{{segments:{n},steps:{each}}}" for n in segments) + "]"


def finetune(o: SpeciesOptions, variant: str, data: Path) -> Path:
    """`rmt-finetune` of one variant: the same steps and tokens per step for every one."""
    memory_tokens, segments, pool = VARIANTS[variant]
    run = o.out / f"finetune_{variant}"
    if not (run / "test.json").is_file():
        run_app(
            [
                "rmt-finetune", "task=sequence_classification",
                f"checkpoint={o.out / f'pretrain_memory{memory_tokens}'}",
                f"data.train={data / 'train.fa'}", f"data.valid={data / 'valid.fa'}",
                f"data.test={data / 'test.fa'}", f"data.labels={data / 'labels.tsv'}",
                f"task.pool={pool}", f"curriculum.stages={stages(segments, o.finetune_steps)}",
                "curriculum.mix_fraction=0.25",
                "trainer.tokens_per_step=8192", "trainer.eval_every=100",
                "trainer.save_every=100", "trainer.progress=false", "eval.max_segments=8",
                f"seed={o.seed}", f"hydra.run.dir={run}",
            ],
            o.out / f"finetune_{variant}.log",
        )  # fmt: skip
    return run


def parse_args(argv: list[str] | None = None) -> SpeciesOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/species"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/species"))
    p.add_argument("--bacteria", type=Path, default=default_bacteria_dir())
    p.add_argument("--window-bp", type=int, default=24000)
    p.add_argument("--train-windows", type=int, default=200)
    p.add_argument("--valid-windows", type=int, default=16)
    p.add_argument("--test-windows", type=int, default=40)
    p.add_argument("--segments", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--pretrain-experiment", default="species_pretrain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=["all", "prepare", "pretrain", "finetune", "evaluate"],
                   default="all")  # fmt: skip
    return SpeciesOptions(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    o = parse_args(argv)
    data = prepare(o)
    if o.stage == "prepare":
        return
    if o.stage in ("all", "pretrain"):
        for memory_tokens in (8, 0):
            pretrain(o, memory_tokens)
    if o.stage in ("all", "finetune"):
        for variant in VARIANTS:
            finetune(o, variant, data)
    if o.stage in ("all", "evaluate"):
        runs = {variant: o.out / f"finetune_{variant}" for variant in VARIANTS}
        evaluate(runs, data / "test.fa", data / "labels.tsv", o.segments, o.results)


if __name__ == "__main__":
    main()
