"""Random and tiled access to the usable part of one or more genomes.

A ``Genome`` turns FASTA files plus include/exclude regions into a list of usable
intervals, each with a sampling probability. Training draws random windows from them
(never from the excluded held-out region); evaluation tiles a region deterministically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyfaidx

from data.errors import FastaError
from data.fasta import clean_sequence, open_fasta
from data.regions import Region, check_region, parse_region

_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a cleaned sequence (A<->T, C<->G, N stays N)."""
    return seq.translate(_COMPLEMENT)[::-1]


@dataclass(frozen=True)
class Window:
    """A fetched stretch of genome.

    ``start``/``end`` are forward-strand 0-based half-open coordinates; ``seq`` is cleaned
    and, when ``strand == '-'``, reverse-complemented (so ``seq[0]`` is the base at
    ``end - 1`` on the forward strand).
    """

    chrom: str
    start: int
    end: int
    strand: str
    seq: str

    def __len__(self) -> int:
        return self.end - self.start


def _as_paths(fasta: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    # A single str is itself a Sequence; treat it as one path rather than one per character.
    if isinstance(fasta, (str, os.PathLike)):
        return [Path(fasta)]
    paths = [Path(p) for p in fasta]
    if not paths:
        raise FastaError("fasta=[] names no FASTA files; give at least one")
    return paths


def _subtract(interval: Region, holes: Sequence[Region]) -> list[Region]:
    """``interval`` minus ``holes`` (same record, sorted by start)."""
    pieces, cursor = [], interval.start
    for hole in holes:
        if hole.end <= cursor or hole.start >= interval.end:
            continue
        if hole.start > cursor:
            pieces.append(Region(interval.chrom, cursor, hole.start))
        cursor = max(cursor, hole.end)
    if cursor < interval.end:
        pieces.append(Region(interval.chrom, cursor, interval.end))
    return pieces


def _merge(regions: Sequence[Region]) -> list[Region]:
    """Union of regions on one record, sorted, with overlapping or touching ones merged."""
    merged: list[Region] = []
    for region in sorted(regions, key=lambda r: r.start):
        if merged and region.start <= merged[-1].end:
            last = merged.pop()
            region = Region(last.chrom, last.start, max(last.end, region.end))
        merged.append(region)
    return merged


def _check_weight(value: float, name: str) -> float:
    """A sampling weight; `name` is the parameter entry it came from (`weights[1]`)."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise FastaError(f"{name}={value}: weights must be finite and >= 0")
    return value


class Genome:
    """Usable intervals of a set of FASTA files, with weighted window sampling.

    Args:
        fasta: FASTA paths (uncompressed, bgzip or gzip); a single path is accepted too.
        weights: total sampling probability of each file (aligned with ``fasta``, relative).
            Default: proportional to each file's usable length.
        record_weights: record name -> weight, replacing that record's length-based weight
            within its file. Unlisted records weigh their share of the file's usable bp
            (all of them together at most 1), so ``{"plasmid": 1.0}`` gives a plasmid as
            much mass as the rest of its file, and ``{"chrM": 0}`` drops chrM.
        exclude: regions never sampled (the held-out evaluation region); region strings
            (``chrom:start-end`` 1-based inclusive, or a bare record name) or Regions.
        include: if given, only these regions are sampled.
        max_n_fraction: windows with a larger fraction of N are redrawn.
        cache_dir: where decompressed gzip FASTA is cached (see ``open_fasta``).
    """

    def __init__(
        self,
        fasta: str | os.PathLike | Sequence[str | os.PathLike],
        weights: Sequence[float] | None = None,
        record_weights: Mapping[str, float] | None = None,
        exclude: Sequence[str | Region] = (),
        include: Sequence[str | Region] | None = None,
        max_n_fraction: float = 0.1,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if not 0.0 <= max_n_fraction <= 1.0:
            raise FastaError(f"max_n_fraction={max_n_fraction} must be in [0, 1]")
        self.files = _as_paths(fasta)
        self.max_n_fraction = max_n_fraction
        self._cache_dir = cache_dir
        self._open()
        self.lengths: dict[str, int] = {}
        self._file_of: dict[str, int] = {}
        for index, fa in enumerate(self._fastas):
            for name, record in fa.records.items():
                if name in self._file_of:
                    first = self.files[self._file_of[name]]
                    raise FastaError(
                        f"record '{name}' is in both {first} and {self.files[index]}; record "
                        "names must be unique across the `fasta` files: drop or rename one copy"
                    )
                self._file_of[name] = index
                self.lengths[name] = len(record)
        self.intervals = self._usable(include, exclude)
        if not self.intervals:
            raise FastaError(
                f"no sequence is left to sample from {', '.join(map(str, self.files))} after "
                "`include` / `exclude`; widen `include` or shrink `exclude`"
            )
        self.interval_probs = self._probabilities(weights, dict(record_weights or {}))
        self._cumulative = np.cumsum(self.interval_probs)

    # -- file handles -------------------------------------------------------------------

    def _open(self) -> None:
        self._fastas: list[pyfaidx.Fasta] = [open_fasta(p, self._cache_dir) for p in self.files]
        self._pid = os.getpid()

    def _fasta(self, chrom: str) -> pyfaidx.Fasta:
        # A forked DataLoader worker would share the parent's file offsets; reopen per process.
        if self._pid != os.getpid():
            self._open()
        return self._fastas[self._file_of[chrom]]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fastas"], state["_pid"] = [], None
        return state

    # -- intervals and weights ----------------------------------------------------------

    def resolve_region(self, region: str | Region) -> Region:
        """Parse a region string (or check a Region) against this genome's records."""
        if isinstance(region, Region):
            return check_region(region, self.lengths)
        return parse_region(region, self.lengths)

    def _usable(
        self, include: Sequence[str | Region] | None, exclude: Sequence[str | Region]
    ) -> list[Region]:
        """Merged ``include`` (default: every record) minus ``exclude``, in record order."""
        by_record: dict[str, tuple[list[Region], list[Region]]] = {
            name: ([], []) for name in self.lengths
        }
        if include is None:
            for name, length in self.lengths.items():
                by_record[name][0].append(Region(name, 0, length))
        for position, regions in ((0, include or ()), (1, exclude)):
            # a lone region string is a Sequence of characters; accept it as a one-item list
            for region in [regions] if isinstance(regions, (str, Region)) else regions:
                resolved = self.resolve_region(region)
                by_record[resolved.chrom][position].append(resolved)
        usable = []
        for bases, holes in by_record.values():
            merged_holes = _merge(holes)
            for interval in _merge(bases):
                usable.extend(_subtract(interval, merged_holes))
        return usable

    def _probabilities(
        self, weights: Sequence[float] | None, record_weights: dict[str, float]
    ) -> np.ndarray:
        """P(interval) = P(file) * P(record | file) * len(interval) / usable bp of record."""
        unknown = sorted(set(record_weights) - set(self.lengths))
        if unknown:
            raise FastaError(
                f"record_weights names unknown records {unknown}; known records: "
                f"{', '.join(self.lengths)}"
            )
        usable_bp = dict.fromkeys(self.lengths, 0)
        for interval in self.intervals:
            usable_bp[interval.chrom] += len(interval)
        file_bp = [0] * len(self.files)
        for name, bp in usable_bp.items():
            file_bp[self._file_of[name]] += bp

        record_mass = {}
        for name, bp in usable_bp.items():
            mass = bp / max(file_bp[self._file_of[name]], 1)
            if name in record_weights:
                mass = _check_weight(record_weights[name], f"record_weights['{name}']")
                if mass > 0 and bp == 0:
                    raise FastaError(
                        f"record_weights['{name}']={mass}, but `include` / `exclude` leave "
                        "none of that record to sample; set its weight to 0 or include it"
                    )
            record_mass[name] = mass
        file_record_mass = [0.0] * len(self.files)
        for name, mass in record_mass.items():
            file_record_mass[self._file_of[name]] += mass

        if weights is None:
            file_mass = [float(bp) for bp in file_bp]
        elif len(weights) != len(self.files):
            raise FastaError(
                f"`weights` has {len(weights)} entries but `fasta` has "
                f"{len(self.files)} files; give one weight per file"
            )
        else:
            file_mass = [_check_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
        for mass, records, path in zip(file_mass, file_record_mass, self.files, strict=True):
            if mass > 0 and records == 0:
                raise FastaError(
                    f"{path} has weight {mass} but nothing in it can be sampled (no usable "
                    "sequence after `include` / `exclude`, or all its record_weights "
                    "are 0); set its weight to 0 or give it usable sequence"
                )
        if sum(file_mass) <= 0:
            raise FastaError(
                "all sampling weights are zero (`weights` / `record_weights`); give at "
                "least one file with usable sequence a positive weight"
            )
        probs = np.zeros(len(self.intervals))
        for i, interval in enumerate(self.intervals):
            f = self._file_of[interval.chrom]
            if file_mass[f] > 0:
                record_share = record_mass[interval.chrom] / file_record_mass[f]
                probs[i] = file_mass[f] * record_share * len(interval) / usable_bp[interval.chrom]
        return probs / probs.sum()

    # -- access -------------------------------------------------------------------------

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Cleaned sequence of ``chrom[start:end]`` (0-based half-open), RC'd for ``'-'``."""
        if strand not in ("+", "-"):
            raise FastaError(f"strand={strand!r}; use '+' or '-'")
        region = check_region(Region(chrom, start, end), self.lengths)
        seq = clean_sequence(self._fasta(chrom)[chrom][region.start : region.end])
        return reverse_complement(seq) if strand == "-" else seq

    def sample_window(
        self,
        length: int,
        rng: np.random.Generator,
        rc_prob: float = 0.5,
        max_tries: int = 100,
    ) -> Window:
        """Draw a window of ``length`` bp (shorter only if its interval is shorter).

        The interval is chosen by weight and the start uniformly so the window fits; windows
        with more than ``max_n_fraction`` N are redrawn. The strand is '-' with probability
        ``rc_prob``. Deterministic given the state of ``rng``.
        """
        if length < 1:
            raise FastaError(f"window length must be >= 1 bp, got {length}")
        for _ in range(max_tries):
            index = min(
                int(np.searchsorted(self._cumulative, rng.random(), side="right")),
                len(self.intervals) - 1,
            )
            interval = self.intervals[index]
            start = interval.start
            if len(interval) > length:
                start += int(rng.integers(0, len(interval) - length + 1))
            end = min(start + length, interval.end)
            seq = self.fetch(interval.chrom, start, end)
            if seq.count("N") <= self.max_n_fraction * len(seq):
                strand = "-" if rng.random() < rc_prob else "+"
                if strand == "-":
                    seq = reverse_complement(seq)
                return Window(interval.chrom, start, end, strand, seq)
        raise FastaError(
            f"no {length:,} bp window with at most {self.max_n_fraction:.0%} N found in "
            f"{max_tries} tries in {', '.join(map(str, self.files))}; the usable sequence is "
            "mostly N. Raise `max_n_fraction` or restrict sampling with `include`"
        )

    def tile(self, region: Region | str, length: int) -> Iterator[Window]:
        """Consecutive non-overlapping '+' windows of ``length`` bp covering ``region`` in
        order (the last may be shorter). Deterministic, for evaluation."""
        if length < 1:
            raise FastaError(f"tile length must be >= 1 bp, got {length}")
        region = self.resolve_region(region)
        for start in range(region.start, region.end, length):
            end = min(start + length, region.end)
            yield Window(region.chrom, start, end, "+", self.fetch(region.chrom, start, end))

    def __repr__(self) -> str:
        usable = sum(len(i) for i in self.intervals)
        return (
            f"Genome({len(self.files)} files, {len(self.lengths)} records, "
            f"{usable:,} usable bp in {len(self.intervals)} intervals)"
        )
