"""Opening FASTA files safely: validation, gzip caching and atomic pyfaidx indexes.

``open_fasta`` accepts uncompressed, bgzip and plain-gzip FASTA. pyfaidx needs random
access, which plain gzip cannot give, so plain gzip is decompressed once into a cache keyed
by the source's path, size and mtime. Files are validated in one streaming pass before their
index is built, so bad input fails at start-up with a message naming the file, record, line
and character, instead of as garbage tokens hours into training. Validation runs whenever
the index is (re)built. An existing ``.fai`` (also one made by samtools) is used only when
its records still match the file's content (``data.fai``), so later opens cost one small
read per record.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pyfaidx

from data.atomic import atomic_path
from data.errors import FastaError
from data.fai import bgzf_complete, index_matches
from data.regions import Region, parse_region

__all__ = [
    "FastaError",
    "Region",
    "clean_sequence",
    "default_cache_dir",
    "open_fasta",
    "parse_region",
    "record_name",
]

_IUPAC = "ACGTURYSWKMBDHVN"
_VALID_BYTES = (_IUPAC + _IUPAC.lower()).encode()
# Uppercase everything, map U (RNA) to T and every ambiguity code to N. str.translate with
# an all-ASCII table runs at memory speed in CPython.
_AMBIGUOUS = "RYSWKMBDHVN"
_CLEAN = str.maketrans("acgtuU" + _AMBIGUOUS + _AMBIGUOUS.lower(), "ACGTTT" + "N" * 22)
# Deletes whitespace and digits first: they are layout (spaces, GenBank-style position
# numbers, trailing blanks), and turning them into N would insert bases.
_STRIP_LAYOUT = "-e '/^>/!s/[[:space:][:digit:]]//g'"
_TO_N = "-e '/^>/!s/[^ACGTURYSWKMBDHVNacgturyswkmbdhvn]/N/g'"
_NUCLEOTIDE_LETTERS = frozenset(b"ACGTUNacgtun")
_PROTEIN_LETTERS = frozenset(b"EFIJLOPQZefijlopqz*")
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# pyfaidx keeps a small read-ahead buffer so that sequential fetches (tiling an evaluation
# region, streaming tokenizer training data) do not hit the file for every window.
_READ_AHEAD = 1 << 16


def clean_sequence(seq: str) -> str:
    """Uppercase ``seq`` (soft-masked repeats become ordinary bases) and turn U into T and
    every IUPAC ambiguity code (R Y S W K M B D H V N, any case) into N.

    Length is preserved, so positions in the cleaned string are positions in the input.
    Characters outside IUPAC pass through unchanged: rejecting them is the validator's job.
    """
    return seq.translate(_CLEAN)


def record_name(header_token: str) -> str:
    """The record name used for a FASTA header's first word.

    Legacy NCBI names (``gi|110640213|ref|NC_008253.1|``) become their accession
    (``NC_008253.1``) so regions can be written as ``NC_008253.1:1-100``; other names are
    kept as they are.
    """
    parts = header_token.split("|")
    if len(parts) >= 4 and parts[0] == "gi" and parts[3]:
        return parts[3]
    return header_token


def default_cache_dir() -> Path:
    """Where decompressed FASTA goes: ``$RMT_CACHE_DIR/fasta``, else ``~/.cache/rmt/fasta``."""
    root = os.environ.get("RMT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "rmt") / "fasta"


def _compression(path: Path) -> str:
    """Return "plain", "gzip" or "bgzf" from the file's magic bytes (not its extension)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    for magic, kind in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise FastaError(
                f"{path} is {kind}-compressed, which cannot be read with random access; "
                f"decompress it, or recompress it with `bgzip` (from htslib)"
            )
    if not head.startswith(b"\x1f\x8b"):
        return "plain"
    # BGZF is gzip with the FEXTRA flag and a 'BC' extra subfield holding the block size.
    if len(head) >= 18 and head[3] & 0x04 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _validate(lines: Iterable[bytes], display: str) -> Iterator[bytes]:
    """Check FASTA structure and alphabet while passing the lines through unchanged.

    Raises FastaError for an empty file, text before the first header, an empty or
    duplicated record, or a character that is not an IUPAC nucleotide code.
    """
    record: str | None = None
    header_line = 0
    has_sequence = False
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        body = line.rstrip(b"\r\n")
        if body.startswith(b">"):
            if record is not None and not has_sequence:
                raise FastaError(
                    f"{display}: record '{record}' (header on line {header_line}) has no "
                    "sequence; remove the record or restore its sequence"
                )
            words = body[1:].decode("utf-8", "replace").split()
            if not words:
                raise FastaError(
                    f"{display}: line {lineno} is a header ('>') without a record name; "
                    "give every record a name"
                )
            record, header_line, has_sequence = record_name(words[0]), lineno, False
            if record in seen:
                raise FastaError(
                    f"{display}: record name '{record}' appears twice (lines {seen[record]} "
                    f"and {lineno}); rename or remove one of them"
                )
            seen[record] = lineno
        elif record is None:
            if body.strip() and not body.startswith(b";"):
                raise FastaError(
                    f"{display}: line {lineno} should be a FASTA header starting with '>' but "
                    f"reads {body[:40]!r}; the file has no FASTA header, so it is probably "
                    "not FASTA. Give a FASTA file"
                )
        else:
            bad = body.translate(None, _VALID_BYTES)
            if bad:
                column = body.index(bad[:1]) + 1
                char = bad[:1].decode("latin-1")
                raise FastaError(
                    f"{display}: record '{record}', line {lineno}, column {column}: invalid "
                    f"character {char!r}, not an IUPAC nucleotide code "
                    f"({_IUPAC}, any case); {_bad_character_fix(body, bad[:1])}"
                )
            has_sequence = has_sequence or bool(body)
        yield line
    if record is None:
        raise FastaError(
            f"{display} is empty (no FASTA records); give a non-empty FASTA file, or "
            "re-download it if a transfer was interrupted"
        )
    if not has_sequence:
        raise FastaError(
            f"{display}: record '{record}' (header on line {header_line}) has no sequence; "
            "remove the record or restore its sequence"
        )


def _bad_character_fix(body: bytes, char: bytes) -> str:
    """How to fix a sequence line holding ``char``: a protein, layout, or stray letters."""
    letters = [c for c in body if chr(c).isalpha()]
    dna_share = sum(c in _NUCLEOTIDE_LETTERS for c in letters) / max(1, len(letters))
    if char[0] in _PROTEIN_LETTERS and dna_share < 0.6:
        return (
            f"this looks like protein, not DNA (only {dna_share:.0%} of the line's letters "
            "are A C G T U N): rmt-dna reads nucleotide FASTA, give the DNA sequence instead"
        )
    if char.isspace() or char.isdigit():
        return (
            "sequence lines must hold bases only: remove spaces, tabs and digits, e.g. "
            f"`sed {_STRIP_LAYOUT} in.fa > out.fa`"
        )
    return (
        "replace or remove it, e.g. delete spaces and digits and map every other "
        f"non-IUPAC character to N with `sed {_STRIP_LAYOUT} {_TO_N} in.fa > out.fa`"
    )


def _drain(lines: Iterable[bytes]) -> None:
    for _ in lines:
        pass


def _source_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def _cache_name(path: Path) -> str:
    """``genome.fa.gz`` -> ``genome.<key>.fa``: readable, yet unique per source version."""
    stem = path.name.removesuffix(".gz")
    for ext in (".fa", ".fasta", ".fna", ".fas"):
        if stem.endswith(ext):
            stem = stem.removesuffix(ext)
            break
    return f"{stem}.{_source_key(path)}.fa"


def _decompress_cached(path: Path, cache_dir: Path) -> Path:
    """Return the validated, decompressed copy of plain-gzip ``path``, creating it once."""
    target = cache_dir / _cache_name(path)
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastaError(
            f"cannot create the FASTA cache directory {cache_dir} needed to decompress "
            f"{path} ({exc}); set RMT_CACHE_DIR or the cache_dir argument to a writable folder"
        ) from exc
    try:
        with atomic_path(target) as tmp, gzip.open(path, "rb") as src, open(tmp, "xb") as dst:
            dst.writelines(_validate(src, str(path)))
    except (OSError, EOFError, zlib.error) as exc:
        raise FastaError(
            f"{path} could not be decompressed into {cache_dir} ({exc}); if the gzip file is "
            "corrupt or truncated re-download it, otherwise point RMT_CACHE_DIR (or cache_dir) "
            "at a writable folder with free space"
        ) from exc
    return target


def _find_index(path: Path, bgzf: bool, cache_dir: Path) -> tuple[Path, Path | None, bool]:
    """Where the index is or goes, and whether it already matches the FASTA's content.

    Index files go beside the FASTA, or into the cache when that directory is read-only
    (an index beside a read-only FASTA is still used when it matches).
    """
    places = [(Path(f"{path}.fai"), Path(f"{path}.gzi") if bgzf else None)]
    if not os.access(path.parent, os.W_OK):
        base = cache_dir / f"{path.name}.{_source_key(path)}"
        places.append((Path(f"{base}.fai"), Path(f"{base}.gzi") if bgzf else None))
    for fai, gzi in places:
        if index_matches(path, fai, gzi):
            return fai, gzi, True
    return (*places[-1], False)


def _pyfaidx(
    path: Path, fai: Path, gzi: Path | None, build: bool, shown_fai: Path | None = None
) -> pyfaidx.Fasta:
    """pyfaidx on ``path``; ``shown_fai`` is the index to name in errors (not a temp file)."""
    try:
        with warnings.catch_warnings():
            # Freshness was judged by content (data.fai); pyfaidx would judge by mtime.
            warnings.filterwarnings("ignore", "Index file .* is older than FASTA", RuntimeWarning)
            warnings.filterwarnings("ignore", "BGZF Index file .* is older", RuntimeWarning)
            return pyfaidx.Fasta(
                str(path),
                indexname=str(fai),
                gzi_indexname=str(gzi) if gzi else None,
                key_function=record_name,
                as_raw=True,
                sequence_always_upper=False,
                read_ahead=_READ_AHEAD,
                rebuild=False,
                build_index=build,
            )
    except pyfaidx.FastaIndexingError as exc:
        raise FastaError(
            f"{path}: pyfaidx cannot index this FASTA ({exc}). Every sequence line of a "
            "record except its last must have the same length; rewrap the file, e.g. "
            "`seqkit seq -w 60 in.fa > out.fa`"
        ) from exc
    except (ValueError, OSError) as exc:
        raise FastaError(
            f"{path}: pyfaidx cannot open this FASTA with index {shown_fai or fai} ({exc}); "
            "check that both "
            "are readable, and delete the index if it is corrupt so that it is rebuilt"
        ) from exc


def _build_index(path: Path, fai: Path, gzi: Path | None, display: str | None) -> None:
    """Write the pyfaidx index (and BGZF .gzi) of ``path`` atomically.

    With ``display`` (the name to use in error messages) the file is validated first; the
    decompressed gzip cache passes None because it was validated while being written.
    """
    if display is not None:
        opener = gzip.open if gzi is not None else open
        try:
            with opener(path, "rb") as fh:
                _drain(_validate(fh, display))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise FastaError(
                f"{display} could not be decompressed ({exc}); the bgzip file is corrupt or "
                "truncated, re-download it or re-compress it with `bgzip`"
            ) from exc
    fai.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tmp_fai = stack.enter_context(atomic_path(fai))
        tmp_gzi = stack.enter_context(atomic_path(gzi)) if gzi is not None else None
        _pyfaidx(path, tmp_fai, tmp_gzi, build=True, shown_fai=fai).close()


def open_fasta(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> pyfaidx.Fasta:
    """Open a FASTA file (uncompressed, bgzip or plain gzip) for random access.

    The returned ``pyfaidx.Fasta`` is opened with ``as_raw=True`` (slices are ``str``) and
    does not change case; pass fetched sequence through :func:`clean_sequence`. Records are
    keyed by :func:`record_name`. ``cache_dir`` defaults to :func:`default_cache_dir`.
    """
    path = Path(path)
    if path.is_dir():
        raise FastaError(f"{path} is a directory, not a FASTA file; give a FASTA file's path")
    if not path.is_file():
        raise FastaError(f"FASTA file not found: {path}; check the path")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kind = _compression(path)
    display: str | None = str(path)
    if kind == "gzip":
        path, display = _decompress_cached(path, cache), None
    if kind == "bgzf" and not bgzf_complete(path):
        raise FastaError(
            f"{path} is truncated: a bgzip file ends with an end-of-file block and this one "
            "does not (a download or copy was cut short); re-download it, or re-compress "
            "the uncompressed FASTA with `bgzip`"
        )
    fai, gzi, fresh = _find_index(path, kind == "bgzf", cache)
    if not fresh:
        _build_index(path, fai, gzi, display)
    return _pyfaidx(path, fai, gzi, build=False)
