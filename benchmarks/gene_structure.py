"""Gene structure on Drosophila chr2R: does memory help to label exons and introns per base?

    python -m benchmarks.gene_structure --out runs/genes       # ~40-50 min on 2 CPU cores
    python -m benchmarks.gene_structure --out runs/genes --stage evaluate   # redo tables
    python -m benchmarks.gene_structure --out runs/genes_gpu --context-bp 12000 \
        --pretrain-experiment dmel_pretrain_gpu --finetune-steps 2000 \
        --finetune-tokens 32768    # a GPU: 512-token segments (4 of them ~10 kbp)

Stages, each a fresh process through the user-facing apps (a stage whose outputs exist
is skipped, so a killed run picks up where it stopped):

1. prepare: the AUGUSTUS tutorial's 486 train / 100 test loci placed on chr2R and checked
   against it; 10 % of the train loci held out as valid; CSVs `sequence,labels`, each locus
   with `--upstream-bp` of unlabelled chromosome before it (test: `--context-bp` on both
   sides, cut per method at evaluation) (benchmarks/gene_structure_data.py);
2. pretrain: `rmt-train experiment=dmel_pretrain` on chr2R without the test loci and
   their context, with memory (8 tokens) and without (0), the same steps and tokens;
3. finetune: `rmt-finetune task=token_classification` from each, the same steps and
   tokens per step: `rmt`, the memory model on windows of up to `--segments` segments
   (curriculum 1 -> 2 -> 4 -> 8), and `nomemory` on windows of one segment. Full BPTT:
   at 4096 tokens a step the activations of 8 segments fit easily, and full is exact
   and faster than replay, which recomputes every segment's forward;
4. evaluate: per-base exon / intron F1 and accuracy within 10 bp of exon boundaries on
   the test loci, per model, memory mode, context and strand
   (benchmarks/gene_structure_eval.py); JSON + plot into `--results`.

Estimated on 2 free CPU cores: pre-training 2 x ~11 min, fine-tuning 2 x ~6 min,
evaluation ~5 min. Toy sizes for an end-to-end check (about 6 minutes): `--loci 12
--pretrain-steps 20 --finetune-steps 8 --pretrain-override model.d_model=64
--pretrain-override model.n_layers=2 --pretrain-override tokenizer.max_bp=1000000`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.gene_structure_data import (
    CLASSES,
    dataset_file,
    default_drosophila_dir,
    exclude_regions,
    place,
    split_valid,
    upstream_floors,
    with_context,
    write_csv,
)
from benchmarks.gene_structure_eval import evaluate
from benchmarks.species import run_app, stages
from data.fasta import open_fasta
from rmt.cli import write_json

PRETRAIN_SEGMENTS = (1, 2, 4, 8)
# Fine-tuning variants: pre-trained memory tokens, segments per window of each stage.
VARIANTS = {"rmt": (8, (1, 2, 4, 8)), "nomemory": (0, (1,))}


@dataclass(frozen=True)
class GeneOptions:
    out: Path
    results: Path
    drosophila: Path
    upstream_bp: int
    context_bp: int
    valid_fraction: float
    segments: int
    finetune_steps: int
    finetune_tokens: int  # content tokens per fine-tuning step, every variant
    pretrain_experiment: str  # dmel_pretrain (CPU) or dmel_pretrain_gpu
    pretrain_steps: int | None
    loci: int | None
    seed: int
    stage: str
    pretrain_override: list[str] = field(default_factory=list)


def timed(o: GeneOptions, name: str, args: list[str]) -> None:
    """`run_app`, its wall time kept in <out>/timings.json (the report quotes them)."""
    started = time.perf_counter()
    run_app(args, o.out / f"{name}.log")
    path = o.out / "timings.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**times, name: round(time.perf_counter() - started, 1)})


def prepare(o: GeneOptions) -> Path:
    """The CSVs, the exclude regions of pre-training, and loci.json (written last)."""
    data = o.out / "data"
    if (data / "loci.json").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    fasta = open_fasta(dataset_file(o.drosophila, "dmel_chr2R.fa.gz"))
    train = place(dataset_file(o.drosophila, "genes.train.gb.gz"), fasta)[: o.loci]
    test = place(dataset_file(o.drosophila, "genes.test.gb.gz"), fasta)[: o.loci]
    train, valid = split_valid(train, o.valid_fraction, o.seed)
    for split, loci in (("train", train), ("valid", valid)):
        floors = upstream_floors(loci, test)
        rows = [with_context(x, fasta, o.upstream_bp, 0, floor)
                for x, floor in zip(loci, floors, strict=True)]  # fmt: skip
        write_csv(rows, data / f"{split}.csv")
    write_csv([with_context(x, fasta, o.context_bp, o.context_bp) for x in test],
              data / "test.csv")  # fmt: skip
    length = len(fasta["chr2R"])
    excluded = exclude_regions(test, o.context_bp, o.context_bp, length)
    (data / "exclude.txt").write_text("".join(f"{r}\n" for r in excluded))
    write_json(data / "loci.json", {"classes": CLASSES, **{
        split: [x.name for x in loci] for split, loci in
        (("train", train), ("valid", valid), ("test", test))}})  # fmt: skip
    return data


def pretrain(o: GeneOptions, memory_tokens: int, data: Path) -> Path:
    run = o.out / f"pretrain_memory{memory_tokens}"
    if not (run / "eval.json").is_file():
        regions = (data / "exclude.txt").read_text().split()
        steps = [] if o.pretrain_steps is None else [
            f"curriculum.stages={stages(PRETRAIN_SEGMENTS, o.pretrain_steps)}"]  # fmt: skip
        timed(o, f"pretrain_memory{memory_tokens}", [
            "rmt-train", f"experiment={o.pretrain_experiment}",
            f"data.fasta=[{dataset_file(o.drosophila, 'dmel_chr2R.fa.gz')}]",
            "data.exclude=[" + ",".join(f"'{r}'" for r in regions) + "]",
            f"memory.memory_tokens={memory_tokens}", f"seed={o.seed}",
            *steps, *o.pretrain_override, f"hydra.run.dir={run}",
        ])  # fmt: skip
    return run


def finetune(o: GeneOptions, variant: str, data: Path) -> Path:
    """`rmt-finetune` of one variant: the same steps and tokens per step for every one."""
    memory_tokens, segments = VARIANTS[variant]
    segments = tuple(n for n in segments if n <= o.segments)
    run = o.out / f"finetune_{variant}"
    if not (run / "test.json").is_file():
        timed(o, f"finetune_{variant}", [
            "rmt-finetune", "task=token_classification",
            f"checkpoint={o.out / f'pretrain_memory{memory_tokens}'}",
            f"data.train={data / 'train.csv'}", f"data.valid={data / 'valid.csv'}",
            f"data.test={data / 'test.csv'}", f"data.classes=[{','.join(CLASSES)}]",
            f"curriculum.stages={stages(segments, o.finetune_steps)}",
            "curriculum.mix_fraction=0.25", "memory.backprop=full",
            f"trainer.tokens_per_step={o.finetune_tokens}", "trainer.lr=1e-3",
            "trainer.eval_every=100", "trainer.save_every=100", "trainer.progress=false",
            f"seed={o.seed}", f"hydra.run.dir={run}",
        ])  # fmt: skip
    return run


def parse_args(argv: list[str] | None = None) -> GeneOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/genes"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/gene_structure"))
    p.add_argument("--drosophila", type=Path, default=default_drosophila_dir())
    p.add_argument(
        "--upstream-bp",
        type=int,
        default=1000,
        help="unlabelled chromosome before each train/valid locus",
    )
    p.add_argument(
        "--context-bp",
        type=int,
        default=4000,
        help="unlabelled chromosome on each side of a test locus (>= 4 segments)",
    )
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--segments", type=int, default=8, help="longest fine-tuning window")
    p.add_argument("--finetune-steps", type=int, default=500)
    p.add_argument("--finetune-tokens", type=int, default=4096, help="tokens per step")
    p.add_argument("--pretrain-experiment", default="dmel_pretrain")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="null: conf/experiment/dmel_pretrain.yaml's 1100",
    )
    p.add_argument("--loci", type=int, default=None, help="first N loci of each file (toy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stage", choices=["all", "prepare", "pretrain", "finetune", "evaluate"], default="all"
    )
    p.add_argument(
        "--pretrain-override",
        action="append",
        default=[],
        help="an extra rmt-train override (repeatable), e.g. model.n_layers=2",
    )
    return GeneOptions(**vars(p.parse_args(argv)))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    data = prepare(o)
    if o.stage in ("all", "pretrain"):
        for memory_tokens in (8, 0):
            pretrain(o, memory_tokens, data)
    if o.stage in ("all", "finetune"):
        for variant in VARIANTS:
            finetune(o, variant, data)
    if o.stage in ("all", "evaluate"):
        timings = o.out / "timings.json"
        setup = {
            "command": " ".join(["python -m benchmarks.gene_structure", *argv]),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
            "loci": {k: len(v) for k, v in json.loads((data / "loci.json").read_text()).items()
                     if k != "classes"},
            "stage_seconds": json.loads(timings.read_text()) if timings.is_file() else {},
        }  # fmt: skip
        runs = {variant: o.out / f"finetune_{variant}" for variant in VARIANTS}
        evaluate(runs, data / "test.csv", o.results, setup)


if __name__ == "__main__":
    main()
