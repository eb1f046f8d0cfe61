"""The species-of-origin task's data: windows of four bacterial species, unseen strains held out.

HyenaDNA's species task, on the real bacterial genomes of `../shared/datasets/bacteria/`:
a window of DNA is classified into its species (E. coli, H. pylori, S. aureus,
V. cholerae). Training and validation windows come from some strains of each species, test
windows from one strain of each species never seen in pre-training or fine-tuning, so a
model must generalise across strains rather than memorise a genome.

Every split is class-balanced (the same number of windows per species) and written as a
FASTA of windows; one `name<TAB>label` side table covers all three, the format
`rmt-finetune` reads (`data.train=train.fa data.labels=labels.tsv`). Validation windows
come from the last 10 % of each training record, training windows from the rest, so the
two never overlap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.atomic import atomic_path
from data.fasta import clean_sequence, open_fasta

SPECIES = {
    "escherichia_coli": ("MG1655",),
    "helicobacter_pylori": ("ELS37", "G27", "Gambia94_24", "Puno120"),
    "staphylococcus_aureus": ("COL", "JKD6008", "N315", "RF122"),
    "vibrio_cholerae": ("H1", "O1_Inaba", "O1_biovar"),
}
# One strain per species that no model ever sees before the test.
TEST_STRAINS = {
    "escherichia_coli": "DH1",
    "helicobacter_pylori": "SJM180",
    "staphylococcus_aureus": "USA300_FPR3757",
    "vibrio_cholerae": "O395",
}
VALID_FRACTION = 0.1


def default_bacteria_dir() -> Path:
    """`../shared/datasets/bacteria` beside the checkout, or $RMT_BACTERIA_DIR."""
    here = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bacteria"
    return Path(os.environ.get("RMT_BACTERIA_DIR", here))


def strain_file(bacteria: Path, species: str, strain: str) -> Path:
    path = bacteria / f"{species}_{strain}.fa.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point --bacteria (or $RMT_BACTERIA_DIR) at the directory "
            "with the four species' strain FASTA files (shared/datasets/bacteria)"
        )
    return path


def train_files(bacteria: Path) -> list[Path]:
    """The training strains' FASTA files: what pre-training reads."""
    return [strain_file(bacteria, sp, st) for sp, strains in SPECIES.items() for st in strains]


@dataclass(frozen=True)
class Window:
    name: str
    species: str
    seq: str


def _windows(
    fasta: Path, species: str, strain: str, span: str, bp: int, count: int, rng: np.random.Generator
) -> list[Window]:
    """`count` random windows of `bp` from the records of one strain, within `span`
    (`train`: the first 90 % of each record, `valid`: the last 10 %, `all`: everything)."""
    fa = open_fasta(fasta)
    records = [(name, len(rec)) for name, rec in fa.records.items() if len(rec) > 10 * bp]
    weights = np.array([n for _, n in records], dtype=float)
    out = []
    while len(out) < count:
        name, length = records[rng.choice(len(records), p=weights / weights.sum())]
        cut = int(length * (1 - VALID_FRACTION))
        lo, hi = {"train": (0, cut), "valid": (cut, length), "all": (0, length)}[span]
        start = int(rng.integers(lo, hi - bp))
        seq = clean_sequence(fa[name][start : start + bp])
        if seq.count("N") > bp // 100:
            continue
        out.append(Window(f"{species}_{strain}/{name}/{start + 1}-{start + bp}", species, seq))
    return out


def split_windows(bacteria: Path, split: str, per_species: int, bp: int, seed: int) -> list[Window]:
    """Class-balanced windows of one split (`train`, `valid` or `test`)."""
    rng = np.random.default_rng([seed, ["train", "valid", "test"].index(split)])
    out: list[Window] = []
    for species, strains in SPECIES.items():
        if split == "test":
            test = TEST_STRAINS[species]
            out += _windows(strain_file(bacteria, species, test), species, test, "all", bp,
                            per_species, rng)  # fmt: skip
            continue
        shares = np.bincount(rng.integers(len(strains), size=per_species), minlength=len(strains))
        span = "train" if split == "train" else "valid"
        for strain, n in zip(strains, shares, strict=True):
            out += _windows(strain_file(bacteria, species, strain), species, strain, span, bp,
                            int(n), rng)  # fmt: skip
    return out


def write_fasta(windows: list[Window], fasta: Path) -> None:
    """The windows as FASTA (60 bp lines), atomically."""
    with atomic_path(fasta) as tmp, open(tmp, "w") as f:
        for w in windows:
            body = "\n".join(w.seq[i : i + 60] for i in range(0, len(w.seq), 60))
            f.write(f">{w.name}\n{body}\n")


def write_labels(windows: list[Window], labels: Path) -> None:
    """The `name<TAB>label` side table of every split's windows, atomically."""
    with atomic_path(labels) as tmp, open(tmp, "w") as f:
        f.write("name\tlabel\n")
        f.writelines(f"{w.name}\t{w.species}\n" for w in windows)
