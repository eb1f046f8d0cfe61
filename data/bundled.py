"""Small real genomes shipped with the package, for tests, demos and the default config.

They are plain gzip (not bgzip), so ``open_fasta`` decompresses them once into its cache.
"""

from __future__ import annotations

from pathlib import Path

from data.regions import Region

GENOMES_DIR = Path(__file__).resolve().parent / "genomes"
BUNDLED_GENOMES = {
    "ecoli": "ecoli_536_NC_008253.fa.gz",  # E. coli 536 chromosome, 4,938,920 bp
    "lambda": "lambda_phage_NC_001416.fa.gz",  # phage lambda, 48,502 bp
    "plasmids": "shigella_sonnei_53G_plasmids.fa.gz",  # three Shigella sonnei 53G plasmids
}
ECOLI_RECORD = "NC_008253.1"
ECOLI_LENGTH = 4_938_920
# The last 246,920 bp (5%) of the E. coli chromosome: excluded from training and from
# tokenizer training, tiled for evaluation. str() gives "NC_008253.1:4692001-4938920".
ECOLI_HELDOUT = Region(ECOLI_RECORD, 4_692_000, ECOLI_LENGTH)


def bundled_genome(name: str = "ecoli") -> Path:
    """Path of a bundled genome: "ecoli", "lambda" or "plasmids"."""
    if name not in BUNDLED_GENOMES:
        raise ValueError(
            f"unknown bundled genome {name!r}; choose one of {', '.join(BUNDLED_GENOMES)}"
        )
    return GENOMES_DIR / BUNDLED_GENOMES[name]
