"""Generation with a causal RMT: how real do 100 kb of its E. coli look, next to Markov-5?

    python -m benchmarks.generation --out runs/generation          # ~25 min on 2 CPU cores
    python -m benchmarks.generation --out runs/generation --stage results   # redo tables
    python -m benchmarks.generation --out runs/generation_dry --dry-run     # ~1 min, toy

Stages, each app a fresh process (a stage whose outputs exist is skipped, so a killed run
picks up where it stopped; delete a stage's outputs to redo it):

1. pretrain: `rmt-train experiment=clm_cpu` (conf/experiment/clm_cpu.yaml: the causal tiny
   model, a 512-token BPE, 8 memory tokens, 128-token segments, 1 -> 2 -> 4 -> 8 segments,
   800 steps of 2,048 tokens) into OUT/pretrain; its eval.json holds bits per base on the
   held-out last 5 % beside order-1 and order-5 Markov chains fitted on the training part;
2. generate: `rmt-generate` of `--length` bp at each `--temperature` (OUT/generated.fa and
   generate.json at 1.0, OUT/generated_t0.8.fa and generate_t0.8.json at 0.8; the same
   seed, so the samples share their random draws), and an order-5 Markov sample as long,
   fitted on exactly what the model trained on (the run's training genome in the chunks
   its Markov baseline counts; OUT/markov5.fa, markov5.json);
3. validate: `rmt-validate` of each sample against the whole genome (OUT/validate,
   validate_t0.8, validate_markov). rmt-validate's report has a Markov column of its own,
   fitted on the whole reference, held-out part included; markov5.fa is validated as
   well because it is the baseline that saw the model's data and no more, and the two
   Markov samples' difference shows the noise of a sample this long;
4. results: generation.json (held-out bits per base, memory gain, bp/s, peak RSS, the
   validation's figures for every sample), generation.md (the same as tables), and the
   first temperature's validation report copied as validation.md / validation.png, into
   `--results`.

`--dry-run` (tests/test_generation_benchmark.py): the same stages with a one-layer model
32 wide, 8 steps and 5 kb samples, results into OUT/results unless `--results` is given,
so a dry run never overwrites the committed figures. `--steps-scale 0.25` shortens only
the pre-training (each curriculum stage's steps times 0.25).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from benchmarks.gene_structure import timed
from data import bundled_genome
from data.atomic import atomic_path
from data.vocab_checks import spread_chunks
from rmt.cli import write_json
from rmt.data_config import heldout_regions, make_genome
from rmt.install import CONFIG_PATH
from rmt.markov import MarkovModel
from rmt.option_groups import DataOptions
from rmt.tasks.clm import MARKOV_CHUNK_BP, MARKOV_MAX_BP
from rmt.validate.report import ROWS, cell, lookup

EXPERIMENT = "clm_cpu"
MARKOV_ORDER = 5  # the Markov sample's order, and rmt-validate's
RESULTS = Path("benchmarks/results/generation")
# --dry-run: a model that trains in seconds on a BPE of 300 kbp, 8 steps, 5 kb samples.
DRY_RUN_TRAIN = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2",
                 "tokenizer.max_bp=300000", "trainer.eval_max_tokens=4096"]  # fmt: skip
DRY_RUN_STEPS_SCALE, DRY_RUN_LENGTH = 0.01, 5000
LENGTH, TEMPERATURES = 100_000, [1.0, 0.8]


@dataclass(frozen=True)
class GenerationOptions:
    out: Path
    results: Path
    genome: Path | None  # None: the bundled E. coli (experiment=clm_cpu's data)
    length: int  # bp per sample
    temperatures: list[float]
    steps_scale: float
    dry_run: bool
    seed: int
    stage: str

    @property
    def reference(self) -> Path:
        """The genome trained on, and the reference every sample is validated against."""
        return self.genome if self.genome is not None else bundled_genome("ecoli")


def suffix(temperature: float) -> str:
    """'' for the default temperature 1.0, else `_t0.8`: OUT/generated{suffix}.fa, ..."""
    return "" if temperature == 1.0 else f"_t{temperature:g}"


def need(path: Path, stage: str) -> Path:
    """`path`, or exit naming the stage that writes it."""
    if not path.exists():
        sys.exit(f"{path} is missing: run the {stage} stage first (--stage {stage}, or all)")
    return path


def scaled_stages(scale: float) -> str:
    """A curriculum.stages override: experiment=clm_cpu's stages, each `scale` times as
    many steps (at least one)."""
    conf = OmegaConf.load(Path(CONFIG_PATH) / "experiment" / f"{EXPERIMENT}.yaml")
    stages = [(s.segments, max(1, round(s.steps * scale))) for s in conf.curriculum.stages]
    return "[" + ",".join(f"{{segments:{n},steps:{steps}}}" for n, steps in stages) + "]"


def pretrain(o: GenerationOptions) -> Path:
    run = o.out / "pretrain"
    if not (run / "eval.json").is_file():
        data = [] if o.genome is None else [f"data.fasta=[{o.genome}]"]
        steps = [] if o.steps_scale == 1 else [f"curriculum.stages={scaled_stages(o.steps_scale)}"]
        timed(o, "pretrain", [
            "rmt-train", f"experiment={EXPERIMENT}", f"seed={o.seed}", *data, *steps,
            *(DRY_RUN_TRAIN if o.dry_run else []), f"hydra.run.dir={run}",
        ])  # fmt: skip
    return run


def generate(o: GenerationOptions, run: Path, temperature: float) -> None:
    """OUT/generated{suffix}.fa and its generate{suffix}.json (written last)."""
    end = suffix(temperature)
    summary = o.out / f"generate{end}.json"
    if not summary.is_file():
        timed(o, f"generate{end}", [
            "rmt-generate", f"checkpoint={run}", f"output={o.out / f'generated{end}.fa'}",
            f"summary={summary}", f"length={o.length}", f"temperature={temperature}",
            f"seed={o.seed}", "progress=false",
        ])  # fmt: skip


def training_chunks(run: Path) -> list[str]:
    """What the run's Markov baselines were fitted on (rmt.tasks.clm): its training genome,
    held-out and excluded regions left out, in the same chunks."""
    data = OmegaConf.load(need(run / ".hydra" / "config.yaml", "pretrain")).data
    options = DataOptions(**OmegaConf.to_container(data, resolve=True))
    genome = make_genome(options, heldout_regions(options))
    return list(spread_chunks(genome, MARKOV_MAX_BP, MARKOV_CHUNK_BP))


def write_fasta(path: Path, name: str, seq: str, width: int = 60) -> None:
    with atomic_path(path) as tmp:
        lines = (seq[i : i + width] + "\n" for i in range(0, len(seq), width))
        tmp.write_text(f">{name}\n" + "".join(lines))


def markov_sample(o: GenerationOptions, run: Path) -> None:
    """OUT/markov5.fa: `--length` bp of an order-5 chain fitted on the training part, and
    markov5.json (written last) saying so."""
    summary = o.out / f"markov{MARKOV_ORDER}.json"
    if summary.is_file():
        return
    started = time.perf_counter()
    chunks = training_chunks(run)
    model = MarkovModel(MARKOV_ORDER).fit(chunks)
    seq = model.sample(o.length, np.random.default_rng(o.seed))
    write_fasta(o.out / f"markov{MARKOV_ORDER}.fa", f"markov{MARKOV_ORDER}", seq)
    write_json(summary, {
        "order": MARKOV_ORDER, "fitted_bp": sum(map(len, chunks)), "chunks": len(chunks),
        "bp": len(seq), "seed": o.seed, "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip


def validations(o: GenerationOptions) -> dict[str, tuple[Path, Path]]:
    """Report directory name -> (the sample it validates, the report directory)."""
    pairs = {f"validate{suffix(t)}": o.out / f"generated{suffix(t)}.fa" for t in o.temperatures}
    pairs["validate_markov"] = o.out / f"markov{MARKOV_ORDER}.fa"
    return {name: (fasta, o.out / name) for name, fasta in pairs.items()}


def validate(o: GenerationOptions, name: str, fasta: Path, report: Path) -> None:
    if not (report / "report.md").is_file():  # --overwrite: a killed run's partial report
        timed(o, name, [
            "rmt-validate", str(need(fasta, "generate")), "--reference", str(o.reference),
            "--output", str(report), "--markov-order", str(MARKOV_ORDER), "--seed",
            str(o.seed), "--overwrite",
        ])  # fmt: skip


def read_json(path: Path, stage: str) -> dict:
    return json.loads(need(path, stage).read_text())


def heldout(evaluation: dict) -> dict:
    """eval.json's final figures: bits per base of the model and its baselines on the
    held-out sequence, the memory gain (nats per token over segments 2..n)."""
    final, initial = evaluation["final"], evaluation["initial"] or {}
    return {
        "regions": evaluation["regions"],
        "segments": final["segments"],
        "bases": final["bases"],
        "bits_per_base": {
            "model": final["bits_per_base"],
            "model_before_training": initial.get("bits_per_base"),
            "markov1": final["markov1_bits_per_base"],
            "markov5": final["markov5_bits_per_base"],
        },
        "model_minus_markov5": final["bits_per_base"] - final["markov5_bits_per_base"],
        "memory_gain": final["memory_gain"],
        "memory_gain_se": final["memory_gain_se"],
        "loss": final["loss"],
        "loss_memory_reset": final["loss_memory_reset"],
        "unigram_loss": final["unigram_loss"],
    }


def generation_figures(o: GenerationOptions, temperature: float) -> dict:
    """generate.json's figures of one sample, and its share of N (from its validation:
    the BPE has a token N, which the model may draw though the genome has none)."""
    summary = read_json(o.out / f"generate{suffix(temperature)}.json", "generate")
    report = read_json(o.out / f"validate{suffix(temperature)}" / "report.json", "validate")
    keys = ("bp_per_record", "tokens_per_record", "sample_s", "bp_per_s", "peak_rss_mb",
            "threads", "device")  # fmt: skip
    return {"temperature": temperature, **{k: summary[k] for k in keys},
            "n_fraction": report["inputs"]["generated"]["n_fraction"]}  # fmt: skip


def key_numbers(metrics: dict) -> dict:
    """One sample's rows of rmt-validate's table, keyed `section.key` (None: not measured)."""
    return {
        section if key is None else f"{section}.{key}": lookup(metrics, section, key)
        for _, section, key in ROWS
    }


def validation_samples(o: GenerationOptions) -> dict[str, dict]:
    """Every sample's key numbers: the model's at each temperature, the Markov-5 fitted on
    the training part, and the first report's Markov-5 of the whole reference, reference
    stretches and reference halves (the same in every report: same seed and length)."""
    reports = {name: read_json(report / "report.json", "validate")["metrics"]
               for name, (_, report) in validations(o).items()}  # fmt: skip
    first = reports[f"validate{suffix(o.temperatures[0])}"]
    samples = {f"model_t{t:g}": reports[f"validate{suffix(t)}"]["generated"]
               for t in o.temperatures}  # fmt: skip
    samples[f"markov{MARKOV_ORDER}_train"] = reports["validate_markov"]["generated"]
    samples[f"markov{MARKOV_ORDER}_reference"] = first["markov"]
    samples["reference_sample"] = first["reference_sample"]
    samples["reference_halves"] = first["reference_halves"]
    return {name: key_numbers(metrics) for name, metrics in samples.items()}


def markdown(result: dict) -> str:
    """generation.json as three tables: held-out bits per base, speed, validation."""
    h, bits = result["heldout"], result["heldout"]["bits_per_base"]
    lines = [
        "# Generation: causal RMT vs Markov-5", "",
        f"Held-out: {h['bases']:,} bases, windows of {h['segments']} segments.", "",
        "| held-out | bits/base |", "|---|---:|",
        f"| model before training | {cell(bits['model_before_training'])} |",
        f"| causal RMT, memory carried | {cell(bits['model'])} |",
        f"| order-1 Markov (bigram) | {cell(bits['markov1'])} |",
        f"| order-5 Markov | {cell(bits['markov5'])} |",
        f"| memory gain (nats/token) | {cell(h['memory_gain'])} ± {cell(h['memory_gain_se'])} |",
        "", "| temperature | bp | bp/s | peak RSS (MB) | N |", "|---:|---:|---:|---:|---:|",
        *(f"| {g['temperature']:g} | {g['bp_per_record']:,} | {g['bp_per_s']:,.0f} | "
          f"{g['peak_rss_mb']:,.0f} | {cell(g['n_fraction'])} |"
          for g in result["generation"].values()),
        "",
    ]  # fmt: skip
    samples = result["validation"]
    lines += [
        "| metric | " + " | ".join(n.replace("_", " ") for n in samples) + " |",
        "|---|" + "---:|" * len(samples),
    ]
    for label, section, key in ROWS:
        name = section if key is None else f"{section}.{key}"
        lines.append(f"| {label} | " + " | ".join(cell(s[name]) for s in samples.values()) + " |")
    return "\n".join(lines) + "\n"


def copy_file(source: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)


def write_results(o: GenerationOptions, argv: list[str]) -> None:
    """generation.json, generation.md and the first sample's validation report."""
    timings = o.out / "timings.json"
    result = {
        "setup": {
            "command": " ".join(["python -m benchmarks.generation", *argv]),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
            "reference": str(o.reference),
            "markov_sample": read_json(o.out / f"markov{MARKOV_ORDER}.json", "generate"),
            "stage_seconds": json.loads(timings.read_text()) if timings.is_file() else {},
        },
        "heldout": heldout(read_json(o.out / "pretrain" / "eval.json", "pretrain")),
        "generation": {f"t{t:g}": generation_figures(o, t) for t in o.temperatures},
        "validation": validation_samples(o),
    }
    o.results.mkdir(parents=True, exist_ok=True)
    write_json(o.results / "generation.json", result)
    with atomic_path(o.results / "generation.md") as tmp:
        tmp.write_text(markdown(result))
    report = o.out / f"validate{suffix(o.temperatures[0])}"
    copy_file(report / "report.md", o.results / "validation.md")
    if (report / "report.png").is_file():  # not without matplotlib
        copy_file(report / "report.png", o.results / "validation.png")
    print(f"wrote generation.json, generation.md, validation.md into {o.results}", flush=True)


def parse_args(argv: list[str] | None = None) -> GenerationOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/generation"))
    p.add_argument("--results", type=Path, help=f"default {RESULTS}; --dry-run: OUT/results")
    p.add_argument("--genome", type=Path, help="FASTA trained on and validated against "
                   "(default: the bundled E. coli)")  # fmt: skip
    p.add_argument("--length", type=int, help=f"bp per sample (default {LENGTH:,}; "
                   f"--dry-run {DRY_RUN_LENGTH:,})")  # fmt: skip
    p.add_argument("--temperature", type=float, action="append", dest="temperatures",
                   help="repeatable (default: 1.0 and 0.8)")  # fmt: skip
    p.add_argument("--steps-scale", type=float, help="pre-training steps times this "
                   f"(default 1; --dry-run {DRY_RUN_STEPS_SCALE})")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="tiny model, 8 steps, 5 kb samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=["all", "pretrain", "generate", "validate", "results"],
                   default="all")  # fmt: skip
    a = p.parse_args(argv)
    if a.genome is not None and not a.genome.is_file():
        p.error(f"--genome {a.genome}: no such file; give a FASTA (plain, .gz or bgzip)")
    dry = a.dry_run
    if a.results is None:
        a.results = a.out / "results" if dry else RESULTS
    if a.length is None:
        a.length = DRY_RUN_LENGTH if dry else LENGTH
    if a.steps_scale is None:
        a.steps_scale = DRY_RUN_STEPS_SCALE if dry else 1.0
    a.temperatures = a.temperatures or TEMPERATURES
    if a.steps_scale <= 0:
        p.error(f"--steps-scale {a.steps_scale}: give a factor > 0 (0.25: a quarter of the steps)")
    if a.length < 1:
        p.error(f"--length {a.length}: give the bp per sample, >= 1")
    return GenerationOptions(**vars(a))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    o.out.mkdir(parents=True, exist_ok=True)
    run = o.out / "pretrain"
    if o.stage in ("all", "pretrain"):
        pretrain(o)
    if o.stage in ("all", "generate"):
        need(run / "eval.json", "pretrain")
        for temperature in o.temperatures:
            generate(o, run, temperature)
        markov_sample(o, run)
    if o.stage in ("all", "validate"):
        for name, (fasta, report) in validations(o).items():
            validate(o, name, fasta, report)
    if o.stage in ("all", "results"):
        write_results(o, argv)


if __name__ == "__main__":
    main()
