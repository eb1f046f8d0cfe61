"""Data pipeline: FASTA files -> genome windows -> DNA tokens -> masked MLM batches.

``open_fasta`` validates and indexes FASTA (plain gzip is decompressed once into a cache);
``Genome`` samples weighted random windows from the usable intervals (held-out regions
excluded) or tiles a region; a ``DNATokenizer`` (trained BPE or one token per nucleotide)
turns windows into ids with bp offsets; ``MLMBatches`` pads, BERT-masks and batches them
reproducibly, and tiles evaluation regions with fixed masks.
"""

from data.batches import Batch, MLMBatches
from data.bundled import BUNDLED_GENOMES, ECOLI_HELDOUT, ECOLI_RECORD, bundled_genome
from data.errors import FastaError, TokenizerError
from data.fasta import clean_sequence, open_fasta
from data.genome import Genome, Window, reverse_complement
from data.masking import IGNORE_INDEX, mask_tokens
from data.regions import Region, parse_region
from data.tokenizers import (
    SPECIAL_TOKENS,
    BPETokenizer,
    DNATokenizer,
    Encoding,
    NucleotideTokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "BUNDLED_GENOMES",
    "ECOLI_HELDOUT",
    "ECOLI_RECORD",
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "BPETokenizer",
    "Batch",
    "DNATokenizer",
    "Encoding",
    "FastaError",
    "Genome",
    "MLMBatches",
    "NucleotideTokenizer",
    "Region",
    "TokenizerError",
    "Window",
    "bundled_genome",
    "clean_sequence",
    "load_tokenizer",
    "mask_tokens",
    "open_fasta",
    "parse_region",
    "reverse_complement",
    "train_bpe",
]
