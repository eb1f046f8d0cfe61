"""The output directory: its identity and resume state, the spooled scores, the final files.

The directory is claimed as rmt-infer claims its own (``rmt.infer.outputs.prepare_output``:
the same identity resumes, another is refused unless ``overwrite=true``); the identity adds
the VCF's and a contig-map file's. Scored chunks are spooled per rank and run
(``rmt.score.spool``); ``state.pt`` marks the directory finished.

At the end ``scores.tsv`` (one row per ALT, in VCF order) and ``scored.vcf`` are written,
each to a temp name and renamed. ``scored.vcf`` is the input's bytes with one header line
added before ``#CHROM`` and ``KEY=v1,v2,...`` (Number=A: ``.`` for an ALT not scored)
appended to the INFO of every record with a scored ALT; nothing else changes. A bgzip
input gives ``scored.vcf.gz`` (bgzip through pysam), and a tabix index when it had one.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pysam
import torch

from data.atomic import atomic_path
from rmt.infer.outputs import (
    STATE,
    file_identity,
    prepare_output,
    remove_stale_temps,
    run_identity,
)
from rmt.score.options import ScoreOptions
from rmt.score.vcf import SCORED, Checked

VCF, TSV = "scored.vcf", "scores.tsv"
FINAL = (VCF, f"{VCF}.gz", f"{VCF}.gz.tbi", f"{VCF}.gz.csi", TSV)
TSV_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "llr", "ref_ll", "alt_ll", "status")
GZIP_MAGIC = b"\x1f\x8b"


def score_identity(options: ScoreOptions, checkpoint: Path, fasta: list[str]) -> dict:
    """What the outputs depend on: options (less neutral keys), model, FASTA, VCF, map file."""
    identity = run_identity(options, checkpoint, fasta)
    identity["variants"] = file_identity(Path(options.variants))
    if isinstance(options.contig_map, str):
        identity["contig_map_file"] = file_identity(Path(options.contig_map))
    return identity


def claim(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """Claim ``out`` (under its lock) and return its resume state, None to start afresh.

    Final files of a run that is not done are removed: they are another run's.
    """
    remove_stale_temps(out)
    for pattern in FINAL:
        for path in out.glob(f".{pattern}.*.tmp"):
            path.unlink()
    prepare_output(out, identity, overwrite)
    state = torch.load(out / STATE, weights_only=True) if (out / STATE).exists() else None
    if state is None or not state.get("done"):
        for name in FINAL:
            (out / name).unlink(missing_ok=True)
    return state


def allele_scores(rows: np.ndarray) -> dict[tuple[int, int], float]:
    """(record, allele) -> log-likelihood, the mean over the strands it was scored on."""
    by_strand: dict[tuple[int, int], dict[int, float]] = {}
    for record, allele, strand, ll in rows.tolist():
        by_strand.setdefault((record, allele), {})[strand] = ll
    return {key: sum(lls.values()) / len(lls) for key, lls in by_strand.items()}


def alt_results(c: Checked, lls: dict) -> list[tuple[str, float | None, float | None]]:
    """Each ALT's (status, ref_ll, alt_ll); the lls None when not scored."""
    index = c.record.index
    return [
        (s, lls[(index, 0)], lls[(index, i)]) if s == SCORED else (s, None, None)
        for i, s in enumerate(c.statuses, 1)
    ]


def _number(value: float | None, digits: int, missing: str) -> str:
    return missing if value is None else f"{value:.{digits}f}"


def write_tsv(path: Path, checked: list[Checked], lls: dict) -> None:
    """scores.tsv: one row per ALT (one for a record without ALT), in VCF order."""
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        handle.write("\t".join(TSV_COLUMNS) + "\n")
        for c in checked:
            r = c.record
            results = alt_results(c, lls)
            for alt, (status, ref_ll, alt_ll) in zip(r.alts or (".",), results, strict=True):
                llr = None if ref_ll is None else alt_ll - ref_ll
                values = [_number(v, 6, "NA") for v in (llr, ref_ll, alt_ll)]
                fields = [r.chrom, str(r.pos), r.id, r.ref, alt, *values, status]
                handle.write("\t".join(fields) + "\n")


def info_values(checked: list[Checked], lls: dict) -> dict[int, str]:
    """Record index -> the INFO value (Number=A), for records with a scored ALT."""
    values = {}
    for c in checked:
        if c.scored:
            llrs = [None if a is None else b - a for _, a, b in alt_results(c, lls)]
            values[c.record.index] = ",".join(_number(v, 4, ".") for v in llrs)
    return values


def is_compressed(path: Path) -> bool:
    """gzip or bgzip, by the magic bytes (not the name)."""
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open_bytes(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_compressed(path) else path.open("rb")


def _with_info(line: bytes, entry: bytes) -> bytes:
    body = line.rstrip(b"\r\n")
    fields = body.split(b"\t")
    fields[7] = entry if fields[7] == b"." else fields[7] + b";" + entry
    return b"\t".join(fields) + line[len(body) :]


def annotated_lines(
    source: Path, header_line: str, key: str, values: dict[int, str]
) -> Iterator[bytes]:
    """The VCF's lines as bytes, the header line added and INFO extended where scored."""
    index = 0
    with _open_bytes(source) as handle:
        for line in handle:
            if line.startswith(b"#CHROM"):  # the new line ends as the input's lines do
                yield header_line.encode() + line[len(line.rstrip(b"\r\n")) :]
            if line.startswith(b"#") or not line.strip():
                yield line
                continue
            value = values.get(index)
            index += 1
            yield line if value is None else _with_info(line, f"{key}={value}".encode())


def write_vcf(out: Path, source: Path, header_line: str, key: str, values: dict) -> list[str]:
    """scored.vcf (or .vcf.gz, indexed as the input is); the names written."""
    if not is_compressed(source):
        with atomic_path(out / VCF) as tmp, tmp.open("wb") as handle:
            handle.writelines(annotated_lines(source, header_line, key, values))
        return [VCF]
    gz = out / f"{VCF}.gz"
    with atomic_path(gz) as tmp:
        plain = tmp.with_name(tmp.name + ".plain.tmp")
        try:
            with plain.open("wb") as handle:
                handle.writelines(annotated_lines(source, header_line, key, values))
            pysam.tabix_compress(str(plain), str(tmp), force=True)
        finally:
            plain.unlink(missing_ok=True)
    written = [gz.name]
    for suffix, csi in ((".tbi", False), (".csi", True)):
        if Path(f"{source}{suffix}").exists():
            with atomic_path(f"{gz}{suffix}") as tmp:
                pysam.tabix_index(str(gz), preset="vcf", index=str(tmp), force=True, csi=csi)
            written.append(gz.name + suffix)
    return written
