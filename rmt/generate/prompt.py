"""The prompt generation continues: nothing, bases typed in, or a region of a FASTA file.

    prompt: null                             # a random first base (A/C/G/T, from the seed)
    prompt: ACGTTGCA                         # these bases (A C G T N, either case)
    prompt: genome.fa:chr1:10001-20000       # a region, samtools style (1-based, inclusive)
    prompt: bundled:ecoli:NC_008253.1:1-5000 # a genome shipped with the package

A region is `PATH:CHROM:START-END`, split at its last two colons, so a path may hold
colons (`bundled:NAME`) but a record name may not (on the command line, leave the
thousands commas out: Hydra reads a comma as a list). The FASTA may be plain, bgzip or .gz
(decompressed into the cache as for training). The prompt only conditions the model: the
output holds the new bases, except that with no prompt the random first base is the
output's first base.
"""

from __future__ import annotations

from data import Genome
from rmt.data_config import resolve_fasta
from rmt.option_errors import check

BASES = frozenset("ACGTN")
SYNTAX = "give bases (ACGTN...), a FASTA region PATH:CHROM:START-END, or null"


def is_bases(text: str) -> bool:
    return bool(text) and set(text.upper()) <= BASES


def split_region(text: str) -> tuple[str, str] | None:
    """(path, 'chrom:start-end') of a `PATH:CHROM:START-END` prompt, None if it is not one."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        return None
    path, chrom, span = parts
    return path, f"{chrom}:{span}"


def check_prompt(text: str | None) -> None:
    """The prompt's syntax (the file and region are checked when it is read)."""
    if text is None or is_bases(text):
        return
    check(split_region(text) is not None, "prompt", text, f"is neither; {SYNTAX}")


def read_prompt(text: str | None, cache_dir: str | None = None) -> str:
    """The prompt's bases, uppercase ('' for null); a bad file or region is a ValueError
    naming `prompt`."""
    if text is None:
        return ""
    if is_bases(text):
        return text.upper()
    check_prompt(text)
    path, region = split_region(text)
    try:
        genome = Genome(resolve_fasta(path), max_n_fraction=1.0, cache_dir=cache_dir)
        where = genome.resolve_region(region)
        return genome.fetch(where.chrom, where.start, where.end)
    except (OSError, ValueError) as err:
        raise ValueError(f"prompt={text!r} cannot be read: {err}") from err


__all__ = ["check_prompt", "is_bases", "read_prompt", "split_region"]
