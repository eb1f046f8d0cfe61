"""Genomic intervals and samtools-style region strings.

Internally every interval is 0-based half-open (Python slicing); on the command line and in
configs people write samtools regions, 1-based inclusive (``chr1:1,001-2,000``). Keeping
the conversion in one place avoids off-by-one errors everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from data.errors import FastaError

# "<chrom>:<start>-<end>" where the numbers may contain thousands separators. The greedy
# chrom group makes the split happen at the LAST ':', so names such as "HLA-A*01:01" or
# "chrUn:KI270302v1" work; a name whose tail is not a range is taken as a bare record name.
_RANGE = re.compile(r"^(?P<chrom>.+):(?P<start>[0-9][0-9,]*)-(?P<end>[0-9][0-9,]*)$")


@dataclass(frozen=True)
class Region:
    """A non-empty 0-based half-open interval ``[start, end)`` on record ``chrom``."""

    chrom: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not self.chrom:
            raise FastaError(f"region {self.start}-{self.end} has an empty record name")
        if not 0 <= self.start < self.end:
            raise FastaError(
                f"region {self.chrom} [{self.start}, {self.end}) is empty or negative: "
                "0-based start must be >= 0 and below the end"
            )

    def __str__(self) -> str:
        return f"{self.chrom}:{self.start + 1}-{self.end}"

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Region) -> bool:
        """True when the two intervals share at least one base."""
        return self.chrom == other.chrom and self.start < other.end and other.start < self.end


def _known(lengths: Mapping[str, int], limit: int = 10) -> str:
    names = list(lengths)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} records)" if len(names) > limit else "")


def check_region(region: Region, lengths: Mapping[str, int]) -> Region:
    """Return ``region`` after checking that its record exists and that it fits inside it."""
    if region.chrom not in lengths:
        raise FastaError(
            f"region {region} names record '{region.chrom}', which is not in the FASTA "
            f"files (known records: {_known(lengths)}); fix the record name or add its FASTA "
            "to data.fasta"
        )
    length = lengths[region.chrom]
    if region.end > length:
        raise FastaError(
            f"region {region} ends at {region.end:,} but record '{region.chrom}' is only "
            f"{length:,} bp long; use an end of at most {length:,}"
        )
    return region


def parse_region(text: str, lengths: Mapping[str, int] | None = None) -> Region:
    """Parse ``chrom:start-end`` (1-based inclusive, commas allowed) or a bare record name.

    With ``lengths`` (record name -> length) the record must exist and the range must fit;
    a bare name means the whole record and therefore needs ``lengths``. When ``text`` is
    both a valid range and the exact name of a record, the range reading wins only if its
    record exists.
    """
    text = text.strip()
    match = _RANGE.match(text)
    if match and (lengths is None or match["chrom"] in lengths or text not in lengths):
        start = int(match["start"].replace(",", ""))
        end = int(match["end"].replace(",", ""))
        if start < 1 or end < start:
            raise FastaError(
                f"region '{text}' is invalid: coordinates are 1-based inclusive, so the start "
                f"must be >= 1 and the end >= the start (got {start:,}-{end:,})"
            )
        region = Region(match["chrom"], start - 1, end)
        return region if lengths is None else check_region(region, lengths)
    if not text:
        raise FastaError("empty region string; write 'chrom' or 'chrom:start-end'")
    if lengths is None:
        raise FastaError(
            f"region '{text}' is a bare record name; the record lengths are needed to turn it "
            "into an interval (pass lengths=, or write it as 'chrom:start-end')"
        )
    if text not in lengths:
        raise FastaError(
            f"region '{text}' is neither 'chrom:start-end' nor a known record name "
            f"(known records: {_known(lengths)})"
        )
    return Region(text, 0, lengths[text])
