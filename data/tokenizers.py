"""DNA tokenizers: learned BPE (GENA-LM style) or one token per nucleotide.

Both return token ids together with base-pair offsets into the input, so a masked-token
prediction can always be traced back to exact genomic positions. Neither adds [CLS]/[SEP]:
the RMT wrapper places special and memory tokens itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from tokenizers import Tokenizer, models, trainers

from data.atomic import atomic_path
from data.errors import TokenizerError
from data.fasta import clean_sequence
from data.vocab_checks import check_bpe_vocab, spread_chunks

if TYPE_CHECKING:
    from data.genome import Genome

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
NUCLEOTIDES = "ACGTN"
_FIX = (
    "give load_tokenizer a Hugging Face tokenizer.json (train one with train_bpe), or "
    '"nucleotide" for one token per base'
)


@dataclass
class Encoding:
    """Token ids (int64, shape (n,)) and their [start, end) bp offsets (int64, (n, 2))."""

    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class DNATokenizer(ABC):
    """What the engine needs from a tokenizer: ids, offsets, special ids, persistence."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (all ids are in ``range(vocab_size)``)."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None if it is not in the vocabulary."""

    @abstractmethod
    def encode(self, seq: str) -> Encoding:
        """Tokenize ``clean_sequence(seq)`` without adding special tokens; offsets index ``seq``."""

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The DNA spelled by ``ids``; special tokens (including padding) are skipped."""

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer atomically so that ``load_tokenizer(path)`` restores it."""

    def fingerprint(self) -> str:
        """SHA-256 of what decides the ids: the token of every id, and the merge rules.

        Saved with a model so that a swapped tokenizer (same file name, other vocabulary)
        is caught at load instead of silently giving wrong ids. A digest of content, not
        of file bytes, so the same tokenizer re-saved by another ``tokenizers`` version
        keeps its fingerprint.
        """
        payload = json.dumps(self._identity(), separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    @abstractmethod
    def _identity(self) -> dict:
        """The content ``fingerprint`` digests (JSON-serialisable)."""

    @cached_property
    def _special(self) -> dict[str, int]:
        return {token: self._required_id(token) for token in SPECIAL_TOKENS}

    def _required_id(self, token: str) -> int:
        token_id = self.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self!r} has no {token} token")
        return token_id

    @property
    def unk_id(self) -> int:
        return self._special["[UNK]"]

    @property
    def cls_id(self) -> int:
        return self._special["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._special["[SEP]"]

    @property
    def pad_id(self) -> int:
        return self._special["[PAD]"]

    @property
    def mask_id(self) -> int:
        return self._special["[MASK]"]

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that must never be masked, predicted as DNA, or used as random replacements."""
        return frozenset(self._special.values())

    def bp_per_token(self, sample: str) -> float:
        """Average compression on ``sample``: base pairs per token."""
        n = len(self.encode(sample))
        if n == 0:
            raise ValueError("bp_per_token needs a non-empty sample")
        return len(sample) / n


class BPETokenizer(DNATokenizer):
    """A Hugging Face ``tokenizers`` model (typically BPE) used on DNA.

    Any tokenizer.json containing the five ``SPECIAL_TOKENS`` works, including GENA-LM's;
    its post-processor (which would add [CLS]/[SEP]), truncation and padding are bypassed.
    """

    name = "bpe"

    def __init__(self, tokenizer: Tokenizer, source: str = "<in memory>") -> None:
        self._tok = tokenizer
        self._source = source
        # Files saved from transformers often carry truncation/padding for 512-token models;
        # windows here are much longer and padding is done by the batcher.
        self._tok.no_truncation()
        self._tok.no_padding()
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(
                f"tokenizer {source} lacks the special token(s) {', '.join(missing)}; the "
                f"engine needs all of {', '.join(SPECIAL_TOKENS)}. Add them (e.g. "
                "Tokenizer.add_special_tokens) and save again, or " + _FIX
            )
        self._added_special = {
            i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special
        }
        self._pieces = self._decode_table()

    def _decode_table(self) -> np.ndarray:
        """Token id -> the DNA it spells (uppercase, subword markers removed, specials '')."""
        model = self._tok.model
        prefix = getattr(model, "continuing_subword_prefix", None) or ""
        suffix = getattr(model, "end_of_word_suffix", None) or ""
        pieces = []
        for i in range(self.vocab_size):
            token = self._tok.id_to_token(i)
            if token is None or i in self.special_ids:
                pieces.append("")
                continue
            if prefix and token.startswith(prefix):
                token = token[len(prefix) :]
            if suffix and token.endswith(suffix):
                token = token[: -len(suffix)]
            pieces.append(token.upper())
        return np.array(pieces, dtype=object)

    def __repr__(self) -> str:
        return f"BPETokenizer({self._source}, vocab_size={self.vocab_size})"

    def _identity(self) -> dict:
        model = json.loads(self._tok.to_str())["model"]
        # Merges are "a b" strings before tokenizers 0.20 and [a, b] pairs since.
        merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model.get("merges", [])]
        vocab = self._tok.get_vocab(with_added_tokens=True)
        ids = sorted((i, token) for token, i in vocab.items())
        return {"type": model.get("type"), "vocab": ids, "merges": merges}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a Hugging Face tokenizer.json (e.g. GENA-LM's 32k BPE)."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}; {_FIX}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise TokenizerError(
                f"{path} is not a Hugging Face tokenizer.json ({exc}); {_FIX}"
            ) from exc
        return cls(tok, str(path))

    @classmethod
    def train(cls, sequences: Iterable[str], vocab_size: int, chunk_bp: int = 1000) -> BPETokenizer:
        """Train a character-level BPE (no bytes, no pre-tokenizer) on DNA.

        Special tokens take ids 0..4 and A C G T N the next ids, so every cleaned sequence
        is encodable. Sequences are cut into ``chunk_bp`` pieces because the trainer treats
        each input as one "word" and merges never cross word boundaries anyway.
        """
        floor = len(SPECIAL_TOKENS) + len(NUCLEOTIDES)
        if vocab_size <= floor:
            raise TokenizerError(f"BPE vocab_size must exceed {floor}, got {vocab_size}")
        if chunk_bp < 1:
            raise TokenizerError(f"chunk_bp must be >= 1, got {chunk_bp}")
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=list(NUCLEOTIDES),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(sequences, chunk_bp), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def special_ids(self) -> frozenset[int]:
        return super().special_ids | self._added_special

    def encode(self, seq: str) -> Encoding:
        enc = self._tok.encode(clean_sequence(seq), add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        flat = itertools.chain.from_iterable(enc.offsets)  # ~2x faster than np.asarray
        offsets = np.fromiter(flat, dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
        return Encoding(ids, offsets)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self._pieces[_checked_ids(ids, self)])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self._tok.to_str())


def _chunks(sequences: Iterable[str], chunk_bp: int) -> Iterator[str]:
    for seq in sequences:
        seq = clean_sequence(seq)
        for start in range(0, len(seq), chunk_bp):
            yield seq[start : start + chunk_bp]


# byte -> id for NucleotideTokenizer (anything but A C G T N is [UNK]) and id -> byte (0 for
# special tokens, which decode to nothing).
_BASE_IDS = np.full(256, SPECIAL_TOKENS.index("[UNK]"), dtype=np.int64)
_BASE_IDS[np.frombuffer(NUCLEOTIDES.encode(), dtype=np.uint8)] = np.arange(
    len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(NUCLEOTIDES)
)
_BASE_BYTES = np.frombuffer(b"\0" * len(SPECIAL_TOKENS) + NUCLEOTIDES.encode(), dtype=np.uint8)


def _checked_ids(ids: Sequence[int] | np.ndarray, tokenizer: DNATokenizer) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise TokenizerError(f"ids must be in [0, {tokenizer.vocab_size}) for {tokenizer!r}")
    return ids


class NucleotideTokenizer(DNATokenizer):
    """One token per base: specials at ids 0..4, then A C G T N at 5..9."""

    name = "nucleotide"
    _VOCAB = (*SPECIAL_TOKENS, *NUCLEOTIDES)

    def __repr__(self) -> str:
        return "NucleotideTokenizer()"

    def _identity(self) -> dict:
        return {"type": self.name, "vocab": list(self._VOCAB)}

    @property
    def vocab_size(self) -> int:
        return len(self._VOCAB)

    def token_to_id(self, token: str) -> int | None:
        return self._VOCAB.index(token) if token in self._VOCAB else None

    def encode(self, seq: str) -> Encoding:
        # 'replace' keeps one byte per character, so offsets stay aligned with ``seq``.
        raw = np.frombuffer(clean_sequence(seq).encode("ascii", "replace"), dtype=np.uint8)
        ids = _BASE_IDS[raw]
        starts = np.arange(len(ids), dtype=np.int64)
        return Encoding(ids, np.stack([starts, starts + 1], axis=1))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        spelled = _BASE_BYTES[_checked_ids(ids, self)]
        return spelled[spelled != 0].tobytes().decode("ascii")

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"type": self.name, "vocab": list(self._VOCAB)}) + "\n")


def load_tokenizer(spec: str | os.PathLike) -> DNATokenizer:
    """``"nucleotide"``, a tokenizer.json path, or a directory holding tokenizer.json."""
    if str(spec) == NucleotideTokenizer.name:
        return NucleotideTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"tokenizer not found: {path}; {_FIX}")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); {_FIX}") from exc
    if isinstance(content, dict) and content.get("type") == NucleotideTokenizer.name:
        if content.get("vocab") != list(NucleotideTokenizer._VOCAB):
            raise TokenizerError(
                f"{path} is a nucleotide tokenizer with a different vocabulary than this "
                "version's; re-save it with NucleotideTokenizer().save"
            )
        return NucleotideTokenizer()
    return BPETokenizer.from_file(path)


def train_bpe(
    genome: Genome,
    vocab_size: int,
    out: str | os.PathLike | None = None,
    max_bp: int | None = None,
    chunk_bp: int = 1000,
) -> BPETokenizer:
    """Train a BPE tokenizer on the genome's usable intervals (held-out regions unseen).

    With ``max_bp``, evenly spaced ``chunk_bp`` chunks across all intervals are used so the
    sample covers the whole genome rather than its first records. Deterministic. Refuses,
    before training, a ``vocab_size`` the sample cannot support (``check_bpe_vocab``).
    """
    chunks = spread_chunks(genome, max_bp, chunk_bp)
    total = sum(len(i) for i in genome.intervals)
    check_bpe_vocab(vocab_size, total if max_bp is None else min(total, max_bp))
    tokenizer = BPETokenizer.train(chunks, vocab_size, chunk_bp=chunk_bp)
    if out is not None:
        tokenizer.save(out)
    return tokenizer
