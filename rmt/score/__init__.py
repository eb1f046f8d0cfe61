"""rmt-score: zero-shot variant effect scores from a VCF with a trained RMT (a Hydra app).

    rmt-score checkpoint=runs/x data.fasta='[ref.fa.gz]' variants=calls.vcf.gz output=out/
    rmt-score checkpoint=runs/x variants=calls.vcf output=out/ strand=both \\
              contig_map='{NC_007795: NC_007795.1}' ref_mismatch=skip
    torchrun --nproc_per_node=4 -m rmt.score checkpoint=runs/x variants=... output=out/

From Python: ``run_scoring(ScoreOptions(checkpoint=..., variants=..., output=...))``
returns the summary.

The score of an ALT is a masked marginal log-likelihood ratio, LLR = ll(ALT) - ll(REF),
in nats. For each allele, the window [pos - flank, pos + len(REF) + flank) of the
reference (``context.flank`` bp, clipped to the record) is tokenised on its own with the
allele spelled in place of REF (with BPE an allele changes the token boundaries), and
appended to the reference before it: the context (``context.upstream`` bp before the
block of ``context.block`` bp the window starts in, tokenised once per block and streamed
through the memory over many segments), then the bases from the block's start to the
window (tokenised once per variant). The window tokens that overlap the allele's bases
are all replaced by [MASK] at once, and ll(allele) is the sum of their log p(true token)
from the MLM head (rmt/score/alleles.py and scoring.py have the exact definition).
Alleles of different lengths are scored over different numbers of tokens, so an indel's
LLR is not on an SNV's scale. ``strand=both`` scores the reverse complement the same way
(its upstream is the forward strand's downstream) and averages the two strands' ll.

SNVs, MNVs and short indels (both alleles at most ``context.flank`` bp) are scored, every
ALT of a multi-allelic record on its own; symbolic and breakend alleles, ALTs past the
record end, and (with ``ref_mismatch=skip``) records whose REF does not match the FASTA
are skipped and counted. OUT gets ``scored.vcf[.gz]`` (the input, byte for byte, with
the score as an INFO field, ``info_key``), ``scores.tsv`` and ``summary.json``; a killed
run rerun with the same command resumes and ends with byte-identical outputs. Under
torchrun the ranks divide the chunks and rank 0 assembles: N ranks write the bytes one
process writes, and a killed run resumes under any number of ranks (``app``).

The package, in the order a run goes through it:

- ``options``: ``ScoreOptions``, the typed and validated conf/score.yaml;
- ``vcf``: records read through pysam, contig names mapped, checked against the FASTA;
- ``alleles``: sites, windows and tokens of each allele on each strand;
- ``plan``: allele rows grouped into blocks (shared contexts) and chunks (units of work);
- ``scoring``: contexts through the memory, masked allele rows, batched;
- ``spool``: each rank's scored rows and resume point, gathered at the end;
- ``outputs``: the output directory's identity and finished mark, the TSV and the VCF;
- ``app``: ``run_scoring`` and the Hydra ``main``.
"""

from rmt.score.app import main, run_scoring
from rmt.score.options import ContextOptions, ScoreOptions, score_options

__all__ = ["ContextOptions", "ScoreOptions", "main", "run_scoring", "score_options"]
