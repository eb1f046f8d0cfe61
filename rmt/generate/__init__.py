"""rmt-generate: DNA sampled from a causal RMT, as long as asked, at flat memory (Hydra app).

    rmt-generate checkpoint=runs/x output=gen.fa length=100000
    rmt-generate checkpoint=runs/x output=gen.fa prompt=genome.fa:chr1:10001-20000 \\
                 length=5000 batch=8 temperature=0.8 top_p=0.95 seed=1

From Python: ``run_generation(GenerateOptions(checkpoint=..., output=...))`` returns the
summary.

The checkpoint must hold a causal model (rmt-train task=clm model.causal=true); a
checkpoint directory or a run directory (its checkpoints/latest), as for rmt-infer. The
prompt streams through the memory segment by segment; then each token is drawn from the
model's next-token distribution (``temperature``, ``top_k``, ``top_p``; never a token
spelling anything but A, C, G, T: no special token, no N), decoded over a key/value
cache, and each segment's memory is written when it fills, so memory use does not grow
with ``length``. Every record gets exactly ``length`` bp of A, C, G and T (the last
token's bases cut to fit). OUT.fa gets ``batch`` records (``record_name``, or
``record_name_1`` ... for a batch) in ``line_width``-base lines, written atomically;
generate.json beside it (or at ``summary``) the settings, bp/s and peak RSS.

The package, in the order a run goes through it:

- ``options``: ``GenerateOptions``, the typed and validated conf/generate.yaml;
- ``prompt``: the prompt's syntax and its bases (typed in, or a FASTA region);
- ``sample``: logits filtered (temperature, top-k, top-p) and the token loop;
- ``app``: the model and prompt loaded, the FASTA spooled and assembled, ``main``.
"""

from rmt.generate.app import main, run_generation
from rmt.generate.options import GenerateOptions, generate_options

__all__ = ["GenerateOptions", "generate_options", "main", "run_generation"]
