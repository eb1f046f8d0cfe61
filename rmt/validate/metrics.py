"""How real a DNA sequence looks: each metric a pure function of its records (strings).

A sequence is a list of records, cleaned (upper case, ambiguity codes as N). No k-mer,
window, run or gene spans two records, and N breaks k-mers and runs, so a FASTA of many
short generations is judged as many short sequences, not one chimera.

Length matters for most of these numbers (a short sample's k-mer spectrum is noisy, its
longest run shorter, its chance repeats fewer), so ``rmt.validate.report`` computes them
for samples of equal length: the generated sequence, a Markov sample and a stretch of the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyrodigal
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from rmt.markov import encode, join, kmer_codes, kmer_spectra

G, C = 2, 1  # codes of rmt.markov.encode (A=0, C=1, G=2, T=3)


def total_bp(records: Sequence[str]) -> int:
    return sum(len(r) for r in records)


def n_fraction(records: Sequence[str]) -> float:
    """Share of the records' characters that are not A, C, G or T."""
    other = sum(int((encode(r) < 0).sum()) for r in records)
    return other / max(1, total_bp(records))


def reverse_complement_codes(k: int) -> np.ndarray:
    """For every k-mer code, the code of its reverse complement (complement of x is 3 - x)."""
    codes = np.arange(4**k)
    rc = np.zeros_like(codes)
    for _ in range(k):
        rc = rc * 4 + (3 - codes % 4)
        codes //= 4
    return rc


def canonical(counts: np.ndarray, k: int) -> np.ndarray:
    """k-mer counts with each k-mer and its reverse complement pooled (one entry per pair)."""
    index = np.arange(4**k)
    lower = np.minimum(index, reverse_complement_codes(k))
    pooled = np.bincount(lower, weights=counts, minlength=4**k)
    return pooled[np.unique(lower)]


def spectra(
    records: Sequence[str], longest: int, canonical_kmers: bool = False
) -> list[np.ndarray]:
    """k-mer count vectors for k = 1..longest (pooled with reverse complements if asked)."""
    counts = kmer_spectra(records, longest)
    if canonical_kmers:
        counts = [canonical(c, k) for k, c in enumerate(counts, 1)]
    return counts


def jensen_shannon_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits of two count vectors (normalised here): 0 for
    identical spectra, 1 for spectra with no k-mer in common."""
    if p.sum() == 0 or q.sum() == 0:
        raise ValueError("an empty k-mer spectrum has no distribution to compare")
    return float(jensenshannon(p, q, base=2) ** 2)  # scipy gives the distance, its root


def halves(records: Sequence[str]) -> tuple[list[str], list[str]]:
    """The records cut in two at half their total length (the middle record is split)."""
    middle, first, second, seen = total_bp(records) // 2, [], [], 0
    for record in records:
        cut = min(max(middle - seen, 0), len(record))
        first += [record[:cut]] if cut else []
        second += [record[cut:]] if cut < len(record) else []
        seen += len(record)
    return first, second


def reference_slices(
    records: Sequence[str], lengths: Sequence[int], rng: np.random.Generator
) -> list[str]:
    """Random stretches of ``records`` with the given lengths (a length longer than the
    record drawn comes as several stretches); records drawn in proportion to length."""
    sizes = np.array([len(r) for r in records], dtype=float)
    out = []
    for length in lengths:
        while length > 0:
            record = records[rng.choice(len(records), p=sizes / sizes.sum())]
            take = min(length, len(record))
            start = int(rng.integers(0, len(record) - take + 1))
            out.append(record[start : start + take])
            length -= take
    return out


def gc_windows(records: Sequence[str], window: int) -> tuple[np.ndarray, np.ndarray]:
    """GC content (G+C)/(A+C+G+T) and GC skew (G-C)/(G+C) of non-overlapping windows.

    A record's last, partial window is dropped, as is a window less than half A/C/G/T;
    a window without G or C has no skew and is left out of the second array.
    """
    gc, skew = [], []
    for record in records:
        rows = len(record) // window
        codes = encode(record[: rows * window]).reshape(rows, window)
        g, c = (codes == G).sum(axis=1), (codes == C).sum(axis=1)
        acgt = (codes >= 0).sum(axis=1)
        keep = acgt >= window / 2
        gc.append((g + c)[keep] / acgt[keep])
        keep &= g + c > 0
        skew.append((g - c)[keep] / (g + c)[keep])
    return np.concatenate(gc), np.concatenate(skew)


def ks(values: np.ndarray, reference: np.ndarray) -> dict:
    """Two-sample Kolmogorov-Smirnov statistic (the largest gap between the two empirical
    CDFs, 0..1) and its p-value; None for both when either sample is empty."""
    if not (len(values) and len(reference)):
        return {"ks": None, "ks_pvalue": None}
    test = ks_2samp(values, reference)
    return {"ks": float(test.statistic), "ks_pvalue": float(test.pvalue)}


def compare(values: np.ndarray, reference: np.ndarray) -> dict:
    """Count, mean and sd of ``values``, and their KS statistic against ``reference``."""
    return {
        "n": len(values),
        "mean": float(values.mean()) if len(values) else None,
        "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
        **ks(values, reference),
    }


def run_lengths(records: Sequence[str]) -> np.ndarray:
    """Lengths of the runs of one repeated base (A, C, G or T; N ends a run)."""
    codes = join(records)
    starts = np.flatnonzero(np.diff(codes, prepend=-2) != 0)
    lengths = np.diff(starts, append=len(codes))
    return lengths[codes[starts] >= 0]


def homopolymers(records: Sequence[str], min_run: int = 5) -> dict:
    """Share of the A/C/G/T bases in runs of at least ``min_run``, longest and mean run."""
    lengths = run_lengths(records)
    if not len(lengths):
        return {"fraction_in_runs": None, "longest_run": 0, "mean_run": None, "min_run": min_run}
    return {
        "fraction_in_runs": float(lengths[lengths >= min_run].sum() / lengths.sum()),
        "longest_run": int(lengths.max()),
        "mean_run": float(lengths.mean()),
        "min_run": min_run,
    }


def repeated_kmers(records: Sequence[str], k: int = 12) -> dict:
    """Exact repeats: the share of distinct k-mers seen more than once, and of k-mer
    positions whose k-mer occurs elsewhere too (forward strand). Chance repeats grow with
    length, so compare only samples of the same length."""
    _, counts = np.unique(kmer_codes(records, k), return_counts=True)
    if not len(counts):
        return {"k": k, "distinct_repeated": None, "positions_repeated": None}
    repeated = counts > 1
    return {
        "k": k,
        "distinct_repeated": float(repeated.mean()),
        "positions_repeated": float(counts[repeated].sum() / counts.sum()),
    }


class Gene(NamedTuple):
    """A called gene: record index, 0-based half-open span, both ends inside the record."""

    record: int
    start: int
    end: int
    complete: bool


def find_genes(records: Sequence[str]) -> list[Gene]:
    """Genes by pyrodigal's metagenomic models (no training: a generated sequence is too
    short or too odd to train on, so the reference is called the same way)."""
    finder = pyrodigal.GeneFinder(meta=True)
    return [
        Gene(i, gene.begin - 1, gene.end, not (gene.partial_begin or gene.partial_end))
        for i, record in enumerate(records)
        for gene in finder.find_genes(record)
    ]


def gene_lengths(genes: list[Gene]) -> np.ndarray:
    """Lengths (bp) of the complete genes: a partial one is cut by its record's end."""
    return np.array([g.end - g.start for g in genes if g.complete], dtype=int)


def coding_density(records: Sequence[str], genes: list[Gene]) -> float:
    """Share of bases inside at least one gene, either strand."""
    covered = [np.zeros(len(r), dtype=bool) for r in records]
    for gene in genes:
        covered[gene.record][gene.start : gene.end] = True
    return float(sum(c.sum() for c in covered) / max(1, total_bp(records)))


def gene_summary(records: Sequence[str], genes: list[Gene], reference: np.ndarray) -> dict:
    """Genes per kb, coding density and the complete genes' lengths (median, mean, KS
    against the ``reference`` lengths)."""
    lengths = gene_lengths(genes)
    return {
        "genes": len(genes),
        "complete_genes": len(lengths),
        "genes_per_kb": 1000 * len(genes) / max(1, total_bp(records)),
        "coding_density": coding_density(records, genes),
        "median_length": float(np.median(lengths)) if len(lengths) else None,
        "mean_length": float(lengths.mean()) if len(lengths) else None,
        **ks(lengths, reference),
    }
