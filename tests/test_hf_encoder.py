"""The Hugging Face encoder adapter (rmt.hf_encoder) against the HF model itself, in fp64.

Offline: a tiny BertForMaskedLM (GENA-LM's architecture) and a BPE tokenizer.json with
GENA-LM's special tokens are built here and saved with save_pretrained; the adapter
loads them as a user's local GENA-LM directory. References are the HF model's own
forward (input ids, or inputs_embeds laid out by hand); the runner's invariants reuse
tests/test_runner.py's helpers.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from test_runner import (
    MEM,
    SEG,
    VOCAB,
    assert_grads_close,
    assert_stepping_equals_one_call,
    param_grads,
    random_batch,
    truncated_reference,
)
from tokenizers import Tokenizer, models
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, PreTrainedModel

from data import BPETokenizer, load_tokenizer
from data.errors import TokenizerError
from rmt import MemoryRunner, MLMHead
from rmt.hf_encoder import (
    LAYOUTS,
    HFEncoder,
    hf_encoder_config,
    hf_encoder_from_dict,
    load_hf_encoder,
    mlm_head_weights,
)

D, MAX_POSITIONS = 32, 64
# Tokens around the memory and the segment's tokens, per layout (None: the memory itself).
PARTS = {
    "cls_mem_sep": (["[CLS]"], None, ["[SEP]"], "tokens", ["[SEP]"]),
    "cls_mem": (["[CLS]"], None, "tokens", ["[SEP]"]),
    "mem": (None, "tokens"),
}


def bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * D,
        max_position_embeddings=MAX_POSITIONS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    rng = random.Random(0)
    tokenizer = BPETokenizer.train(["".join(rng.choices("ACGT", k=4000))], vocab_size=48)
    assert tokenizer.vocab_size >= VOCAB  # test_runner.random_batch draws ids below VOCAB
    return tokenizer


@pytest.fixture(scope="module")
def gena_dir(tmp_path_factory, tokenizer) -> Path:
    """A GENA-LM-like directory: BertForMaskedLM weights, config.json, tokenizer.json.

    The MLM head gets random weights (its LayerNorm and bias start at 1 and 0), so a
    misnamed or dropped head weight changes the logits.
    """
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config(tokenizer.vocab_size))
    with torch.no_grad():
        for p in model.cls.parameters():
            p.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("gena")
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    return path


def wrapped(path: Path, layout: str = "cls_mem_sep") -> HFEncoder:
    return load_hf_encoder(path, load_tokenizer(path), layout).double()


def hf_runner(
    path: Path, memory_tokens: int = MEM, tied: bool = True, layout: str = "cls_mem_sep", **kwargs
) -> MemoryRunner:
    torch.manual_seed(0)
    encoder = wrapped(path, layout)
    vocab = encoder.config.vocab_size
    head = MLMHead(D, vocab, encoder.embed_tokens if tied else None)
    return MemoryRunner(encoder, memory_tokens, SEG, head=head, **kwargs).double()


def with_specials(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """[CLS] ids [SEP]: what the HF model sees for one segment without memory."""
    cls = ids.new_full((ids.shape[0], 1), tokenizer.cls_id)
    return torch.cat([cls, ids, ids.new_full((ids.shape[0], 1), tokenizer.sep_id)], 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_segment_without_memory_is_the_hf_models_own_output(gena_dir, tokenizer, layout):
    runner = hf_runner(gena_dir, memory_tokens=0, layout=layout)
    ids, _ = random_batch(2, 1)
    hidden = runner(ids, return_hidden=True).hidden
    model = runner.encoder.model
    if layout == "mem":  # no special tokens at all
        want = model(input_ids=ids).last_hidden_state
    else:
        want = model(input_ids=with_specials(ids, tokenizer)).last_hidden_state[:, 1:-1]
    torch.testing.assert_close(hidden, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(runner.encoder(ids), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_and_special_tokens_sit_at_the_layouts_positions(gena_dir, tokenizer, layout):
    encoder = wrapped(gena_dir, layout)
    ids, _ = random_batch(2, 1)
    memory = torch.randn(2, MEM, D, dtype=torch.float64)
    got_memory, got_tokens = encoder.forward_with_memory(memory, ids, None)

    def embedded(part) -> torch.Tensor:
        if part is None:
            return memory
        if part == "tokens":
            return encoder.embed(ids)
        return encoder.embed(ids.new_full((2, 1), tokenizer.token_to_id(part[0])))

    parts = [embedded(part) for part in PARTS[layout]]  # one position each, memory MEM
    h = encoder.model(inputs_embeds=torch.cat(parts, 1)).last_hidden_state
    first = PARTS[layout].index(None)
    start = PARTS[layout].index("tokens") + MEM - 1
    torch.testing.assert_close(got_memory, h[:, first : first + MEM], atol=1e-12, rtol=0)
    torch.testing.assert_close(got_tokens, h[:, start : start + SEG], atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_padded_batch_equals_each_sample_alone(gena_dir, layout):
    """The closing [SEP] follows each sample's own last token, padding ids do not leak."""
    runner = hf_runner(gena_dir, layout=layout)
    ids, _ = random_batch(3, 3)
    lengths = [3 * SEG, 2 * SEG - 2, SEG // 2]  # ends at a segment's end, inside, early
    mask = torch.arange(3 * SEG)[None] < torch.tensor(lengths)[:, None]
    batched = runner(ids, mask, return_hidden=True)
    for i, n in enumerate(lengths):
        alone = runner(ids[i : i + 1, :n], return_hidden=True)
        torch.testing.assert_close(batched.hidden[i, :n], alone.hidden[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(batched.memory[i], alone.memory[0], atol=1e-12, rtol=0)


def test_stepping_segment_by_segment_equals_one_call(gena_dir):
    assert_stepping_equals_one_call(hf_runner(gena_dir))


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_gradient_of_the_last_segments_loss_reaches_exactly_k_transitions(gena_dir, depth):
    # Segment j alone uses token id 5 + j, so that embedding row has a gradient exactly
    # when the loss reaches segment j, which for j < t is through the memory segment j
    # hands on. The head is untied so it cannot touch those rows.
    runner = hf_runner(gena_dir, tied=False, bptt_depth=depth)
    segments, t = 5, 4
    ids = (5 + torch.arange(segments)).repeat_interleave(SEG)[None].repeat(2, 1)
    labels = torch.full_like(ids, -100)
    labels[:, t * SEG :] = 7  # only the last segment is scored
    for backprop in ("truncated", "replay"):
        runner.backprop = backprop
        grads = param_grads(runner, lambda: runner(ids, labels=labels).loss)
        rows = grads["encoder.model.embeddings.word_embeddings.weight"][5 : 5 + segments]
        reached = [j for j in range(segments) if rows[j].abs().sum() > 0]
        assert reached == list(range(t - depth, t + 1)), backprop
        assert (grads["memory.weight"].abs().sum() > 0) == (t <= depth), backprop


@pytest.mark.parametrize(
    "backprop, depth", [("replay", -1), ("checkpoint", -1), ("replay", 1), ("truncated", 1)]
)
def test_backprop_modes_give_the_loss_and_gradients_of_exact_bptt(gena_dir, backprop, depth):
    """Replay and checkpointing recompute the HF model's segments; the gradients are full
    BPTT's (depth -1) or exact truncation's (by brute force: a graph per segment loss)."""
    runner = hf_runner(gena_dir, bptt_depth=depth, backprop=backprop)
    ids, labels = random_batch(2, 4)
    got = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    reference = hf_runner(gena_dir)  # full BPTT, same weights (same seed)
    if depth < 0:
        want = param_grads(reference, lambda: reference(ids, labels=labels).loss)
        want_loss = reference(ids, labels=labels).loss
    else:
        want = param_grads(reference, truncated_reference(reference, ids, labels, depth))
        want_loss = truncated_reference(reference, ids, labels, depth)()
    torch.testing.assert_close(runner(ids, labels=labels).loss, want_loss, atol=1e-12, rtol=0)
    assert_grads_close(got, want)
    assert got["memory.weight"].abs().sum() > 0 and got["head.dense.weight"].abs().sum() > 0


def test_replay_recomputes_the_hf_models_dropout_masks(tokenizer):
    config = bert_config(tokenizer.vocab_size)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.2
    torch.manual_seed(0)
    encoder = HFEncoder(BertModel(config), hf_encoder_config(config, tokenizer))
    assert encoder.config.dropout == 0.2
    head = MLMHead(D, tokenizer.vocab_size, encoder.embed_tokens)
    runner = MemoryRunner(encoder, MEM, SEG, head=head).double().train()
    ids, labels = random_batch(2, 3)
    grads = {}
    for mode in ("full", "replay"):
        runner.backprop = mode
        torch.manual_seed(123)
        grads[mode] = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    assert_grads_close(grads["replay"], grads["full"])
    torch.manual_seed(124)  # other masks: other gradients, so the masks above mattered
    other = param_grads(runner, lambda: runner(ids, labels=labels).loss)
    assert (other["memory.weight"] - grads["full"]["memory.weight"]).abs().max() > 1e-6


def test_mlm_head_weights_reproduce_bert_for_masked_lm_logits(gena_dir, tokenizer):
    encoder = wrapped(gena_dir)
    head = MLMHead(D, tokenizer.vocab_size, encoder.embed_tokens)  # tied, as BERT's is
    runner = MemoryRunner(encoder, 0, SEG, head=head).double()
    missing, unexpected = runner.head.load_state_dict(mlm_head_weights(gena_dir), strict=False)
    assert (missing, unexpected) == (["decoder.weight"], [])
    runner.head.norm.eps = encoder.model.config.layer_norm_eps
    ids, _ = random_batch(2, 1)
    logits = runner.head(runner(ids, return_hidden=True).hidden)
    bert = BertForMaskedLM.from_pretrained(gena_dir, local_files_only=True).double()
    want = bert(input_ids=with_specials(ids, tokenizer)).logits[:, 1:-1]
    torch.testing.assert_close(logits, want, atol=1e-10, rtol=0)


def test_mlm_head_weights_are_empty_without_a_head(tmp_path, tokenizer):
    assert mlm_head_weights(tmp_path) == {}  # no model.safetensors
    BertModel(bert_config(tokenizer.vocab_size)).save_pretrained(tmp_path)
    assert mlm_head_weights(tmp_path) == {}  # a bare encoder has no MLM head


def test_config_round_trip_rebuilds_the_encoder_without_its_directory(gena_dir, tmp_path):
    copy = shutil.copytree(gena_dir, tmp_path / "copy")
    encoder = wrapped(copy)
    values = json.loads(json.dumps(encoder.config.to_dict()))  # as config.json records it
    shutil.rmtree(copy)
    rebuilt = hf_encoder_from_dict(values).double()
    rebuilt.load_state_dict(encoder.state_dict())
    assert rebuilt.model.config.to_dict() == encoder.config.hf  # JSON made id2label's keys str
    ids, _ = random_batch(2, 1)
    memory = torch.randn(2, MEM, D, dtype=torch.float64)
    for got, want in zip(
        rebuilt.forward_with_memory(memory, ids, None),
        encoder.forward_with_memory(memory, ids, None),
        strict=True,
    ):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_a_directory_that_is_not_an_hf_model_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"not a Hugging Face model directory \(no config\.json\)"):
        load_hf_encoder(tmp_path, tokenizer)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": D}))
    with pytest.raises(ValueError, match=r"config\.json has no model_type"):
        load_hf_encoder(tmp_path, tokenizer)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json is not a JSON object"):
        load_hf_encoder(tmp_path, tokenizer)


class IdsOnly(PreTrainedModel):
    """An HF model whose forward takes token ids only."""

    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


def test_an_encoder_without_inputs_embeds_is_refused(gena_dir):
    config = wrapped(gena_dir).config
    with pytest.raises(ValueError, match="IdsOnly does not accept inputs_embeds"):
        HFEncoder(IdsOnly(bert_config(config.vocab_size)), config)


@pytest.mark.parametrize(
    "layout, memory_tokens, longest",
    [("cls_mem_sep", MEM, 58), ("cls_mem_sep", 0, 62), ("cls_mem", MEM, 59), ("mem", MEM, 61)],
)
def test_a_segment_longer_than_the_positions_allow_is_refused(
    gena_dir, layout, memory_tokens, longest
):
    encoder = wrapped(gena_dir, layout)
    assert encoder.max_segment_tokens(memory_tokens) == longest
    memory = torch.zeros(1, memory_tokens, D, dtype=torch.float64)
    fits = encoder.forward_with_memory(memory, torch.full((1, longest), 5), None)[1]
    assert fits.shape == (1, longest, D)  # all 64 positions used
    with pytest.raises(ValueError, match=rf"set memory\.segment_tokens <= {longest}$"):
        encoder.forward_with_memory(memory, torch.full((1, longest + 1), 5), None)
    with pytest.raises(ValueError, match=rf"segment_tokens={longest + 1} .* at most {longest}$"):
        MemoryRunner(encoder, memory_tokens, longest + 1)


def test_a_tokenizer_with_more_ids_than_the_model_embeds_is_refused(tmp_path, tokenizer):
    BertModel(bert_config(tokenizer.vocab_size - 1)).save_pretrained(tmp_path)
    message = f"has {tokenizer.vocab_size} ids but the HF model embeds {tokenizer.vocab_size - 1}"
    with pytest.raises(ValueError, match=message):
        load_hf_encoder(tmp_path, tokenizer)


def test_a_tokenizer_without_a_special_token_the_layout_places_is_refused(tmp_path):
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[PAD]", "[MASK]", *"ACGTN"])}
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]")).save(
        str(tmp_path / "tokenizer.json")
    )
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \[SEP\]"):
        load_tokenizer(tmp_path)
