"""Next-base prediction (causal LM) on genomes, evaluated in bits per base.

A causal runner (`model.causal=true`, rmt.encoder) predicts every token from the tokens
before it and the memory: the label of token t is token t+1, across segment boundaries
(the last token of a segment predicts the first of the next, from its own segment's
states), and the last token of a window has none. The runner's tied head scores those
labels as it scores MLM's, so every backprop mode and the curriculum work unchanged.

Held-out evaluation reports `bits_per_base`: the summed token NLL in bits over the bases
the predicted tokens spell, comparable across tokenizers (BPE or one base per token) and
with the order-k Markov chains (`rmt.markov`) fitted on the training sequence and scored
on the same held-out windows (`markov<k>_bits_per_base`). Beside them, as for MLM, the
unigram baseline and the memory gain (rmt.evaluate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from data import IGNORE_INDEX, Batch, DNATokenizer, Genome, Region
from data.vocab_checks import spread_chunks
from rmt.evaluate import summarize, window_scores
from rmt.loss import label_counts, reduce_loss, scored_tokens
from rmt.markov import MarkovModel
from rmt.runner import MemoryRunner
from rmt.tasks import TaskBatch
from rmt.tasks.mlm import MLMTask

# Training sequence the Markov baselines count, in evenly spaced 100 kb chunks.
MARKOV_MAX_BP, MARKOV_CHUNK_BP = 10_000_000, 100_000


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, T) labels: token t+1 where both t and t+1 are content, else IGNORE_INDEX."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    both = attention_mask[:, :-1] & attention_mask[:, 1:]
    labels[:, :-1] = torch.where(both, input_ids[:, 1:], IGNORE_INDEX)
    return labels


def token_bases(tokenizer: DNATokenizer) -> torch.Tensor:
    """(vocab,) the number of bases each token spells (0 for special tokens)."""
    return torch.tensor([len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size)])


class CLMTask(MLMTask):
    """MLM's windows and loss with next-token labels (unmasked inputs); its own evaluation."""

    metrics = ("loss", "accuracy", "bits_per_base", "unigram_loss", "loss_memory_reset",
               "memory_gain")  # fmt: skip

    def __init__(
        self,
        genome: Genome,
        tokenizer: DNATokenizer,
        heldout: list[Region],
        *,
        markov_orders: Sequence[int],
        segment_tokens: int,
        loss_on: str,
        rc_prob: float,
        seed: int,
        eval_batch_size: int,
        eval_max_tokens: int | None,
        device: torch.device,
        amp: torch.dtype | None,
        memory_gain: bool = True,
    ) -> None:
        super().__init__(
            genome, tokenizer, heldout, segment_tokens=segment_tokens, loss_on=loss_on,
            mask_prob=0.0, rc_prob=rc_prob, seed=seed, eval_batch_size=eval_batch_size,
            eval_max_tokens=eval_max_tokens, device=device, amp=amp, memory_gain=memory_gain,
        )  # fmt: skip
        self.bases_per_token = token_bases(tokenizer)
        self.markov = {}
        if heldout:
            training = list(spread_chunks(genome, MARKOV_MAX_BP, MARKOV_CHUNK_BP))
            self.markov = {k: MarkovModel(k).fit(training) for k in markov_orders}
        baselines = tuple(f"markov{k}_bits_per_base" for k in self.markov)
        self.headline = ("loss", "bits_per_base", "accuracy", "unigram_loss", "loss_memory_reset",
                         "memory_gain", "memory_gain_se", *baselines)  # fmt: skip

    def sample(self, step: int, indices: Sequence[int], segments: int) -> TaskBatch:
        keys = [(step, i) for i in indices]
        batch = self.batches.sample_keys(keys, segments * self.segment_tokens)
        labels = next_token_labels(batch.input_ids, batch.attention_mask)
        scored = scored_tokens(label_counts(labels, self.segment_tokens), self.loss_on)
        return TaskBatch(batch.input_ids, batch.attention_mask, labels, int(scored))

    def heldout_batches(self, num_tokens: int):
        """The held-out regions tiled into windows of `num_tokens`, with next-token labels."""
        for region in self.heldout:
            for batch in self.eval_batches.tile(region, self.eval_batch_size, num_tokens):
                labels = next_token_labels(batch.input_ids, batch.attention_mask)
                yield replace(batch, labels=labels)

    def bases(self, batch: Batch, segment_tokens: int) -> torch.Tensor:
        """(windows, segments) bases spelled by the labelled tokens (what is predicted)."""
        labels = batch.labels.cpu()
        spelled = torch.where(labels == IGNORE_INDEX, 0, self.bases_per_token[labels.clamp(min=0)])
        return torch.stack([c.sum(1) for c in spelled.double().split(segment_tokens, 1)], 1)

    @torch.no_grad()
    def evaluate(self, runner: MemoryRunner, segments: int) -> dict:
        """Loss (nats per token), accuracy and bits per base on the held-out windows (the
        segments `runner.loss_on` scores), the unigram and Markov baselines, the memory gain."""
        if not self.heldout:
            return {}
        was_training = runner.training
        runner.eval()
        reset = self.memory_gain and runner.memory_tokens > 0
        tables, windows, tokens = [], [], 0
        for batch in self.heldout_batches(segments * runner.segment_tokens):
            scores = window_scores(runner, batch.to(self.device), self.amp, self.unigram, reset)
            tables.append({**scores, "bases": self.bases(batch, runner.segment_tokens)})
            windows += [window.seq for window in batch.windows]
            tokens += int(batch.attention_mask.sum())
            if self.eval_max_tokens is not None and tokens >= self.eval_max_tokens:
                break
        runner.train(was_training)
        table = {key: torch.cat([t[key] for t in tables]) for key in tables[0]}
        result = summarize(table, runner.loss_on, True, reset)
        nats = reduce_loss(table["loss"].sum(0), table["bases"].sum(0), runner.loss_on)
        result["bits_per_base"] = float(nats) / math.log(2)
        result["bases"] = int(scored_tokens(table["bases"].sum(0), runner.loss_on))
        for k, model in self.markov.items():
            result[f"markov{k}_bits_per_base"] = model.bits_per_base(windows)
        return {**result, "tokens": tokens}


__all__ = ["CLMTask", "next_token_labels", "token_bases"]
