"""Variant effect scores on bacterial genes: does rmt-score rank nonsense < missense < synonymous?

    python -m benchmarks.variant_effects --out runs/variants     # ~35 min on one CPU core
    python -m benchmarks.variant_effects --out runs/variants --stage evaluate  # redo tables
    python -m benchmarks.variant_effects --out runs/v2 --checkpoint runs/variants/pretrain

Stages, each a fresh process through the user-facing apps where one exists (a stage whose
outputs exist is skipped, so a killed run picks up where it stopped):

1. pretrain: `rmt-train experiment=species_pretrain` on the training strains of the four
   bacterial species (benchmarks/species_data.py's split), memory 8 tokens; or
   `--checkpoint RUN` to use a given run instead;
2. genes: pyrodigal gene calls on the held-out strain of each species, `--genes` sampled
   per genome away from record ends, every SNV of their CDS classified with the codon
   table, a sorted VCF and a class TSV per genome (benchmarks/variant_effects_data.py);
3. score: `rmt-score` on each VCF with `--long-segments` segments' worth of upstream
   context (streamed through the memory) and with none (`context.upstream=0`: what the
   model reads is the variant's block start to its window, under one segment, and the
   128 bp flanks: about one segment), on the plus strand (`--strand both` doubles the
   time: for a GPU);
4. duplication: on the first held-out genome, regions of one segment's worth of bp
   written twice, `--distance-segments` segments apart, with real genome around them;
   SNVs of the second copy scored with context reaching the first copy, with context
   that stops short of it, and in a control sequence without the first copy; and a local
   check without memory, 40 bp copies 64 bp apart (in the scored window), vs control;
5. evaluate: mean LLR per class with bootstrap 95 % CIs, AUROC and Mann-Whitney of
   nonsense and missense vs synonymous per genome and pooled for each context, the
   duplication contrasts; JSON + plot into `--results` (benchmarks/variant_effects_eval.py).

Measured on one CPU core (the other busy): pre-training 16 min, scoring the 14,679 SNVs of
16 genes in both contexts 13 min, the duplication checks 3 min. Toy sizes for an
end-to-end check (tests/test_variant_effects_benchmark.py, under 2 minutes on slices of
the genomes): `--genes 1 --max-cds-bp 200 --long-segments 4 --duplications 2
--snvs-per-copy 4 --pretrain-steps 6` and `--pretrain-override` of a one-layer model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.gene_structure import timed
from benchmarks.species import stages
from benchmarks.species_data import (
    SPECIES,
    TEST_STRAINS,
    default_bacteria_dir,
    strain_file,
    train_files,
)
from benchmarks.variant_effects_data import (
    SAMPLE_BP,
    call_genes,
    copy_snvs,
    duplicates,
    gene_snvs,
    sample_genes,
    segment_bp,
    write_duplicates,
    write_table,
    write_vcf,
)
from benchmarks.variant_effects_eval import evaluate
from data.fasta import clean_sequence, open_fasta

PRETRAIN_SEGMENTS = (1, 2, 4)
FLANK_BP = 128  # rmt-score's context.flank (its default)
# The local duplication check: copies of LOCAL_BP, the second LOCAL_DISTANCE bp after the
# first, so that the first copy lies inside the second's SNVs' scored windows.
LOCAL_BP, LOCAL_DISTANCE = 40, 64
# Contexts scored: long (`--long-segments` segments' worth upstream), short (none).
CONTEXTS = ("long", "short")
# Duplication scorings: name -> (sequences, upstream reaches the first copy).
DUPLICATION = {"memory": ("dup", True), "cut": ("dup", False), "control": ("control", True)}


@dataclass(frozen=True)
class VariantOptions:
    out: Path
    results: Path
    bacteria: Path
    checkpoint: Path | None
    genes: int  # sampled per genome
    max_cds_bp: int  # longest CDS sampled (bounds the SNVs per gene)
    long_segments: int  # the long context, in segments' worth of bp
    strand: str
    duplications: int  # regions on the duplication genome
    distance_segments: int  # second copy starts this many segments after the first
    snvs_per_copy: int
    pretrain_experiment: str
    pretrain_steps: int | None
    seed: int
    stage: str
    pretrain_override: list[str] = field(default_factory=list)


def pretrain(o: VariantOptions) -> Path:
    """The model scored: `--checkpoint`, or the memory model pre-trained here."""
    if o.checkpoint is not None:
        return o.checkpoint
    run = o.out / "pretrain"
    if not (run / "eval.json").is_file():
        fasta = ",".join(str(p) for p in train_files(o.bacteria))
        steps = [] if o.pretrain_steps is None else [
            f"curriculum.stages={stages(PRETRAIN_SEGMENTS, o.pretrain_steps)}"]  # fmt: skip
        timed(o, "pretrain", [
            "rmt-train", f"experiment={o.pretrain_experiment}", f"data.fasta=[{fasta}]",
            "memory.memory_tokens=8", f"seed={o.seed}", *steps, *o.pretrain_override,
            f"hydra.run.dir={run}",
        ])  # fmt: skip
    return run


def held_out_genomes(o: VariantOptions) -> dict[str, Path]:
    """The held-out strain of each species, by a short name."""
    return {f"{sp}_{TEST_STRAINS[sp]}": strain_file(o.bacteria, sp, TEST_STRAINS[sp])
            for sp in SPECIES}  # fmt: skip


def read_genome(fasta: Path) -> dict[str, str]:
    """A genome's records, upper case, non-ACGT as N."""
    return {name: clean_sequence(rec[:]) for name, rec in open_fasta(fasta).records.items()}


def genome_segment_bp(checkpoint: Path, records: dict[str, str]) -> int:
    """One segment's worth of bp on this genome (its first record's first SAMPLE_BP)."""
    return segment_bp(checkpoint, next(iter(records.values()))[:SAMPLE_BP])


def genes(o: VariantOptions, checkpoint: Path, genome: str, fasta: Path) -> Path:
    """`<genome>.vcf` and `<genome>.tsv`: every SNV of the sampled genes, classified."""
    data = o.out / "data"
    vcf = data / f"{genome}.vcf"
    if vcf.is_file():
        return vcf
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = read_genome(fasta)
    margin = o.long_segments * genome_segment_bp(checkpoint, records) + 1000
    called = call_genes(records)
    picked = sample_genes(called, records, o.genes, margin, o.max_cds_bp, o.seed)
    snvs = [s for gene in picked for s in gene_snvs(gene, records[gene.chrom])]
    write_table([asdict(s) for s in snvs], data / f"{genome}.tsv")
    write_vcf(snvs, {n: len(s) for n, s in records.items()}, vcf)
    print(f"{genome}: {len(called)} genes called, {len(picked)} sampled, {len(snvs)} SNVs "
          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    return vcf


def score(o: VariantOptions, checkpoint: Path, name: str, inputs: tuple[Path, Path],
          context: tuple[int, int], strand: str) -> Path:  # fmt: skip
    """`rmt-score` of one (VCF, FASTA) with `context` = (upstream, block) bp on `strand`."""
    out = o.out / "scores" / name
    if not (out / "summary.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        vcf, fasta = inputs
        upstream, block = context
        timed(o, f"score_{name}", [
            "rmt-score", f"checkpoint={checkpoint}", f"data.fasta=[{fasta}]",
            f"variants={vcf}", f"output={out}", f"context.upstream={upstream}",
            f"context.block={block}", f"context.flank={FLANK_BP}", f"strand={strand}",
            "progress=false", "threads=1",
        ])  # fmt: skip
    return out


def score_genes(o: VariantOptions, checkpoint: Path, genome: str, fasta: Path, vcf: Path) -> None:
    """The genome's SNVs with long context and with none."""
    seg = genome_segment_bp(checkpoint, read_genome(fasta))
    for context in CONTEXTS:
        upstream = o.long_segments * seg if context == "long" else 0
        score(o, checkpoint, f"{genome}_{context}", (vcf, fasta), (upstream, seg), o.strand)


def duplication(o: VariantOptions, checkpoint: Path, genome: str, fasta: Path) -> None:
    """The constructed sequences and their SNVs, scored on the plus strand (the first copy
    is upstream of the second on it): copies of one segment `--distance-segments` apart
    three ways (DUPLICATION), and the local check, copies of LOCAL_BP bp LOCAL_DISTANCE
    apart (inside the scored window's flank, so in attention), with and without the
    first copy, the same context."""
    records = read_genome(fasta)
    seg = genome_segment_bp(checkpoint, records)
    distance = o.distance_segments * seg
    far = construct(o, o.out / "duplication", records, genome, (seg, distance, seg), o.seed)
    for name, (kind, reaches) in DUPLICATION.items():
        inputs = (far / "snvs.vcf", far / f"{kind}.fa")
        upstream = duplication_upstream(seg, distance, reaches)
        score(o, checkpoint, f"dup_{name}", inputs, (upstream, seg), "plus")
    near = (LOCAL_BP, LOCAL_DISTANCE, seg)
    local = construct(o, o.out / "duplication_local", records, genome, near, o.seed + 1)
    for kind in ("dup", "control"):
        inputs = (local / "snvs.vcf", local / f"{kind}.fa")
        score(o, checkpoint, f"local_{kind}", inputs, (2 * seg, seg), "plus")


def construct(o: VariantOptions, data: Path, records: dict[str, str], genome: str,
              sizes: tuple[int, int, int], seed: int) -> Path:  # fmt: skip
    """`--duplications` duplicates of `sizes` = (copy length, distance, segment bp) and
    their SNVs (every base of a copy up to `--snvs-per-copy`) written into `data`."""
    length, distance, seg = sizes
    if not (data / "snvs.vcf").is_file():
        data.mkdir(parents=True, exist_ok=True)
        dups = duplicates(records, o.duplications, length, distance, 2 * seg, seg, seed)
        snvs = copy_snvs(dups, min(o.snvs_per_copy, length), seed)
        write_duplicates(dups, snvs, genome, data)
    return data


def duplication_upstream(seg: int, distance: int, reaches: bool) -> int:
    """context.upstream (with context.block = `seg`) for a second copy's SNVs: reaching,
    every context starts before the first copy; not, every context (and lead: up to one
    block before the window) starts after the first copy's end."""
    return distance + 2 * seg if reaches else max(distance - 2 * seg - FLANK_BP, 0)


def parse_args(argv: list[str] | None = None) -> VariantOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/variants"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/variant_effects"))
    p.add_argument("--bacteria", type=Path, default=default_bacteria_dir())
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="score this run's model instead of pre-training one")  # fmt: skip
    p.add_argument("--genes", type=int, default=4, help="genes sampled per genome")
    p.add_argument("--max-cds-bp", type=int, default=450, help="longest CDS sampled")
    p.add_argument("--long-segments", type=int, default=16,
                   help="the long context, in segments' worth of bp")  # fmt: skip
    p.add_argument(
        "--strand",
        choices=["plus", "both"],
        default="plus",
        help="both: twice the scoring time (a GPU)",
    )
    p.add_argument("--duplications", type=int, default=20, help="duplicated regions")
    p.add_argument("--distance-segments", type=int, default=3,
                   help="bp from the first copy's start to the second's, in segments")  # fmt: skip
    p.add_argument("--snvs-per-copy", type=int, default=40)
    p.add_argument("--pretrain-experiment", default="species_pretrain")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="null: the experiment's own (species_pretrain: 500)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stage",
        default="all",
        choices=["all", "pretrain", "genes", "score", "duplication", "evaluate"],
    )
    p.add_argument(
        "--pretrain-override",
        action="append",
        default=[],
        help="an extra rmt-train override (repeatable), e.g. model.n_layers=2",
    )
    return VariantOptions(**vars(p.parse_args(argv)))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    o.out.mkdir(parents=True, exist_ok=True)
    checkpoint = pretrain(o)
    if o.stage == "pretrain":
        return
    genomes = held_out_genomes(o)
    vcfs = {g: genes(o, checkpoint, g, fasta) for g, fasta in genomes.items()}
    if o.stage == "genes":
        return
    if o.stage in ("all", "score"):
        for g, fasta in genomes.items():
            score_genes(o, checkpoint, g, fasta, vcfs[g])
    if o.stage in ("all", "duplication"):
        first = next(iter(genomes))
        duplication(o, checkpoint, first, genomes[first])
    if o.stage in ("all", "evaluate"):
        setup = run_setup(o, argv, checkpoint, genomes)
        evaluate(o.out, list(genomes), CONTEXTS, o.results, setup)


def run_setup(o: VariantOptions, argv: list[str], checkpoint: Path, genomes: dict) -> dict:
    """What the results JSON records of the run: command, options, model, stage times."""
    timings = o.out / "timings.json"
    return {
        "command": " ".join(["python -m benchmarks.variant_effects", *argv]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
        "checkpoint": str(checkpoint),
        "segment_bp": {
            g: genome_segment_bp(checkpoint, read_genome(f)) for g, f in genomes.items()
        },
        "stage_seconds": json.loads(timings.read_text()) if timings.is_file() else {},
    }


if __name__ == "__main__":
    main()
