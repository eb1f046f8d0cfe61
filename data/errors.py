"""Exception types of the data package.

Both subclass ``ValueError`` because every one of them means "the input you gave is
wrong", and callers that already catch ``ValueError`` keep working. Messages always name
the file (and record, line, region or token) at fault and say how to fix it.
"""

from __future__ import annotations


class FastaError(ValueError):
    """A FASTA file, record, region or sampling request cannot be used as given."""


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or lacks a token the engine relies on."""
