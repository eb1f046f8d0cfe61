"""rmt: a BPE DNA encoder wrapped by a Recurrent Memory Transformer.

    from rmt import Encoder, EncoderConfig, MemoryRunner, load_model
    runner = MemoryRunner(Encoder(EncoderConfig()), memory_tokens=8, segment_tokens=128)
    out = runner(input_ids, labels=labels)          # out.loss, out.segment_losses, out.memory

The model modules (encoder, heads, runner) import neither training nor I/O code.
"""

# ruff: noqa: E402
# First of all, before anything below imports `data`, `kernels` or `curriculum`: stop if
# one of those names would come from a user's own file rather than this distribution.
from rmt.install import check_packages

check_packages()

from rmt.checkpoint import build_runner, load_model, save_checkpoint
from rmt.encoder import Encoder, EncoderConfig
from rmt.heads import MLMHead
from rmt.runner import MemoryRunner, RunnerOutput, SegmentOutput

__all__ = [
    "Encoder",
    "EncoderConfig",
    "MLMHead",
    "MemoryRunner",
    "RunnerOutput",
    "SegmentOutput",
    "build_runner",
    "load_model",
    "save_checkpoint",
]
