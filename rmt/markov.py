"""Order-k Markov chains over DNA: the baseline every generative DNA model must beat.

    model = MarkovModel(order=5).fit(train_sequences)
    model.bits_per_base(held_out)                  # ~1.9 on E. coli; 2.0 is uniform
    model.sample(10_000, np.random.default_rng(0))

An order-k model predicts a base from the k bases before it, with probabilities counted
from (k+1)-mers (order 0 is base composition, order 1 the bigram model of nanoGPT-DNA).
Counts of every order below k are kept too, so that a base with fewer than k usable bases
before it (the start of a sequence, just after an N) is scored with the longest context it
has instead of being dropped: every A/C/G/T is scored, and no window crosses an N, another
character, or the boundary between two sequences.

Everything is numpy over k-mer codes: a k-mer is the base-4 number of its bases (A=0, C=1,
G=2, T=3, first base most significant), so the counts of context ``c`` are row ``c`` of a
(4**k, 4) array. The helpers below (``encode``, ``kmer_codes``, ``kmer_spectra``) are what
``rmt.validate`` counts k-mers with.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

import numpy as np

BASES = "ACGT"
FORMAT = "rmt-markov/1"
# The largest count table fit() allocates: 4**12 int64 (128 MiB), order 11 over ACGT.
MAX_CELLS = 4**12
_SAMPLE_CHUNK = 1 << 16


def _lookup(alphabet: str) -> np.ndarray:
    """Byte -> code table: the alphabet's letters (either case) to 0..A-1, all else -1."""
    table = np.full(256, -1, dtype=np.int8)
    for i, letter in enumerate(alphabet):
        table[ord(letter.upper())] = table[ord(letter.lower())] = i
    return table


def encode(seq: str, alphabet: str = BASES) -> np.ndarray:
    """Codes of ``seq`` (int8, one per character): the alphabet's index, -1 for anything else."""
    raw = np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)
    return _lookup(alphabet)[raw]


def _number(codes: np.ndarray, size: int) -> int:
    """The code of a k-mer from its letters' codes (first letter most significant)."""
    number = 0
    for code in codes.tolist():
        number = number * size + code
    return number


def join(sequences: str | Iterable[str], alphabet: str = BASES) -> np.ndarray:
    """Codes of all ``sequences`` with a -1 between two, so that no window spans two of them.

    A single string is one sequence.
    """
    if isinstance(sequences, str):
        sequences = [sequences]
    parts = []
    for seq in sequences:
        parts += [encode(seq, alphabet), np.array([-1], dtype=np.int8)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def valid_run(codes: np.ndarray) -> np.ndarray:
    """How many valid codes end at each position (0 at an invalid one)."""
    index = np.arange(len(codes))
    last_invalid = np.where(codes < 0, index, -1)
    np.maximum.accumulate(last_invalid, out=last_invalid)
    return index - last_invalid


def window_codes(codes: np.ndarray, longest: int, size: int = 4) -> Iterator[np.ndarray]:
    """For k = 1..longest, the code of the k-mer ending at each position.

    Meaningful only where ``valid_run(codes) >= k``; each array is built from the last one
    (shift, times ``size``, plus the new digit), so all orders cost one pass each.
    """
    digits = np.where(codes < 0, 0, codes).astype(np.int64)
    code = digits
    for k in range(1, longest + 1):
        if k > 1:
            code = np.concatenate(([0], code[:-1])) * size + digits
        yield code


def kmer_codes(sequences: str | Iterable[str], k: int, alphabet: str = BASES) -> np.ndarray:
    """Codes of every k-mer of the alphabet's letters in ``sequences``, in order."""
    codes = join(sequences, alphabet)
    *_, code = window_codes(codes, k, len(alphabet))
    return code[valid_run(codes) >= k]


def kmer_spectra(
    sequences: str | Iterable[str], longest: int, alphabet: str = BASES
) -> list[np.ndarray]:
    """k-mer counts for k = 1..longest: element k-1 has length A**k, indexed by k-mer code."""
    codes = join(sequences, alphabet)
    run = valid_run(codes)
    size = len(alphabet)
    return [
        np.bincount(code[run >= k], minlength=size**k)
        for k, code in enumerate(window_codes(codes, longest, size), 1)
    ]


class MarkovModel:
    """An order-``order`` Markov chain over ``alphabet`` with add-``pseudocount`` smoothing.

    ``counts[j]`` (j = 0..order) holds the (j+1)-mer counts as a (A**j, A) array: row = code
    of the j-base context, column = the next base. Probabilities are
    ``(count + pseudocount) / (row total + A * pseudocount)``, so an unseen context predicts
    the uniform distribution.
    """

    def __init__(self, order: int, alphabet: str = BASES, pseudocount: float = 1.0) -> None:
        if not isinstance(order, int) or order < 0:
            raise ValueError(f"order={order!r}: give a whole number >= 0 (0 = base composition)")
        if (
            len(alphabet) < 2
            or len(set(alphabet.upper())) != len(alphabet)
            or not alphabet.isascii()
        ):
            raise ValueError(
                f"alphabet={alphabet!r}: give at least two distinct ASCII letters, e.g. 'ACGT'"
            )
        if len(alphabet) ** (order + 1) > MAX_CELLS:
            raise ValueError(
                f"order={order} needs {len(alphabet)}**{order + 1} counts; choose a smaller "
                f"order (at most {self._max_order(len(alphabet))} for {len(alphabet)} letters)"
            )
        if not pseudocount > 0:
            raise ValueError(f"pseudocount={pseudocount!r}: give a number > 0 (1 = Laplace)")
        self.order, self.alphabet, self.pseudocount = order, alphabet, float(pseudocount)
        self.counts: list[np.ndarray] | None = None

    @staticmethod
    def _max_order(size: int) -> int:
        order = 0
        while size ** (order + 2) <= MAX_CELLS:
            order += 1
        return order

    @property
    def size(self) -> int:
        return len(self.alphabet)

    def fit(self, sequences: str | Iterable[str]) -> MarkovModel:
        """Count the (j+1)-mers of ``sequences`` for j = 0..order (replacing earlier counts)."""
        spectra = kmer_spectra(sequences, self.order + 1, self.alphabet)
        self.counts = [c.reshape(self.size**j, self.size) for j, c in enumerate(spectra)]
        return self

    def _fitted(self) -> list[np.ndarray]:
        if self.counts is None:
            raise ValueError("this MarkovModel has no counts yet: call fit(sequences) first")
        return self.counts

    def probabilities(self, order: int | None = None) -> np.ndarray:
        """P(next base | context) as a (A**order, A) array; ``order`` defaults to the model's."""
        counts = self._fitted()[self.order if order is None else order]
        smoothed = counts + self.pseudocount
        return smoothed / smoothed.sum(axis=1, keepdims=True)

    def p(self, base: str, context: str = "") -> float:
        """P(``base`` | the last ``order`` letters of ``context``, or all of a shorter one)."""
        context = context[-self.order :] if self.order else ""
        codes = encode(context + base, self.alphabet)
        if len(base) != 1 or (codes < 0).any():
            raise ValueError(
                f"{context!r} + {base!r}: give one base and letters of {self.alphabet!r}"
            )
        row = _number(codes[:-1], self.size)
        return float(self.probabilities(len(context))[row, codes[-1]])

    def bits_per_base(self, sequences: str | Iterable[str]) -> float:
        """Mean -log2 P(base | up to ``order`` bases before it) over every scorable base.

        A base with fewer usable bases before it (sequence start, after an N) is scored with
        the order it has; letters outside the alphabet are not scored and break contexts.
        """
        codes = join(sequences, self.alphabet)
        run = valid_run(codes)
        context = np.minimum(run - 1, self.order)  # -1 at unscored positions
        total, scored = 0.0, 0
        for j, code in enumerate(window_codes(codes, self.order + 1, self.size)):
            at = context == j
            total += float(np.log2(self.probabilities(j).ravel()[code[at]]).sum())
            scored += int(at.sum())
        if scored == 0:
            raise ValueError(f"no base to score: the sequences hold no {self.alphabet} letter")
        return -total / scored

    def sample(self, length: int, rng: np.random.Generator, prompt: str = "") -> str:
        """``length`` new letters (the prompt not included), drawn base by base.

        The first letters use the context there is: the prompt's last ``order`` letters (its
        run after any N or other character), else lower orders, as in scoring.
        """
        if length < 0:
            raise ValueError(f"length={length}: give a number of bases >= 0")
        # array('d') indexes like a list at 8 bytes a cell (order 10: 45 MB, not 180).
        cdfs = [array("d", np.cumsum(self.probabilities(j), axis=1).tobytes())
                for j in range(self.order + 1)]  # fmt: skip
        tail = encode(prompt, self.alphabet)
        used = min(int(valid_run(tail)[-1]) if len(tail) else 0, self.order)
        context = _number(tail[len(tail) - used :], self.size)
        wrap, last = self.size**self.order, self.size - 1
        out = np.empty(length, dtype=np.int64)
        for start in range(0, length, _SAMPLE_CHUNK):
            for i, u in enumerate(rng.random(min(_SAMPLE_CHUNK, length - start)).tolist(), start):
                cdf, row = cdfs[used], context * self.size
                base = 0
                while base < last and u >= cdf[row + base]:
                    base += 1
                out[i] = base
                if used < self.order:
                    used += 1
                    context = context * self.size + base
                else:
                    context = (context * self.size + base) % wrap
        return np.frombuffer(self.alphabet.upper().encode(), np.uint8)[out].tobytes().decode()

    def to_dict(self) -> dict:
        """A JSON-able copy of the fitted model (counts of every order)."""
        return {
            "format": FORMAT,
            "order": self.order,
            "alphabet": self.alphabet,
            "pseudocount": self.pseudocount,
            "counts": [c.ravel().tolist() for c in self._fitted()],
        }

    @classmethod
    def from_dict(cls, saved: dict) -> MarkovModel:
        """The model ``to_dict`` saved; a malformed dict raises ValueError naming the key."""
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"not a saved MarkovModel: expected 'format': {FORMAT!r}")
        missing = [k for k in ("order", "alphabet", "pseudocount", "counts") if k not in saved]
        if missing:
            raise ValueError(f"saved MarkovModel lacks key(s) {', '.join(missing)}")
        model = cls(saved["order"], saved["alphabet"], saved["pseudocount"])
        counts = saved["counts"]
        if not isinstance(counts, list) or len(counts) != model.order + 1:
            raise ValueError(f"saved MarkovModel 'counts' must be {model.order + 1} lists")
        model.counts = []
        for j, flat in enumerate(counts):
            table = np.asarray(flat, dtype=np.int64)
            if table.shape != (model.size ** (j + 1),) or (table < 0).any():
                raise ValueError(
                    f"saved MarkovModel 'counts'[{j}] must be {model.size ** (j + 1)} counts >= 0"
                )
            model.counts.append(table.reshape(model.size**j, model.size))
        return model
