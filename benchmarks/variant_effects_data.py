"""The variant-effect benchmark's data: called genes, every SNV of their CDS classified,
VCFs, and sequences with a region written twice (the long-range check).

Genes come from pyrodigal (Prodigal's gene model trained on the genome itself, bacterial
code 11). Every base of a sampled CDS gets its three SNVs, classified from the codon they
change, read on the gene's strand with Biopython's table 11:

- `synonymous` / `missense` / `nonsense`: an inner codon keeps its amino acid, changes it,
  or becomes a stop;
- `start_lost` / `start_retained`: the start codon becomes a codon table 11 does not
  start at, or another start codon (it still starts with Met);
- `stop_lost` / `stop_retained`: the stop codon becomes a sense codon, or another stop.

The VCFs have one record per position with its three ALTs (rmt-score scores each ALT on
its own and shares the REF's row), sorted as the FASTA's records and by position.

The long-range check's sequences (`duplicates`) are stretches of a real genome in which
the bases some distance before a region are overwritten by a copy of it: the region
itself (the second copy) stays at its place among its real flanks, and the stretch as it
is serves as the control, with the same names, lengths and coordinates, so an SNV of the
second copy has the same REF and the same position in both.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyrodigal
from Bio.Data import CodonTable
from Bio.Seq import Seq

from benchmarks.species_data import Window, write_fasta
from data import reverse_complement
from data.atomic import atomic_path
from rmt import load_model

TABLE = 11  # bacterial, archaeal and plant plastid code
CODE = CodonTable.unambiguous_dna_by_id[TABLE]
BASES = "ACGT"
SAMPLE_BP = 100_000  # genome read to measure the tokenizer's bp per token


@dataclass(frozen=True)
class Gene:
    """A called gene: CDS (start codon to stop codon, both included) at forward [start, end)."""

    chrom: str
    start: int
    end: int
    strand: int  # +1 or -1

    @property
    def name(self) -> str:
        return f"{self.chrom}:{self.start + 1}-{self.end}({'+' if self.strand > 0 else '-'})"

    def cds(self, seq: str) -> str:
        """The CDS 5' to 3' on the gene's strand."""
        forward = seq[self.start : self.end]
        return forward if self.strand > 0 else reverse_complement(forward)


@dataclass(frozen=True)
class CodingSnv:
    """One SNV of a CDS, on the forward strand (VCF) and as the gene reads it."""

    chrom: str
    pos: int  # 1-based, forward
    ref: str  # forward strand
    alt: str
    gene: str
    strand: str
    cds_pos: int  # 0-based along the CDS
    ref_codon: str
    alt_codon: str
    ref_aa: str
    alt_aa: str
    effect: str


@dataclass(frozen=True)
class Duplicate:
    """A stretch of genome with `length` bp at `first` replaced by the `length` bp at
    `second` (a second copy `second - first` bp later); `control` is the stretch as it is."""

    name: str
    source: str  # chrom:start-end of the stretch in the genome (1-based, inclusive)
    sequence: str
    control: str
    first: int  # 0-based starts in the stretch
    second: int
    length: int


@dataclass(frozen=True)
class CopySnv:
    """An SNV in a duplicate's second copy (the same REF in the duplicate and its control)."""

    chrom: str
    pos: int  # 1-based
    ref: str
    alt: str
    offset: int  # 0-based in the copy


def call_genes(records: dict[str, str], meta: bool = False) -> list[Gene]:
    """Complete genes (neither end runs off a record) of a genome's records, by pyrodigal:
    trained on the records themselves, or with its metagenomic models (`meta`: for a
    sequence too short to train on, under 20 kbp)."""
    finder = pyrodigal.GeneFinder(meta=meta)
    if not meta:
        finder.train(*records.values(), translation_table=TABLE)
    out = []
    for chrom, seq in records.items():
        for g in finder.find_genes(seq):
            if not (g.partial_begin or g.partial_end):
                out.append(Gene(chrom, g.begin - 1, g.end, g.strand))
    return out


def sample_genes(
    genes: list[Gene], records: dict[str, str], count: int, margin: int, max_bp: int, seed: int
) -> list[Gene]:
    """`count` genes (seeded) of at most `max_bp`, at least `margin` bp from either record
    end (so that the context on both strands exists), none overlapping another; in genome
    order."""
    rng = np.random.default_rng(seed)
    fits = [g for g in genes
            if g.end - g.start <= max_bp and margin <= g.start
            and g.end <= len(records[g.chrom]) - margin]  # fmt: skip
    picked: list[Gene] = []
    for i in rng.permutation(len(fits)):
        g = fits[i]
        if all(g.chrom != p.chrom or g.end <= p.start or p.end <= g.start for p in picked):
            picked.append(g)
        if len(picked) == count:
            break
    order = {name: i for i, name in enumerate(records)}
    return sorted(picked, key=lambda g: (order[g.chrom], g.start))


def codon_effect(ref_codon: str, alt_codon: str, index: int, last: int) -> str:
    """The class of changing codon `index` (of `last + 1`) from `ref_codon` to `alt_codon`."""
    if index == 0:
        return "start_retained" if alt_codon in CODE.start_codons else "start_lost"
    stop = alt_codon in CODE.stop_codons
    if index == last:
        return "stop_retained" if stop else "stop_lost"
    if stop:
        return "nonsense"
    same = translate(ref_codon) == translate(alt_codon)
    return "synonymous" if same else "missense"


@functools.cache
def translate(codon: str) -> str:
    return str(Seq(codon).translate(table=TABLE))


def gene_snvs(gene: Gene, seq: str) -> list[CodingSnv]:
    """Every SNV of the gene's CDS (3 per base), classified, in CDS order."""
    cds = gene.cds(seq)
    if len(cds) % 3 or cds[:3] not in CODE.start_codons or cds[-3:] not in CODE.stop_codons:
        raise ValueError(f"gene {gene.name} is not a CDS on its record: {cds[:3]}...{cds[-3:]}")
    last = len(cds) // 3 - 1
    strand = "+" if gene.strand > 0 else "-"
    out = []
    for i, base in enumerate(cds):
        codon, at = i // 3, i % 3
        ref_codon = cds[3 * codon : 3 * codon + 3]
        forward = gene.start + i if gene.strand > 0 else gene.end - 1 - i
        for alt in BASES:
            if alt == base:
                continue
            alt_codon = ref_codon[:at] + alt + ref_codon[at + 1 :]
            ref, alt_f = (base, alt) if gene.strand > 0 else map(reverse_complement, (base, alt))
            out.append(CodingSnv(
                gene.chrom, forward + 1, ref, alt_f, gene.name, strand, i, ref_codon, alt_codon,
                translate(ref_codon), translate(alt_codon),
                codon_effect(ref_codon, alt_codon, codon, last),
            ))  # fmt: skip
    return out


def write_vcf(snvs: Iterable, contigs: dict[str, int], path: Path) -> None:
    """A VCF of SNVs (anything with chrom, pos, ref, alt): one record per position with its
    ALTs, sorted in `contigs` order (the FASTA's) and by position, atomically."""
    sites: dict[tuple[str, int], tuple[str, set[str]]] = {}
    for s in snvs:
        ref, alts = sites.setdefault((s.chrom, s.pos), (s.ref, set()))
        if ref != s.ref:
            raise ValueError(f"two REFs at {s.chrom}:{s.pos}: {ref} and {s.ref}")
        alts.add(s.alt)
    order = {name: i for i, name in enumerate(contigs)}
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        f.writelines(f"##contig=<ID={name},length={n}>\n" for name, n in contigs.items())
        f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for (chrom, pos), (ref, alts) in sorted(
            sites.items(), key=lambda k: (order[k[0][0]], k[0][1])
        ):
            f.write(f"{chrom}\t{pos}\t.\t{ref}\t{','.join(sorted(alts))}\t.\t.\t.\n")


def write_table(rows: list[dict], path: Path) -> None:
    """Rows as a TSV with the first row's keys as the header, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@functools.cache
def segment_bp(checkpoint: Path, sample: str) -> int:
    """One segment's worth of bp: segment tokens x the model's tokenizer's bp per token on
    `sample` (rmt-score's own measure of context.block)."""
    runner, tokenizer = load_model(checkpoint)
    return max(1, round(runner.segment_tokens * tokenizer.bp_per_token(sample)))


def duplicates(
    records: dict[str, str], count: int, length: int, distance: int, before: int, after: int,
    seed: int,
) -> list[Duplicate]:  # fmt: skip
    """`count` stretches (seeded, without N, none overlapping) of `before` + `distance` +
    `length` + `after` bp; in each, the `length` bp at `before` are replaced by the
    `length` bp at `before + distance`, the second copy, which stays where it is, among
    its real flanks."""
    if distance < length:
        raise ValueError(f"the copies overlap: distance {distance} < length {length} bp")
    rng = np.random.default_rng(seed)
    span = before + distance + length + after
    names = [n for n, s in records.items() if len(s) > 10 * span]
    out: list[Duplicate] = []
    taken: list[tuple[str, int]] = []
    while len(out) < count:
        chrom = names[int(rng.integers(len(names)))]
        at = int(rng.integers(0, len(records[chrom]) - span))
        stretch = records[chrom][at : at + span]
        if "N" in stretch or any(c == chrom and abs(a - at) < span for c, a in taken):
            continue
        taken.append((chrom, at))
        second = before + distance
        copy = stretch[second : second + length]
        built = stretch[:before] + copy + stretch[before + length :]
        source = f"{chrom}:{at + 1}-{at + span}"
        out.append(Duplicate(f"dup{len(out)}", source, built, stretch, before, second, length))
    return out


def copy_snvs(dups: list[Duplicate], per_copy: int, seed: int) -> list[CopySnv]:
    """`per_copy` SNVs (seeded positions and ALTs) in each duplicate's second copy."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for d in dups:
        for offset in sorted(rng.choice(d.length, size=per_copy, replace=False).tolist()):
            ref = d.sequence[d.second + offset]
            alt = [b for b in BASES if b != ref][int(rng.integers(3))]
            out.append(CopySnv(d.name, d.second + offset + 1, ref, alt, offset))
    return out


def write_duplicates(dups: list[Duplicate], snvs: list[CopySnv], source: str, out: Path) -> None:
    """dup.fa, control.fa (the same names and lengths), snvs.vcf, snvs.tsv, regions.tsv."""
    write_fasta([Window(d.name, source, d.sequence) for d in dups], out / "dup.fa")
    write_fasta([Window(d.name, source, d.control) for d in dups], out / "control.fa")
    write_table([asdict(s) for s in snvs], out / "snvs.tsv")
    where = [{k: v for k, v in asdict(d).items() if k not in ("sequence", "control")}
             for d in dups]  # fmt: skip
    write_table(where, out / "regions.tsv")
    write_vcf(snvs, {d.name: len(d.sequence) for d in dups}, out / "snvs.vcf")
