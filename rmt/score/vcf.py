"""Reading the variants (pysam: plain VCF, bgzip with or without a tabix index) and checking
them against the reference, record by record and ALT by ALT.

Every ALT gets a status: ``scored``, or why it is not scored: ``symbolic`` (``<DEL>``,
breakends, ``*``), ``no_alt`` (ALT ``.``: one row for the record), ``past_end`` (REF runs
past the end of its FASTA record), ``bad_allele`` (a base other than A, C, G, T, N),
``too_long`` (an allele longer than ``context.flank``: "short" indels are those whose two
alleles both fit in the flank), ``ref_mismatch`` (REF differs from the FASTA there; with
``ref_mismatch=fail``, the default, the run stops instead, naming the first few).

VCF contig names are mapped to FASTA record names by ``contig_map``; a name that is in
neither is an error naming it, the FASTA's records, and the map that would fix it when
one FASTA name is the obvious match (``NC_007795`` for ``NC_007795.1``, which is also
what a ``gi|49175990|ref|NC_007795.1|`` header is read as; ``1`` for ``chr1``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pysam

from data import Genome

SCORED = "scored"
SKIPPED = ("symbolic", "no_alt", "past_end", "bad_allele", "too_long", "ref_mismatch")
BASES = re.compile(r"^[ACGTN]+$")
SHOWN = 3  # REF mismatches named in the message
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One VCF record as read: its place in the file, and what the TSV repeats of it."""

    index: int
    chrom: str  # the VCF's name
    pos: int  # 1-based, as in the VCF
    id: str
    ref: str
    alts: tuple[str, ...]  # () for ALT '.'

    @property
    def start(self) -> int:
        return self.pos - 1

    @property
    def where(self) -> str:
        return f"record {self.index + 1} ({self.chrom}:{self.pos} {self.ref}>{','.join(self.alts)})"


@dataclass(frozen=True)
class Checked:
    """A record checked against the reference: its FASTA record and each ALT's status."""

    record: Record
    contig: str
    statuses: tuple[str, ...]  # one per ALT; ("no_alt",) for a record without one

    @property
    def scored(self) -> bool:
        return SCORED in self.statuses


@contextlib.contextmanager
def _quiet_htslib() -> Iterator[None]:
    """htslib's warnings (a contig or INFO key missing from the header) on stderr say
    nothing a user must act on here: the checks below report what matters."""
    before = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(before)


def read_records(path: str | Path) -> list[Record]:
    """Every record of the VCF at ``path``, in file order (a bad file: one line naming it)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"variants={path}: no such file; give a VCF (.vcf or .vcf.gz)")
    try:
        with _quiet_htslib(), pysam.VariantFile(str(path)) as vcf:
            kind = vcf.format
            records = [_record(i, r) for i, r in enumerate(vcf)] if kind == "VCF" else []
    except (OSError, ValueError) as err:
        raise ValueError(f"variants={path} is not a readable VCF ({err}); check the file") from err
    if kind != "VCF":  # the annotated copy is the input's text with a field added
        raise ValueError(f"variants={path} is {kind}, not a text VCF: convert it "
                         "(bcftools view -Oz -o FILE.vcf.gz) and score that")  # fmt: skip
    return records


def _record(index: int, r: pysam.VariantRecord) -> Record:
    return Record(index, r.chrom, r.pos, r.id or ".", r.ref.upper(), tuple(r.alts or ()))


def header_info_ids(path: str | Path) -> set[str]:
    """The INFO keys the VCF's header declares."""
    with _quiet_htslib(), pysam.VariantFile(str(path)) as vcf:
        return set(vcf.header.info)


def read_contig_map(value: str | Mapping | None) -> dict[str, str]:
    """``contig_map``: a {VCF name: FASTA name} mapping, or a 2-column TSV file of them."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"contig_map={value}: no such file; give a 2-column TSV or a "
                         "{VCF_NAME: FASTA_NAME} map")  # fmt: skip
    mapping = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise ValueError(
                    f"contig_map={path}, line {line}: {len(row)} columns; each line is a VCF "
                    "contig name, a tab, and its FASTA record name"
                )
            mapping[row[0]] = row[1]
    return mapping


def obvious_match(name: str, fasta_names: list[str]) -> str | None:
    """The one FASTA name that is clearly ``name``: the same accession with or without its
    version (NC_007795 / NC_007795.1), or with or without a ``chr`` prefix."""

    def stems(n: str) -> set[str]:
        bare = n.removeprefix("chr")
        return {n, n.split(".")[0], bare, bare.split(".")[0]}

    found = [f for f in fasta_names if stems(f) & stems(name)]
    return found[0] if len(found) == 1 else None


def _missing_contigs(vcf: Path, missing: list[Record], fasta_names: list[str]) -> ValueError:
    names = list(dict.fromkeys(r.chrom for r in missing))
    shown = ", ".join(fasta_names[:10]) + (", ..." if len(fasta_names) > 10 else "")
    suggested = {n: m for n in names if (m := obvious_match(n, fasta_names))}
    fix = "map them with contig_map='{VCF_NAME: FASTA_NAME}' (or contig_map=FILE.tsv)"
    if suggested:
        pairs = ", ".join(f"{n}: {m}" for n, m in suggested.items())
        fix = f"they look like the same sequences: add contig_map='{{{pairs}}}'"
    return ValueError(
        f"{vcf}: contig(s) {', '.join(repr(n) for n in names)} (first at {missing[0].where}) "
        f"are not records of the FASTA (it has {shown}); {fix}, or give the FASTA that holds "
        "them as data.fasta"
    )


def _alt_status(alt: str, ref_len: int, flank: int) -> str:
    if alt == "*" or alt.startswith("<") or "[" in alt or "]" in alt or "." in alt:
        return "symbolic"
    if not BASES.match(alt.upper()):
        return "bad_allele"
    return "too_long" if max(len(alt), ref_len) > flank else SCORED


def _statuses(record: Record, genome: Genome, contig: str, flank: int) -> tuple[str, ...]:
    """Each ALT's status; record-level reasons replace every ALT's that is not symbolic."""
    per_alt = [_alt_status(a, len(record.ref), flank) for a in record.alts] or ["no_alt"]
    candidates = [s for s in per_alt if s not in ("symbolic", "no_alt")]
    if not candidates:
        return tuple(per_alt)
    reason = None
    if record.start + len(record.ref) > genome.lengths[contig]:
        reason = "past_end"
    elif not BASES.match(record.ref):
        reason = "bad_allele"
    elif genome.fetch(contig, record.start, record.start + len(record.ref)) != record.ref:
        reason = "ref_mismatch"
    if reason is None:
        return tuple(per_alt)
    return tuple(s if s in ("symbolic", "no_alt") else reason for s in per_alt)


def check_records(
    vcf: str | Path,
    records: list[Record],
    genome: Genome,
    contig_map: Mapping[str, str],
    flank: int,
    ref_mismatch: str,
) -> list[Checked]:
    """Each record's FASTA record and ALT statuses; a contig the FASTA lacks, or a REF that
    differs from it with ``ref_mismatch=fail``, is a ValueError naming the file and record."""
    vcf = Path(vcf)
    names = list(genome.lengths)
    contigs = [contig_map.get(r.chrom, r.chrom) for r in records]
    missing = [r for r, c in zip(records, contigs, strict=True) if c not in genome.lengths]
    if missing:
        raise _missing_contigs(vcf, missing, names)
    checked = [
        Checked(r, c, _statuses(r, genome, c, flank)) for r, c in zip(records, contigs, strict=True)
    ]
    mismatched = [c for c in checked if "ref_mismatch" in c.statuses]
    if mismatched:
        _report_mismatches(vcf, mismatched, genome, ref_mismatch)
    return checked


def _report_mismatches(
    vcf: Path, mismatched: list[Checked], genome: Genome, ref_mismatch: str
) -> None:
    def one(c: Checked) -> str:
        r = c.record
        found = genome.fetch(c.contig, r.start, r.start + len(r.ref))
        return f"{r.chrom}:{r.pos} REF {r.ref} but the FASTA has {found}"

    first = "; ".join(one(c) for c in mismatched[:SHOWN])
    count = f"{len(mismatched):,} record(s) whose REF does not match the FASTA ({first}"
    count += ", ...)" if len(mismatched) > SHOWN else ")"
    if ref_mismatch == "fail":
        raise ValueError(
            f"{vcf}: {count}; the VCF was called against another reference build or "
            "contig: give that FASTA as data.fasta, or skip those records with "
            "ref_mismatch=skip"
        )
    log.warning("%s: skipping %s", vcf, count)


def status_counts(checked: list[Checked]) -> dict[str, int]:
    """ALTs by status (a record without ALT counts once, as no_alt)."""
    counts = Counter(s for c in checked for s in c.statuses)
    return {s: counts.get(s, 0) for s in (SCORED, *SKIPPED)}
