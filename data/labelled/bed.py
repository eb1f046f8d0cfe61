"""BED intervals over a reference FASTA: labelled regions, example regions, feature parts.

Columns are named by a header line (`#chrom  start  end  label ...`, or a first line whose
start is not a number), else by the BED standard (chrom, start, end, name, score, strand,
thickStart, ... blockStarts); a column can always be given by its 1-based number, as
`cut -f` counts. Coordinates are 0-based half-open, as BED writes them, and are checked
against the FASTA's record lengths so that a wrong genome fails here, naming the line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from data.labelled.rows import open_text

STANDARD_COLUMNS = ("chrom", "start", "end", "name", "score", "strand", "thickStart",
                    "thickEnd", "itemRgb", "blockCount", "blockSizes", "blockStarts")  # fmt: skip
_SKIP = ("track", "browser")


@dataclass(frozen=True)
class BedLine:
    """One BED line: its interval on ``chrom`` (0-based half-open), strand and fields."""

    line: int
    chrom: str
    start: int
    end: int
    strand: str
    fields: list[str]

    def region_name(self) -> str:
        """samtools-style name, with the strand when it is minus: ``chr1:101-200(-)``."""
        name = f"{self.chrom}:{self.start + 1}-{self.end}"
        return name + "(-)" if self.strand == "-" else name

    def blocks(self, where: str) -> list[tuple[int, int]]:
        """The BED12 blocks (exons) as intervals, else the whole interval."""
        if len(self.fields) < 12:
            return [(self.start, self.end)]
        try:
            sizes = [int(x) for x in self.fields[10].rstrip(",").split(",")]
            starts = [int(x) for x in self.fields[11].rstrip(",").split(",")]
        except ValueError:
            sizes, starts = [], [-1]
        if len(sizes) != len(starts) or any(s < 0 for s in starts):
            raise ValueError(f"{where}: blockSizes/blockStarts are not comma-separated "
                             "numbers of equal count; fix the BED12 line")  # fmt: skip
        return [(self.start + s, self.start + s + n) for s, n in zip(starts, sizes, strict=True)]


class BedFile:
    """The column names and the lines of a BED file, checked against record lengths."""

    def __init__(self, path: str, lengths: Mapping[str, int]) -> None:
        self.path = path
        self._lengths = lengths
        self.header: list[str] | None = None
        self._lines = list(self._read())

    @property
    def columns(self) -> list[str]:
        """The header's names, else the BED standard names."""
        return self.header if self.header is not None else list(STANDARD_COLUMNS)

    def column(self, name: str, key: str) -> int:
        """The 0-based index of the column named (or numbered, 1-based) ``name``."""
        if name.isdigit() and int(name) >= 1:
            return int(name) - 1
        if name in self.columns:
            return self.columns.index(name)
        raise ValueError(
            f"{self.path}: no column {name!r} (columns: {', '.join(self.columns)}); set "
            f"{key} to a column name or a 1-based column number, e.g. {key}=4"
        )

    def lines(self) -> list[BedLine]:
        """Every interval line, in file order."""
        return self._lines

    def value(self, line: BedLine, index: int, key: str) -> str:
        """Field ``index`` of ``line``; an error naming the line when it has no such field."""
        if index >= len(line.fields) or not line.fields[index]:
            raise ValueError(
                f"{self.path}, line {line.line}: no field {index + 1} "
                f"({self.columns[index] if index < len(self.columns) else 'column'}) for "
                f"{key}; the line has {len(line.fields)} fields"
            )
        return line.fields[index]

    def _read(self) -> Iterator[BedLine]:
        """Interval lines; the header is the `#` line just before the first interval
        (when it has as many fields) or a first line whose start is not a number."""
        comment: list[str] | None = None
        started = False
        with open_text(self.path) as fh:
            for number, text in enumerate(fh, 1):
                text = text.rstrip("\r\n")
                if not text.strip() or text.startswith(_SKIP):
                    continue
                fields = text.split("\t") if "\t" in text else text.split()
                if text.startswith("#"):
                    comment = None if started else [f.strip().lstrip("#") for f in fields]
                    continue
                if not started and not _is_int(fields, 1):
                    self.header, started = [f.strip() for f in fields], True
                    continue
                if not started and comment is not None and len(comment) == len(fields):
                    self.header = comment
                started = True
                yield self._parse(number, fields)

    def _parse(self, number: int, fields: list[str]) -> BedLine:
        where = f"{self.path}, line {number}"
        if len(fields) < 3 or not (_is_int(fields, 1) and _is_int(fields, 2)):
            raise ValueError(
                f"{where}: a BED line needs chrom, start and end (whole numbers, "
                f"tab-separated), got {' '.join(fields)[:60]!r}; fix the line"
            )
        chrom, start, end = fields[0], int(fields[1]), int(fields[2])
        if chrom not in self._lengths:
            known = ", ".join(list(self._lengths)[:5])
            raise ValueError(
                f"{where}: chromosome {chrom!r} is not in the FASTA (its records: {known}"
                f"{', ...' if len(self._lengths) > 5 else ''}); fix the name or data.fasta"
            )
        if not 0 <= start < end or end > self._lengths[chrom]:
            raise ValueError(
                f"{where}: interval {chrom}:{start}-{end} (0-based) is empty or past the "
                f"end of {chrom} ({self._lengths[chrom]:,} bp); fix the coordinates or "
                "data.fasta (another assembly?)"
            )
        strand = self._strand(fields, where)
        return BedLine(number, chrom, start, end, strand, fields)

    def _strand(self, fields: list[str], where: str) -> str:
        if "strand" not in self.columns:
            return "+"
        index = self.columns.index("strand")
        strand = fields[index] if index < len(fields) else "."
        if strand not in ("+", "-", "."):
            raise ValueError(f"{where}: strand {strand!r} is not +, - or .; fix the strand")
        return "-" if strand == "-" else "+"


def _is_int(fields: list[str], index: int) -> bool:
    return index < len(fields) and fields[index].strip().isdigit()
