"""Task heads (rmt.heads): losses against torch references, normalisation, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import BPETokenizer
from data.masking import IGNORE_INDEX
from rmt import EncoderConfig, MemoryRunner, build_runner, load_model, save_checkpoint
from rmt.heads import HEADS, SequenceHead, TokenClassificationHead, build_task_head
from rmt.integrity import CheckpointError
from rmt.token_bases import max_token_bases, token_base_labels

D = 32


def tiny_runner(vocab_size: int, memory_tokens: int = 4, segment_tokens: int = 16) -> MemoryRunner:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=vocab_size, d_model=D, n_layers=2, n_heads=2)
    options = {"memory_tokens": memory_tokens, "segment_tokens": segment_tokens}
    return build_runner(config, options, kernels="torch").eval()


def inputs(batch: int = 3, m: int = 4, s: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    memory, hidden = torch.randn(batch, m, D, generator=g), torch.randn(batch, s, D, generator=g)
    mask = torch.arange(s) < torch.tensor([s, 2, 1])[:batch, None]
    return memory, hidden, mask


@pytest.mark.parametrize("pool", ["memory", "mean", "both"])
def test_sequence_head_pools_what_it_says(pool: str) -> None:
    head = SequenceHead(D, 3, pool=pool)
    memory, hidden, mask = inputs()
    pooled = head.pooled(memory, hidden, mask)
    mean = torch.stack([hidden[i, mask[i]].mean(0) for i in range(3)])
    want = {"memory": memory.mean(1), "mean": mean, "both": torch.cat([memory.mean(1), mean], 1)}
    torch.testing.assert_close(pooled, want[pool])
    assert head(memory, hidden, mask).shape == (3, 3)


def test_a_fresh_classifier_starts_near_uniform_and_scores_cross_entropy() -> None:
    head = SequenceHead(D, 4, kind="classification", pool="both")
    memory, hidden, mask = inputs()
    logits = head(memory, hidden, mask)
    assert logits.abs().max() < 0.1
    targets = torch.tensor([0, 3, 1])
    torch.testing.assert_close(
        head.loss(logits, targets), F.cross_entropy(logits, targets, reduction="none")
    )


def test_regression_predicts_in_original_units_and_scores_normalised_mse() -> None:
    head = SequenceHead(D, 2, kind="regression", pool="mean", names=["tm", "gc"])
    head.set_normalization(torch.tensor([60.0, 0.5]), torch.tensor([10.0, 0.1]))
    memory, hidden, mask = inputs()
    out = head(memory, hidden, mask)
    scale = torch.tensor([10.0, 0.1])
    assert ((out - torch.tensor([60.0, 0.5])) / scale).abs().max() < 0.1  # starts near the mean
    targets = torch.tensor([[70.0, 0.4], [50.0, 0.6], [60.0, 0.5]])
    want = (((out - targets) / scale) ** 2).sum(1)
    torch.testing.assert_close(head.loss(out, targets), want)
    one = SequenceHead(D, 1, kind="regression", pool="mean")
    single = one(memory, hidden, mask)
    torch.testing.assert_close(one.loss(single, torch.ones(3)), ((single[:, 0] - 1) ** 2))


def test_token_head_loss_is_cross_entropy_over_labelled_bases_only() -> None:
    head = TokenClassificationHead(D, 3, max_token_bases=4)
    hidden = torch.randn(2, 5, D)
    labels = torch.randint(0, 3, (2, 5, 4))
    labels[0, 1:, 2:] = IGNORE_INDEX  # short tokens
    labels[1, 3:] = IGNORE_INDEX  # padding tokens
    total, count = head.loss(hidden, labels)
    logits = head(hidden)
    assert logits.shape == (2, 5, 4, 3)
    want = F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(total, want)
    assert int(count) == int((labels != IGNORE_INDEX).sum())
    empty = head.loss(hidden, torch.full_like(labels, IGNORE_INDEX))
    assert float(empty[0].detach()) == 0.0 and int(empty[1]) == 0


def test_bad_head_options_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"pool='max'; choose one of \('memory', 'mean', 'both'\)"):
        SequenceHead(D, 2, pool="max")
    with pytest.raises(ValueError, match="needs num_outputs >= 2"):
        SequenceHead(D, 1, kind="classification")
    with pytest.raises(ValueError, match="2 names for a head with 3 outputs"):
        SequenceHead(D, 3, names=["a", "b"])
    with pytest.raises(ValueError, match="pool=memory needs memory tokens; use pool=mean"):
        SequenceHead(D, 2)(torch.zeros(1, 0, D), torch.zeros(1, 3, D))
    with pytest.raises(ValueError, match="type='crf'; choose one of"):
        build_task_head({"type": "crf"})
    with pytest.raises(ValueError, match=r"head='deep'; choose one of \('mlp', 'linear'\)"):
        TokenClassificationHead(D, 2, 4, head="deep")


def make_head(kind: str, head: str = "mlp") -> torch.nn.Module:
    if kind == "token":
        return TokenClassificationHead(D, 3, 6, names=["exon", "intron", "flank"], head=head)
    made = SequenceHead(D, 2, kind=kind, pool="both", head=head)
    if kind == "regression":
        made.set_normalization(torch.tensor([5.0, -1.0]), torch.tensor([2.0, 3.0]))
    return made


def output_layer(head: torch.nn.Module) -> torch.nn.Linear:
    """The head's last projection: the MLP's last layer, or the linear head itself."""
    network = head.network
    return network[-1] if isinstance(network, torch.nn.Sequential) else network


def head_outputs(runner: MemoryRunner, ids: torch.Tensor) -> torch.Tensor:
    out = runner(ids, return_hidden=True)
    if isinstance(runner.task_head, TokenClassificationHead):
        return runner.task_head(out.hidden)
    return runner.task_head(out.memory, out.hidden[:, -8:])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kind", ["classification", "regression", "token"])
def test_a_task_head_round_trips_through_a_checkpoint(
    kind: str, head: str, tmp_path: Path, lambda_bpe: BPETokenizer, lambda_genome
) -> None:
    runner = tiny_runner(lambda_bpe.vocab_size)
    runner.task_head = make_head(kind, head)
    torch.nn.init.normal_(output_layer(runner.task_head).weight)  # not the initial values
    ids = torch.from_numpy(lambda_bpe.encode(lambda_genome.fetch("NC_001416.1", 0, 300)).ids)[None]
    save_checkpoint(tmp_path / "ckpt", runner, lambda_bpe)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["task_head"] == runner.task_head.config()
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.task_head.config() == runner.task_head.config()
    assert config["task_head"]["head"] == head and type(loaded.task_head.network) is type(
        runner.task_head.network
    )
    with torch.no_grad():
        torch.testing.assert_close(head_outputs(loaded, ids), head_outputs(runner, ids))


@pytest.mark.parametrize("kind", ["classification", "regression", "token"])
def test_a_linear_head_is_one_linear_layer_on_the_features(kind: str) -> None:
    head = make_head(kind, "linear")
    assert [type(m) for m in head.children()] == [torch.nn.Linear]
    assert {name for name, _ in head.named_parameters()} == {"linear.weight", "linear.bias"}
    memory, hidden, mask = inputs()
    with torch.no_grad():
        if kind == "token":
            got, want = head(hidden).flatten(-2), head.linear(hidden)
        else:
            got = head(memory, hidden, mask)
            want = head.linear(head.pooled(memory, hidden, mask))
            want = want * head.target_std + head.target_mean
    torch.testing.assert_close(got, want)


def test_a_checkpoint_head_without_a_head_entry_is_an_mlp() -> None:
    """Heads saved before `head` existed have no entry: they rebuild as MLPs, as made."""
    config = make_head("classification").config()
    del config["head"]
    rebuilt = build_task_head(config)
    assert rebuilt.head == "mlp" and isinstance(rebuilt.network, torch.nn.Sequential)


def test_a_pretrained_checkpoint_loads_without_a_task_head(tmp_path: Path, lambda_bpe) -> None:
    save_checkpoint(tmp_path / "ckpt", tiny_runner(lambda_bpe.vocab_size), lambda_bpe)
    assert "task_head" not in json.loads((tmp_path / "ckpt" / "config.json").read_text())
    loaded, _ = load_model(tmp_path / "ckpt")
    assert getattr(loaded, "task_head", None) is None


def test_a_broken_task_head_entry_is_a_checkpoint_error(tmp_path: Path, lambda_bpe) -> None:
    runner = tiny_runner(lambda_bpe.vocab_size)
    runner.task_head = make_head("classification")
    runner.task_head.pool = "max"  # config.json (and its manifest) get an invalid entry
    save_checkpoint(tmp_path / "bad", runner, lambda_bpe)
    with pytest.raises(CheckpointError, match="invalid task_head entry: head pool='max'"):
        load_model(tmp_path / "bad")


def padded(lambda_bpe: BPETokenizer, lambda_genome, lengths=(200, 20)):
    """Right-padded ids, mask and per-base token labels of real lambda stretches."""
    limit = max_token_bases(lambda_bpe)
    seqs = [lambda_genome.fetch("NC_001416.1", 500 * i, 500 * i + n) for i, n in enumerate(lengths)]
    encodings = [lambda_bpe.encode(seq) for seq in seqs]
    width = max(len(e) for e in encodings)
    ids = torch.full((len(seqs), width), lambda_bpe.pad_id)
    labels = torch.full((len(seqs), width, limit), IGNORE_INDEX)
    for i, (seq, enc) in enumerate(zip(seqs, encodings, strict=True)):
        base_labels = np.frombuffer(seq.encode(), dtype=np.uint8) % 3  # a class per base
        ids[i, : len(enc)] = torch.from_numpy(enc.ids)
        labels[i, : len(enc)] = torch.from_numpy(token_base_labels(enc.offsets, base_labels, limit))
    return ids, ids != lambda_bpe.pad_id, labels


def test_heads_in_the_runner_score_a_padded_batch_like_each_sequence_alone(
    lambda_bpe: BPETokenizer, lambda_genome
) -> None:
    runner = tiny_runner(lambda_bpe.vocab_size, segment_tokens=8)
    token_head = TokenClassificationHead(D, 3, max_token_bases(lambda_bpe))
    final_head = SequenceHead(D, 2, pool="both")
    ids, mask, labels = padded(lambda_bpe, lambda_genome)
    targets = torch.tensor([1, 0])
    out = runner(ids, mask, labels, head=token_head, final_head=final_head, targets=targets)
    sums, counts, finals = [], [], []
    for i in range(2):  # each sequence alone, stepped segment by segment
        n = int(mask[i].sum())
        memory = runner.init_memory(1)
        for j in range(0, n, 8):
            step, memory = runner.step(ids[i : i + 1, j : min(j + 8, n)], memory)
            total, count = token_head.loss(step.hidden, labels[i : i + 1, j : min(j + 8, n)])
            sums.append(total)
            counts.append(count)
        finals.append(final_head.loss(final_head(memory, step.hidden), targets[i : i + 1]))
    assert -(-int(mask[0].sum()) // 8) > 3 and int(mask[1].sum()) <= 8  # many segments, one
    want = sum(sums) / sum(counts) + torch.cat(finals).mean()
    torch.testing.assert_close(out.loss, want)


def head_grads(runner: MemoryRunner, heads, batch, targets) -> dict[str, torch.Tensor]:
    """Gradients of the runner's and both heads' parameters from one task loss."""
    modules = {"runner": runner, "token": heads[0], "final": heads[1]}
    for module in modules.values():
        module.zero_grad(set_to_none=True)
    ids, mask, labels = batch
    runner(ids, mask, labels, head=heads[0], final_head=heads[1], targets=targets).loss.backward()
    return {
        f"{key}.{name}": p.grad.clone()
        for key, module in modules.items()
        for name, p in module.named_parameters()
        if p.grad is not None
    }


@pytest.mark.parametrize("depth", [-1, 1])
def test_replay_gives_the_task_heads_the_gradients_of_full_backprop(
    depth: int, lambda_bpe: BPETokenizer, lambda_genome
) -> None:
    runner = tiny_runner(lambda_bpe.vocab_size, segment_tokens=8).double()
    token = TokenClassificationHead(D, 3, max_token_bases(lambda_bpe)).double()
    final = SequenceHead(D, 2, "regression", "both").double()
    batch = padded(lambda_bpe, lambda_genome, lengths=(120, 20))
    targets = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    grads = {}
    for mode in ("full", "replay"):
        runner.backprop, runner.bptt_depth = mode, depth
        grads[mode] = head_grads(runner, (token, final), batch, targets)
    assert grads["full"].keys() == grads["replay"].keys()
    assert {"token.mlp.3.weight", "final.mlp.3.weight"} <= grads["full"].keys()
    for name, grad in grads["full"].items():
        torch.testing.assert_close(grads["replay"][name], grad, atol=1e-12, rtol=1e-9, msg=name)
