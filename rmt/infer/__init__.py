"""rmt-infer: whole-chromosome streaming inference with a trained RMT (a Hydra app).

    rmt-infer checkpoint=runs/x output=out/                      # every record, + strand
    rmt-infer checkpoint=runs/x data.fasta='[genome.fa.gz]' regions='[chr1:1-100000]' \\
              strand=both tracks.masked_stride=4 output=out/
    torchrun --no-python --nproc_per_node=4 rmt-infer checkpoint=runs/x output=out/ \\
              parallel.shards=4 parallel.streams=32                # one rank per GPU

From Python: ``run_inference(InferOptions(checkpoint=..., output=...))`` returns the summary.

Each region is tokenized as it is read (``data.streaming``: token for token what
tokenizing it at once would give) and fed through ``runner.step`` segment by segment,
carrying memory, so peak memory does not depend on its length. Several streams run as one
batch: regions, strands, and ``parallel.streams`` parts of every long region, each part
started ``parallel.burn_in`` segments early with those outputs discarded, so that its
memory is warm when its own sequence begins.

OUT gets per-strand tracks (``logprob.plus.bw``/``.bedGraph``: log p(observed token) from
an unmasked pass; ``masked.*`` with ``tracks.masked_stride=k``: a pseudo-log-likelihood
from k passes, each masking every k-th token), ``embeddings.h5`` (per segment: mean-pooled
hidden state and the memory after it; optionally per token) and ``summary.json``.
Outputs are spooled to ``OUT/spool/`` as they are produced and assembled at the end
(``rmt.writers``). The jobs are divided into ``parallel.shards`` shards, balanced by bp,
each streamed in batch slots of its own; under torchrun the ranks divide the shards
(``rmt.infer.ranks``) and rank 0 assembles, so N ranks write the bytes one process
writes (the shards decide the outputs, the ranks only where each runs). Every
``save_every`` steps a shard's resume state is written atomically; a killed run rerun
with the same command, under any number of ranks up to the shards, continues every
shard from its own and ends with byte-identical outputs. A rerun with a different
configuration refuses unless ``overwrite=true``.
N runs are not scored (``gaps``). ``data.fasta`` defaults to the FASTA the model was
trained on. One run at a time writes into OUT (``rmt.lock``, held by rank 0); the
checkpoint, FASTA, regions and model are all loaded before OUT is touched, so a run
that cannot start claims nothing. ``checkpoint`` may also be a local Hugging Face encoder directory
(GENA-LM, a BERT saved with ``save_pretrained`` beside its tokenizer.json): it runs
segment by segment with no memory (none was trained), wrapped as ``hf.*`` says; its
tracks need the BERT masked-LM head in its weights, else only embeddings are written.

The package, in the order a run goes through it:

- ``options``: ``InferOptions``, the typed and validated conf/infer.yaml;
- ``plan``: the FASTA, regions -> jobs (a stretch on one strand, or a part) -> shards,
  saved once;
- ``gaps``: the regions' N runs, left out of the jobs;
- ``ranks``: the shards a rank runs, and where the ranks of a torchrun meet;
- ``stream``: a shard's jobs through the model in fixed batch slots, spooled, resumable;
- ``score``: one batched step: log-probabilities (plain and masked), pooled states;
- ``outputs``: the output directory's identity, spool rows, the final assembly;
- ``summary``: the shards' counters merged, summary.json;
- ``app``: ``run_inference`` and the Hydra ``main``.
"""

from rmt.infer.app import main, run_inference
from rmt.infer.options import (
    EmbeddingsOptions,
    InferDataOptions,
    InferOptions,
    ParallelOptions,
    StreamOptions,
    TracksOptions,
    infer_options,
)

__all__ = [
    "EmbeddingsOptions",
    "InferDataOptions",
    "InferOptions",
    "ParallelOptions",
    "StreamOptions",
    "TracksOptions",
    "infer_options",
    "main",
    "run_inference",
]
