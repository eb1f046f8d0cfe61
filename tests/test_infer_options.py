"""rmt-infer's typed options (conf/infer.yaml) and the head's per-token scoring."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_module

from rmt import MLMHead
from rmt.infer import InferDataOptions, InferOptions, ParallelOptions, infer_options

REQUIRED = ["checkpoint=run", "output=out"]


def options(*extra: str) -> InferOptions:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return infer_options(compose("infer", [*REQUIRED, *extra]))


def test_the_yaml_and_the_dataclass_defaults_agree():
    """Scripts that build InferOptions in Python get what the command line gets."""
    assert options() == InferOptions(checkpoint="run", output="out")


def test_options_keep_the_yaml_keys_and_accept_bare_strings():
    got = options("regions=chr1:1-100", "data.fasta=genome.fa", "strand=both", "threads=1")
    assert got.regions == ["chr1:1-100"] and got.data.fasta == ["genome.fa"]
    assert got.strands == ["+", "-"] and got.threads == 1
    listed = options("regions=[chr1:1-100,chr2]", "parallel.streams=2")
    assert listed.regions == ["chr1:1-100", "chr2"] and listed.parallel.streams == 2
    assert [f.name for f in dataclasses.fields(InferOptions)][:4] == [
        "checkpoint", "output", "overwrite", "data",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size=0 must be >= 1"),
        ("save_every=0", "save_every=0 must be >= 1"),
        ("threads=0", "threads=0 must be >= 1"),
        ("parallel.streams=0", "parallel.streams=0 must be >= 1"),
        ("parallel.burn_in=-1", "parallel.burn_in=-1 must be >= 0"),
        ("parallel.shards=0", "parallel.shards=0 must be >= 1"),
        ("stream.chunk_bp=0", "stream.chunk_bp=0 must be >= 1"),
        ("stream.margin_bp=-5", "stream.margin_bp=-5 must be >= 0"),
        ("tracks.masked_stride=-1", "tracks.masked_stride=-1 must be >= 0"),
        ("embeddings.dtype=float64", "embeddings.dtype='float64' is not one of float16, float32"),
        ("embeddings.max_token_bp=-1", "embeddings.max_token_bp=-1 must be >= 0"),
        ("strand=up", "strand='up' is not one of +, -, both"),
        ("precision=fp16", "precision='fp16' is not one of auto, fp32, bf16"),
        ("kernels=cuda", "kernels='cuda' is not one of auto, torch, triton"),
        ("regions=[]", "regions=[] is empty"),
        ("+parallel.bogus=1", "unknown config key parallel.bogus"),
    ],
)
def test_a_bad_value_names_its_full_key(override, message):
    with pytest.raises(ValueError, match="^" + message.replace("+", r"\+").replace("[", r"\[")):
        options(override)


def test_a_missing_checkpoint_or_output_says_how_to_call_the_app():
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("infer", ["checkpoint=run"])
    with pytest.raises(ValueError, match=r"^output is required: rmt-infer checkpoint=RUN_DIR"):
        infer_options(cfg)
    with pytest.raises(ValueError, match=r"^checkpoint is required"):
        InferOptions(output="out")


def test_nested_options_are_checked_when_built_in_python():
    with pytest.raises(ValueError, match=r"^parallel.min_bp=-1 must be >= 0"):
        ParallelOptions(min_bp=-1)
    assert InferDataOptions(fasta="a.fa").fasta == ["a.fa"]


def test_token_log_probs_are_the_log_softmax_of_the_observed_tokens():
    torch.manual_seed(0)
    head = MLMHead(16, 50, kernels="torch")
    hidden, ids = torch.randn(3, 7, 16), torch.randint(0, 50, (3, 7))
    want = head(hidden).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    got = head.token_log_probs(hidden, ids)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (got < 0).all()
