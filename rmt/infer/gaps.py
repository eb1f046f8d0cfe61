"""N runs are not scored: each region is split into the stretches of sequence between them.

An N is a base nobody knows (an assembly gap, or an ambiguity code, which the FASTA reader
maps to N), so a track value there would be a score of nothing. Every N run, whatever
its length, is left out: it gets no bedGraph row, no bigWig value and no store row, and
is not run through the model; ``n_bp_skipped`` in summary.json counts it.

Each stretch is streamed as a region of its own, from the initial memory, as a record's
start is. The sequence across a gap is unknown (a scaffold gap stands for anything from
a few bases to megabases), so memory carried over it would join two stretches as if
they were adjacent, which they are not; restarting keeps every stretch's scores
independent of what an assembler put in the gap.
"""

from __future__ import annotations

import re

from data import Genome, Region

N_RUN = re.compile("N+")
# bp read at a time while looking for N runs: memory stays bounded on any chromosome.
SCAN_BP = 1 << 20


def n_runs(genome: Genome, region: Region) -> list[tuple[int, int]]:
    """The N runs of ``region`` as [start, end) genome coordinates, in order."""
    runs: list[tuple[int, int]] = []
    for block in range(region.start, region.end, SCAN_BP):
        seq = genome.fetch(region.chrom, block, min(block + SCAN_BP, region.end))
        for match in N_RUN.finditer(seq):
            start, end = block + match.start(), block + match.end()
            if runs and runs[-1][1] == start:  # a run across the block boundary
                start = runs.pop()[0]
            runs.append((start, end))
    return runs


def sequence_stretches(genome: Genome, region: Region) -> list[Region]:
    """``region`` less its N runs: the stretches that are scored, in order."""
    stretches, position = [], region.start
    for start, end in n_runs(genome, region):
        if start > position:
            stretches.append(Region(region.chrom, position, start))
        position = end
    if position < region.end:
        stretches.append(Region(region.chrom, position, region.end))
    return stretches
