"""Is a FASTA's ``.fai`` (and bgzip ``.gzi``) index still the index of that file?

Judged by content, never by modification time: a FASTA replaced by an older-dated copy
(``cp -p``, rsync, a tar extract) keeps a newer index that no longer matches it, and
pyfaidx would then read header bytes as sequence. The checks cost one small read per
record: each record's offset must point just past a header line naming that record, its
first sequence line must end where the index says, each header must start where the
previous record ends, and the last record must end with the file. Anything unreadable
counts as stale, since rebuilding an index is always safe.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from Bio import bgzf

Reader = Callable[[int, int], bytes]  # (uncompressed offset, size) -> bytes
# Every complete BGZF file ends with this empty block (htslib, SAM spec section 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_MAX_HEADER = 1 << 20  # a longer gap between records means the index is not this file's
_MAX_TAIL = 1 << 12  # trailing blank lines after the last record


def bgzf_complete(path: Path) -> bool:
    """Whether a BGZF file ends with its end-of-file block (it was not cut short)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < len(BGZF_EOF):
            return False
        fh.seek(-len(BGZF_EOF), os.SEEK_END)
        return fh.read() == BGZF_EOF


def index_matches(path: Path, fai: Path, gzi: Path | None) -> bool:
    """Whether ``fai`` (and ``gzi`` for bgzip) describe ``path`` as it is now."""
    if not fai.is_file() or (gzi is not None and not gzi.is_file()):
        return False
    try:
        records = _read_fai(fai)
        with _reader(path, gzi) as (read, size):
            return bool(records) and _layout_matches(records, read, size)
    except (OSError, ValueError, EOFError, zlib.error, struct.error):
        return False


def _read_fai(fai: Path) -> list[tuple[str, int, int, int, int]]:
    """(name, length, offset, bases per line, bytes per line) of every record."""
    records = []
    for line in fai.read_text().splitlines():
        name, *numbers = line.split("\t")
        length, offset, bases, width = map(int, numbers)  # ValueError unless exactly 4
        records.append((name, length, offset, bases, width))
    return records


@contextlib.contextmanager
def _reader(path: Path, gzi: Path | None) -> Iterator[tuple[Reader, int]]:
    """A random-access reader of the uncompressed bytes, and their total size."""
    if gzi is None:
        with open(path, "rb") as fh:

            def read(pos: int, size: int) -> bytes:
                fh.seek(pos)
                return fh.read(size)

            yield read, os.fstat(fh.fileno()).st_size
        return
    blocks = _read_gzi(gzi)
    starts = [u for _, u in blocks]
    with bgzf.BgzfReader(str(path), "rb") as fh:

        def read(pos: int, size: int) -> bytes:
            cstart, ustart = blocks[bisect.bisect_right(starts, pos) - 1]
            fh.seek(bgzf.make_virtual_offset(cstart, pos - ustart))
            return fh.read(size)

        cstart, ustart = blocks[-1]
        fh.seek(bgzf.make_virtual_offset(cstart, 0))
        tail = 0
        while chunk := fh.read(1 << 16):  # the last block holds at most 64 KiB
            tail += len(chunk)
        yield read, ustart + tail


def _read_gzi(gzi: Path) -> list[tuple[int, int]]:
    """(compressed, uncompressed) start of every BGZF block, the implicit first included."""
    data = gzi.read_bytes()
    (count,) = struct.unpack_from("<Q", data)
    if len(data) != 8 + 16 * count:
        raise ValueError(f"{gzi}: {len(data)} bytes for {count} blocks")
    pairs = struct.iter_unpack("<QQ", data[8:])
    return [(0, 0), *((c, u) for c, u in pairs)]


def _layout_matches(records: list, read: Reader, size: int) -> bool:
    end = 0
    for name, length, offset, bases, width in records:
        if not 0 <= offset - end <= _MAX_HEADER or _header_name(read(end, offset - end)) != name:
            return False
        if bases < 1 or width < bases:
            return False
        if length > bases and not _line_ends(read(offset + bases - 1, width - bases + 2)):
            return False
        end = offset + length + -(-length // bases) * (width - bases)
    newline = records[-1][4] - records[-1][3]
    if size < end - newline or size - end > _MAX_TAIL:
        return False
    return size <= end or not read(end, size - end).strip()


def _header_name(gap: bytes) -> str | None:
    """The record name of the header line that ``gap`` must end with (after blank or
    ``;`` comment lines), else None."""
    lines = gap.split(b"\n")
    if len(lines) < 2 or lines[-1] or not lines[-2].startswith(b">"):
        return None
    if any(line.strip() and not line.startswith(b";") for line in lines[:-2]):
        return None
    words = lines[-2][1:].decode("utf-8", "replace").split()
    return words[0] if words else None


def _line_ends(probe: bytes) -> bool:
    """``probe`` is the last base of a full line, its line terminator, then a base."""
    terminator = probe[1:-1]
    return (
        len(probe) >= 3
        and probe[:1] not in (b"\n", b"\r")
        and probe[-1:] not in (b"\n", b"\r")
        and terminator.endswith(b"\n")
        and not terminator.strip(b"\r\n")
    )
