"""Masked-language-model batches drawn from a Genome.

Training samples random windows sized from the tokenizer's measured compression, so a
window of ``num_tokens`` tokens needs one fetch and one tokenizer call: as one seeded
stream (``sample``) or row by row from keys (``sample_keys``, what rmt-train uses).
Evaluation tiles a region contiguously with fixed masks so repeated evaluations are
directly comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from data.genome import Genome, Window
from data.masking import mask_tokens
from data.regions import Region
from data.tokenizers import DNATokenizer

_MEASURE_WINDOWS = 8
_MEASURE_BP = 10_000


@dataclass
class Batch:
    """``input_ids`` (B, T) long, ``attention_mask`` (B, T) bool (False = padding),
    ``labels`` (B, T) long with ``IGNORE_INDEX`` (-100) where no loss is taken, and the
    genomic window each row covers (trimmed to the bases its tokens spell)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    windows: list[Window]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with its tensors on ``device``."""
        return Batch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.windows,
        )


def _trim(window: Window, bp: int) -> Window:
    """Keep the first ``bp`` bases of ``window.seq``, adjusting forward-strand coordinates."""
    if bp == len(window):
        return window
    if window.strand == "+":
        return replace(window, end=window.start + bp, seq=window.seq[:bp])
    return replace(window, start=window.end - bp, seq=window.seq[:bp])


class MLMBatches:
    """Deterministic stream of masked DNA batches (resumable via ``state_dict``).

    Args:
        genome: where windows come from (its exclude regions are never sampled).
        tokenizer: turns windows into ids.
        mask_prob: fraction of tokens selected for the MLM loss.
        rc_prob: probability that a window is reverse-complemented.
        bp_per_token: tokenizer compression; measured on a few windows when None.
        headroom: windows are ``headroom`` times longer than the expected bp of
            ``num_tokens`` tokens, so they rarely run short and need padding.
        seed: seeds window sampling and masking.
    """

    def __init__(
        self,
        genome: Genome,
        tokenizer: DNATokenizer,
        *,
        mask_prob: float = 0.15,
        rc_prob: float = 0.5,
        bp_per_token: float | None = None,
        headroom: float = 1.3,
        seed: int = 0,
    ) -> None:
        if headroom < 1.0:
            raise ValueError(f"headroom must be >= 1, got {headroom}")
        self.genome = genome
        self.tokenizer = tokenizer
        self.mask_prob = mask_prob
        self.rc_prob = rc_prob
        self.headroom = headroom
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._torch_rng = torch.Generator().manual_seed(seed)
        if bp_per_token is None:
            bp_per_token = self._measure_bp_per_token()
        if not bp_per_token > 0:
            raise ValueError(f"bp_per_token must be > 0, got {bp_per_token}")
        self.bp_per_token = float(bp_per_token)

    def _measure_bp_per_token(self) -> float:
        # Own generator: whether bp_per_token is given must not change the batch stream.
        rng = np.random.default_rng([self.seed, 1])
        windows = [
            self.genome.sample_window(_MEASURE_BP, rng, rc_prob=0.0)
            for _ in range(_MEASURE_WINDOWS)
        ]
        bases = sum(len(w.seq) for w in windows)
        return bases / sum(len(self.tokenizer.encode(w.seq)) for w in windows)

    def window_bp(self, num_tokens: int) -> int:
        """Window length in bp fetched for ``num_tokens`` tokens."""
        return math.ceil(num_tokens * self.bp_per_token * self.headroom)

    def _row(self, window: Window, num_tokens: int) -> tuple[np.ndarray, Window]:
        """The first ``num_tokens`` ids of ``window`` and the window trimmed to them."""
        enc = self.tokenizer.encode(window.seq)
        n = min(num_tokens, len(enc))
        return enc.ids[:n], _trim(window, int(enc.offsets[n - 1, 1]))

    def _pad(self, rows: list[tuple[np.ndarray, Window]], num_tokens: int):
        """Right-pad the rows' ids to ``num_tokens``: (input_ids, attention_mask)."""
        input_ids = torch.full((len(rows), num_tokens), self.tokenizer.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), num_tokens), dtype=torch.bool)
        for i, (ids, _) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.from_numpy(ids)
            attention_mask[i, : len(ids)] = True
        return input_ids, attention_mask

    def _mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator):
        tok = self.tokenizer
        return mask_tokens(
            input_ids,
            mask_id=tok.mask_id,
            vocab_size=tok.vocab_size,
            special_ids=tok.special_ids,
            generator=generator,
            mask_prob=self.mask_prob,
            attention_mask=attention_mask,
        )

    def _batch(
        self, rows: list[tuple[np.ndarray, Window]], num_tokens: int, generator: torch.Generator
    ) -> Batch:
        """Right-pad the rows to ``num_tokens`` and mask them with one generator."""
        input_ids, attention_mask = self._pad(rows, num_tokens)
        masked, labels = self._mask(input_ids, attention_mask, generator)
        return Batch(masked, attention_mask, labels, [window for _, window in rows])

    def sample(self, batch_size: int, num_tokens: int) -> Batch:
        """``batch_size`` random windows of ``num_tokens`` tokens each, masked.

        Rows whose window runs out of sequence (end of a short record or interval) are
        right-padded with ``pad_id`` and attention_mask False.
        """
        _check_sizes(batch_size, num_tokens)
        length = self.window_bp(num_tokens)
        rows = [
            self._row(
                self.genome.sample_window(length, self._rng, rc_prob=self.rc_prob), num_tokens
            )
            for _ in range(batch_size)
        ]
        return self._batch(rows, num_tokens, self._torch_rng)

    def sample_keys(self, keys: Sequence[Sequence[int]], num_tokens: int) -> Batch:
        """One masked window of ``num_tokens`` tokens per key, e.g. (step, sample index).

        Each row draws its window, strand and mask from its own generator, seeded by
        ``(seed, *key)``: a row does not depend on which other rows share its batch, nor
        on any stream state, so data-parallel ranks can each build only their own rows
        and a resumed run needs no saved RNG state.
        """
        _check_sizes(len(keys), num_tokens)
        length = self.window_bp(num_tokens)
        rows, generators = [], []
        for key in keys:
            rng = np.random.default_rng([self.seed, *key])
            window = self.genome.sample_window(length, rng, rc_prob=self.rc_prob)
            rows.append(self._row(window, num_tokens))
            generators.append(torch.Generator().manual_seed(int(rng.integers(2**63))))
        input_ids, attention_mask = self._pad(rows, num_tokens)
        masked = [
            self._mask(input_ids[i : i + 1], attention_mask[i : i + 1], g)
            for i, g in enumerate(generators)
        ]
        return Batch(
            torch.cat([ids for ids, _ in masked]),
            attention_mask,
            torch.cat([labels for _, labels in masked]),
            [window for _, window in rows],
        )

    def tile(
        self, region: Region | str, batch_size: int, num_tokens: int, mask_seed: int = 1234
    ) -> Iterator[Batch]:
        """Evaluation batches covering ``region`` contiguously, in order, '+' strand.

        Each row starts where the previous row's tokens ended, so every base is scored
        exactly once; the last row may be padded and the last batch may have fewer rows.
        Masks depend only on ``mask_seed``, so repeated evaluations are identical.
        """
        _check_sizes(batch_size, num_tokens)
        region = self.genome.resolve_region(region)
        generator = torch.Generator().manual_seed(mask_seed)
        length = self.window_bp(num_tokens)
        rows: list[tuple[np.ndarray, Window]] = []
        pos = region.start
        while pos < region.end:
            end = min(pos + length, region.end)
            seq = self.genome.fetch(region.chrom, pos, end)
            ids, window = self._row(Window(region.chrom, pos, end, "+", seq), num_tokens)
            rows.append((ids, window))
            pos = window.end
            if len(rows) == batch_size:
                yield self._batch(rows, num_tokens, generator)
                rows = []
        if rows:
            yield self._batch(rows, num_tokens, generator)

    def state_dict(self) -> dict:
        """RNG states (and the compression in use) so a resumed run draws the same batches."""
        return {
            "numpy_rng": self._rng.bit_generator.state,
            "torch_rng": self._torch_rng.get_state(),
            "bp_per_token": self.bp_per_token,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._rng.bit_generator.state = state["numpy_rng"]
        self._torch_rng.set_state(state["torch_rng"])
        self.bp_per_token = float(state["bp_per_token"])


def _check_sizes(batch_size: int, num_tokens: int) -> None:
    if batch_size < 1 or num_tokens < 1:
        raise ValueError(
            f"batch_size and num_tokens must be >= 1, got {batch_size} and {num_tokens}"
        )
