"""The generation benchmark: its stage overrides, its refusals, and a dry run end to end
through rmt-train, rmt-generate and rmt-validate on a slice of the bundled E. coli."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generate import read_fasta

from benchmarks.generation import main, scaled_stages
from data import bundled_genome
from data.fasta import open_fasta
from rmt.markov import MarkovModel
from rmt.validate.report import cell

SLICE_BP = 300_000


def test_scaled_stages_scale_every_stage_of_the_experiment():
    # conf/experiment/clm_cpu.yaml: 200 steps at each of 1, 2, 4 and 8 segments.
    assert scaled_stages(0.5) == (
        "[{segments:1,steps:100},{segments:2,steps:100},{segments:4,steps:100},"
        "{segments:8,steps:100}]"
    )
    assert scaled_stages(0.001).count("steps:1}") == 4  # never a stage of no steps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--genome", "missing.fa"], "--genome missing.fa: no such file; give a FASTA"),
        (["--steps-scale", "0"], "--steps-scale 0.0: give a factor > 0"),
        (["--length", "0"], "--length 0: give the bp per sample, >= 1"),
    ],
)
def test_bad_options_are_refused_naming_the_flag(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_without_its_inputs_names_the_stage_that_writes_them(tmp_path):
    with pytest.raises(SystemExit, match=r"pretrain/eval.json is missing: run the pretrain "):
        main(["--out", str(tmp_path), "--dry-run", "--stage", "generate"])
    with pytest.raises(SystemExit, match=r"markov5.json is missing: run the generate stage"):
        main(["--out", str(tmp_path), "--dry-run", "--stage", "results"])


def write_slice(path) -> tuple[str, str]:
    """The first SLICE_BP of the bundled E. coli as a FASTA; (record name, sequence)."""
    fasta = open_fasta(bundled_genome("ecoli"))
    name = next(iter(fasta.records))
    seq = str(fasta[name][:SLICE_BP]).upper()
    path.write_text(f">{name}\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, SLICE_BP, 60)))
    return name, seq


@pytest.mark.slow
def test_a_dry_run_trains_generates_validates_and_resumes(tmp_path):
    name, seq = write_slice(tmp_path / "ecoli.fa")
    out, results = tmp_path / "run", tmp_path / "results"
    args = ["--out", str(out), "--results", str(results), "--genome", str(tmp_path / "ecoli.fa"),
            "--dry-run", "--temperature", "1.0"]  # fmt: skip
    main(args)

    # The model trained on the slice minus its last 5 %, which eval.json scored.
    evaluation = json.loads((out / "pretrain" / "eval.json").read_text())
    train_bp = SLICE_BP - int(0.05 * SLICE_BP)
    assert evaluation["regions"] == [f"{name}:{train_bp + 1}-{SLICE_BP}"]
    generated = read_fasta(out / "generated.fa")
    assert list(generated) == ["generated"] and len(generated["generated"]) == 5000
    # The BPE has a token N, and a barely trained model draws it now and then.
    assert set(generated["generated"]) <= set("ACGTN")
    # The Markov sample: fitted on the training part only, in 100 kb chunks as the CLM
    # task's baseline (no k-mer across a chunk edge), drawn with the seed.
    chunks = [seq[i : min(i + 100_000, train_bp)] for i in range(0, train_bp, 100_000)]
    expected = MarkovModel(5).fit(chunks).sample(5000, np.random.default_rng(0))
    assert read_fasta(out / "markov5.fa") == {"markov5": expected}
    assert json.loads((out / "markov5.json").read_text())["fitted_bp"] == train_bp

    report = json.loads((results / "generation.json").read_text())
    final, held = evaluation["final"], report["heldout"]
    assert held["bits_per_base"]["model"] == final["bits_per_base"]
    assert held["bits_per_base"]["markov5"] == final["markov5_bits_per_base"]
    assert held["segments"] == 8 and held["memory_gain"] == final["memory_gain"]
    summary = json.loads((out / "generate.json").read_text())
    figures = report["generation"]["t1"]
    assert figures["bp_per_s"] == summary["bp_per_s"] > 0
    assert figures["n_fraction"] == generated["generated"].count("N") / 5000
    samples = report["validation"]
    assert list(samples) == ["model_t1", "markov5_train", "markov5_reference",
                             "reference_sample", "reference_halves"]  # fmt: skip
    validated = json.loads((out / "validate" / "report.json").read_text())["metrics"]
    assert samples["model_t1"]["kmer_jsd.3"] == validated["generated"]["kmer_jsd"]["3"]
    assert samples["reference_sample"]["genes.ks"] == validated["reference_sample"]["genes"]["ks"]
    assert samples["reference_halves"]["gc.mean"] is None  # not measured for the halves
    # GC of each of the five 1 kb windows, over its A/C/G/T (an N is neither), averaged.
    for column, sample in (("model_t1", generated["generated"]), ("markov5_train", expected)):
        windows = [sample[i : i + 1000] for i in range(0, 5000, 1000)]
        gc = [sum(map(w.count, "GC")) / sum(map(w.count, "ACGT")) for w in windows]
        assert samples[column]["gc.mean"] == pytest.approx(np.mean(gc))
    assert (results / "validation.md").read_bytes() == (out / "validate" / "report.md").read_bytes()
    assert (results / "validation.png").stat().st_size > 10_000
    table = (results / "generation.md").read_text()
    assert f"| causal RMT, memory carried | {cell(final['bits_per_base'])} |" in table

    done = [out / "pretrain" / "eval.json", out / "generated.fa", out / "markov5.fa",
            out / "validate" / "report.json", out / "validate_markov" / "report.json"]  # fmt: skip
    stamps = [p.stat().st_mtime_ns for p in done]
    main(args)  # every stage done: none runs again, the results are written anew
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert json.loads((results / "generation.json").read_text())["heldout"] == held
