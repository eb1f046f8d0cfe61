"""rmt-validate's report: every metric for three samples of one length, against a reference.

The samples are the generated sequence, a sample of an order-k Markov model fitted on the
reference (what a model that learnt only k-mer statistics would give), and random
stretches of the reference itself (what a perfect generator would give), each with the
generated records' lengths. The reference's halves give a second floor for the k-mer
divergence and the window statistics: how much the genome differs from itself at full
length, without the sampling noise of a short sample.

Targets: k-mer spectra and GC windows of the whole reference; gene lengths of pyrodigal
calls on another set of same-length reference stretches (the whole genome would cost
minutes in metagenomic mode), so the reference sample's KS is the noise floor there too.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data.atomic import atomic_path
from data.errors import FastaError
from data.fasta import clean_sequence, open_fasta
from rmt.cli import write_json
from rmt.markov import MarkovModel
from rmt.validate import metrics as m

KMAX = 8  # k-mer spectra for k = 1..KMAX
REPEAT_K = 12
MIN_RUN = 5  # homopolymer runs counted from this length
MAX_N = 0.5
SAMPLES = ("generated", "markov", "reference_sample")
PACKAGES = ("rmt-dna", "numpy", "scipy", "pyrodigal", "pyfaidx", "matplotlib")


@dataclass(frozen=True)
class ValidateOptions:
    """What rmt-validate compares and how (the command line's flags)."""

    generated: Path
    reference: Path
    output: Path
    markov_order: int = 5
    seed: int = 0
    window: int = 1000
    canonical: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.markov_order < 0:
            raise ValueError(f"--markov-order {self.markov_order}: give an order >= 0")
        if self.window < 1:
            raise ValueError(f"--window {self.window}: give a window of at least 1 bp")


class Validation(NamedTuple):
    """The report (JSON-able) and the distributions behind its figure, by sample name."""

    report: dict
    gc: dict[str, np.ndarray]
    gene_lengths: dict[str, np.ndarray]


def read_records(path: Path, role: str, window: int) -> list[str]:
    """The cleaned records of a FASTA; refused when mostly N or too short for one window."""
    with open_fasta(path) as fasta:
        records = [clean_sequence(record[:]) for record in fasta.records.values()]
    share = m.n_fraction(records)
    if share > MAX_N:
        raise FastaError(
            f"{path}: {share:.0%} of the {role} sequence is N (or another non-ACGT code), "
            f"more than {MAX_N:.0%}; give a sequence that is mostly A, C, G and T"
        )
    longest, needed = max(len(r) for r in records), max(window, KMAX)
    if longest < needed:
        raise FastaError(
            f"{path}: the longest {role} record is {longest} bp, shorter than one window "
            f"(--window {window}, k up to {KMAX}); windows never span records: give longer "
            "sequences or a smaller --window"
        )
    return records


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def jsd_by_k(spectra: list[np.ndarray], target: list[np.ndarray]) -> dict[str, float]:
    return {
        str(k): m.jensen_shannon_bits(p, q)
        for k, (p, q) in enumerate(zip(spectra, target, strict=True), 1)
    }


class Targets(NamedTuple):
    """What each sample is compared with (see the module docstring)."""

    spectra: list[np.ndarray]
    gc: np.ndarray
    skew: np.ndarray
    gene_lengths: np.ndarray


def validate(options: ValidateOptions, log: Callable[[str], None] = lambda _: None) -> Validation:
    """Read both FASTA files, draw the comparison samples, compute every metric."""
    log(f"reading {options.generated} and {options.reference}")
    generated = read_records(options.generated, "generated", options.window)
    reference = read_records(options.reference, "reference", options.window)
    lengths = [len(r) for r in generated]
    rng = np.random.default_rng(options.seed)
    log(f"fitting an order-{options.markov_order} Markov model on the reference, sampling")
    model = MarkovModel(options.markov_order).fit(reference)
    samples = {
        "generated": generated,
        "markov": [model.sample(n, rng) for n in lengths],
        "reference_sample": m.reference_slices(reference, lengths, rng),
    }
    log("calling genes (pyrodigal, metagenomic mode)")
    genes = {name: m.find_genes(records) for name, records in samples.items()}
    gene_target = m.gene_lengths(m.find_genes(m.reference_slices(reference, lengths, rng)))
    log("k-mer spectra, GC windows, runs and repeats")
    targets = Targets(
        m.spectra(reference, KMAX, options.canonical),
        *m.gc_windows(reference, options.window),
        gene_target,
    )
    results, gc, lengths = {}, {"reference": targets.gc}, {"reference": gene_target}
    for name, records in samples.items():
        results[name] = sample_metrics(records, genes[name], targets, model, options)
        gc[name] = m.gc_windows(records, options.window)[0]
        lengths[name] = m.gene_lengths(genes[name])
    results["reference_halves"] = halves_floor(reference, options)
    inputs = [
        ("generated", options.generated, generated),
        ("reference", options.reference, reference),
    ]
    report = {
        "program": "rmt-validate",
        "inputs": {role: describe(path, records) for role, path, records in inputs},
        "options": {
            **json_options(options),
            "kmax": KMAX,
            "repeat_k": REPEAT_K,
            "min_run": MIN_RUN,
        },
        "versions": versions(),
        "metrics": results,
    }
    return Validation(report, gc, lengths)


def sample_metrics(
    records: list[str],
    genes: list[m.Gene],
    targets: Targets,
    model: MarkovModel,
    options: ValidateOptions,
) -> dict:
    """Every metric of one sample."""
    gc, skew = m.gc_windows(records, options.window)
    return {
        "bp": m.total_bp(records),
        "records": len(records),
        "markov_bits_per_base": model.bits_per_base(records),
        "kmer_jsd": jsd_by_k(m.spectra(records, KMAX, options.canonical), targets.spectra),
        "gc": m.compare(gc, targets.gc),
        "gc_skew": m.compare(skew, targets.skew),
        "homopolymers": m.homopolymers(records, MIN_RUN),
        "repeats": m.repeated_kmers(records, REPEAT_K),
        "genes": m.gene_summary(records, genes, targets.gene_lengths),
    }


def halves_floor(reference: list[str], options: ValidateOptions) -> dict:
    """The reference's two halves against each other: k-mer JSD and window KS."""
    first, second = m.halves(reference)
    (gc1, skew1), (gc2, skew2) = (m.gc_windows(h, options.window) for h in (first, second))
    return {
        "bp": m.total_bp(first),
        "kmer_jsd": jsd_by_k(*(m.spectra(h, KMAX, options.canonical) for h in (first, second))),
        "gc": m.ks(gc1, gc2),
        "gc_skew": m.ks(skew1, skew2),
    }


def describe(path: Path, records: list[str]) -> dict:
    bp, share = m.total_bp(records), m.n_fraction(records)
    return {"path": str(path), "records": len(records), "bp": bp, "n_fraction": share}


def json_options(options: ValidateOptions) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}


# (label, section, key) rows of the Markdown table; a missing value is left blank.
ROWS = [
    *((f"k-mer JSD k={k} (bits)", "kmer_jsd", str(k)) for k in range(1, KMAX + 1)),
    ("GC mean", "gc", "mean"),
    ("GC sd", "gc", "sd"),
    ("GC KS", "gc", "ks"),
    ("GC skew mean", "gc_skew", "mean"),
    ("GC skew sd", "gc_skew", "sd"),
    ("GC skew KS", "gc_skew", "ks"),
    (f"bases in runs >= {MIN_RUN}", "homopolymers", "fraction_in_runs"),
    ("longest run (bp)", "homopolymers", "longest_run"),
    (f"repeated {REPEAT_K}-mer positions", "repeats", "positions_repeated"),
    ("genes per kb", "genes", "genes_per_kb"),
    ("median gene length (bp)", "genes", "median_length"),
    ("mean gene length (bp)", "genes", "mean_length"),
    ("coding density", "genes", "coding_density"),
    ("gene length KS", "genes", "ks"),
    ("bits/base under the Markov model", "markov_bits_per_base", None),
]
COLUMNS = (*SAMPLES, "reference_halves")
COLORS = {"generated": "C0", "markov": "C1", "reference_sample": "C2", "reference_halves": "C3",
          "reference": "black"}  # fmt: skip


def markdown(report: dict) -> str:
    """A short Markdown summary: inputs, then one row per metric, one column per sample."""
    o, inputs = report["options"], report["inputs"]
    head = [
        "# rmt-validate",
        "",
        f"generated: `{inputs['generated']['path']}` ({inputs['generated']['bp']:,} bp, "
        f"{inputs['generated']['records']} records); reference: "
        f"`{inputs['reference']['path']}` ({inputs['reference']['bp']:,} bp). "
        f"markov = order-{o['markov_order']} chain fitted on the reference; reference sample "
        "= random stretches of the reference; both with the generated records' lengths. "
        "reference halves = the two halves of the reference against each other. "
        f"Windows {o['window']} bp, seed {o['seed']}"
        + (", canonical k-mers." if o["canonical"] else "."),
        "",
        "| metric | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    results = report["metrics"]
    rows = [
        f"| {label} | " + " | ".join(cell(lookup(results[c], section, key)) for c in COLUMNS) + " |"
        for label, section, key in ROWS
    ]
    return "\n".join(head + rows) + "\n"


def lookup(result: dict, section: str, key: str | None):
    """``result[section][key]`` (``result[section]`` when key is None), None if absent."""
    value = result.get(section)
    return value if key is None or value is None else value.get(key)


def cell(value) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def plot(validation: Validation, path: Path) -> bool:
    """k-mer JSD against k, GC window histograms, gene length histograms; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = validation.report["metrics"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in COLUMNS:
        jsd = results[name]["kmer_jsd"]
        ks = [int(k) for k in jsd]
        axes[0].plot(ks, list(jsd.values()), marker="o", ms=3, color=COLORS[name], label=name)
    axes[0].set(yscale="log", xlabel="k", ylabel="JSD vs reference (bits)", title="k-mer spectra")
    for ax, data, xlabel in (
        (axes[1], validation.gc, f"GC content per {validation.report['options']['window']} bp"),
        (axes[2], validation.gene_lengths, "complete gene length (bp)"),
    ):
        nonempty = [v for v in data.values() if len(v)]
        bins = np.histogram_bin_edges(np.concatenate(nonempty), 30) if nonempty else 30
        for name, values in data.items():
            if len(values):
                ax.hist(values, bins, density=True, histtype="step", color=COLORS[name], label=name)
        ax.set(xlabel=xlabel, ylabel="density")
    axes[1].set_title("GC windows")
    axes[2].set_title("genes (pyrodigal, meta)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


def write(validation: Validation, out: Path) -> list[Path]:
    """report.json, report.md and report.png (each atomically) in ``out``; returns them."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", validation.report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(validation.report))
    written = [out / "report.json", out / "report.md"]
    if plot(validation, out / "report.png"):
        written.append(out / "report.png")
    return written
