"""rmt-validate: the command line.

    rmt-validate generated.fa --reference genome.fa --output validation/ [--markov-order 5]
        [--seed 0] [--window 1000] [--canonical] [--overwrite]

Writes report.json, report.md and report.png into the output directory, which must be
new or empty (or `--overwrite`). A mistake in the input (missing or empty FASTA, a mostly-N
sequence, records shorter than one window) ends with one line naming the file and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rmt.cli import user_errors
from rmt.lock import LOCK_FILE, RunLock
from rmt.validate.report import ValidateOptions, validate, write

PROGRAM = "rmt-validate"


def parse(argv: list[str] | None) -> ValidateOptions:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="How real a generated DNA sequence looks: k-mer spectra, GC windows, "
        "runs, repeats and genes, next to an order-k Markov sample and stretches of the "
        "reference, all against the reference.",
    )
    parser.add_argument("generated", type=Path, help="FASTA of generated sequence(s)")
    parser.add_argument("--reference", type=Path, required=True, help="FASTA of a real genome")
    parser.add_argument("--output", "-o", type=Path, required=True, help="report directory")
    parser.add_argument("--markov-order", type=int, default=5, help="Markov baseline's order")
    parser.add_argument("--seed", type=int, default=0, help="seed of the comparison samples")
    parser.add_argument("--window", type=int, default=1000, help="GC window (bp)")
    parser.add_argument(
        "--canonical", action="store_true", help="pool k-mers with their reverse complements"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return ValidateOptions(**vars(parser.parse_args(argv)))


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a file at ``out``, or a directory with something in it unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} is a file; give a directory")
    if not overwrite and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise FileExistsError(
            f"--output {out} is not empty; give a new directory, or --overwrite to replace "
            "the report there"
        )


def log(message: str) -> None:
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run rmt-validate with ``argv`` (default: the command line's arguments)."""
    with user_errors(PROGRAM):
        options = parse(argv)
        check_output(options.output, options.overwrite)
        validation = validate(options, log)
        with RunLock(options.output, PROGRAM):
            check_output(options.output, options.overwrite)  # another run may have written
            written = write(validation, options.output)
        log("wrote " + ", ".join(str(p) for p in written))
