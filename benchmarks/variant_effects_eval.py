"""The variant-effect benchmark's statistics: LLR by SNV class and context, and the
duplication contrasts; JSON and a plot.

Gene SNVs (per genome and pooled, per context):

- mean LLR per class with a bootstrap 95 % CI (SNVs resampled);
- AUROC of nonsense vs synonymous and missense vs synonymous: the chance that a random
  synonymous SNV has the higher LLR (1: every damaging SNV ranked below every synonymous
  one; 0.5: no ranking), with the one-sided Mann-Whitney p-value of "damaging is lower";
- the same for missense vs synonymous at third codon positions only (most synonymous SNVs
  are there: a model that only knew codon positions would separate the classes);
- nonsense vs synonymous within the same base change (C>T, ...; weighted mean AUROC);
- `ordered`: the class means rank nonsense < missense < synonymous;
- long vs short context: the AUROC difference with a bootstrap 95 % CI over genes (the
  same resampled genes for both contexts, since SNVs of one gene are not independent).

Duplication (per SNV of a second copy), `long_range`: LLR and ll(REF) with the first
copy in the context through the memory (`memory`), with context cut short of it (`cut`),
and in the control without it (`control`); `local`: the first copy inside the scored
window (`dup`) vs the control. Paired differences with bootstrap 95 % CIs over regions
and the two-sided Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, rankdata, wilcoxon

from benchmarks.measure import environment
from benchmarks.variant_effects_data import read_table
from rmt.cli import write_json

CLASSES = ("synonymous", "missense", "nonsense", "start_lost", "stop_lost")
CONTRASTS = (("nonsense", "synonymous"), ("missense", "synonymous"), ("nonsense", "missense"))
# Duplication sets: name -> (directory under the run, score directories' prefix, pairs).
DUPLICATION_SETS = {
    "long_range": ("duplication", "dup", (("memory", "control"), ("memory", "cut"))),
    "local": ("duplication_local", "local", (("dup", "control"),)),
}
BOOT = 1000
SEED = 0


def scored(classes: Path, scores: Path) -> dict[str, np.ndarray]:
    """The class table joined with rmt-score's scores.tsv: effect, gene, llr, ref_ll of
    every scored SNV, as arrays."""
    by_key = {(r["chrom"], r["pos"], r["alt"]): r for r in read_table(scores)
              if r["status"] == "scored"}  # fmt: skip
    rows = [(c, by_key[(c["chrom"], c["pos"], c["alt"])]) for c in read_table(classes)
            if (c["chrom"], c["pos"], c["alt"]) in by_key]  # fmt: skip
    return {
        "effect": np.array([c.get("effect", "") for c, _ in rows]),
        "group": np.array([c.get("gene", c["chrom"]) for c, _ in rows]),
        "llr": np.array([float(s["llr"]) for _, s in rows]),
        "ref_ll": np.array([float(s["ref_ll"]) for _, s in rows]),
        # 1, 2, 3 in a codon; 0 outside genes
        "codon_pos": np.array(
            [int(c["cds_pos"]) % 3 + 1 if "cds_pos" in c else 0 for c, _ in rows]
        ),
        "change": np.array([coding_change(c) for c, _ in rows]),
    }


def coding_change(row: dict[str, str]) -> str:
    """The base change as the gene reads it ('C>T'); '' outside genes."""
    if "cds_pos" not in row:
        return ""
    at = int(row["cds_pos"]) % 3
    return f"{row['ref_codon'][at]}>{row['alt_codon'][at]}"


def same_change_auroc(s: dict[str, np.ndarray], damaging: str, neutral: str) -> float | None:
    """AUROC within each base change (C>T, ...), averaged weighted by the smaller class's
    count: a ranking that composition alone (which bases an SNV makes) cannot give."""
    aurocs, weights = [], []
    for change in np.unique(s["change"]):
        pick = s["change"] == change
        a = auroc(s["llr"][pick], s["effect"][pick], damaging, neutral)
        if a is not None:
            effect = s["effect"][pick]
            aurocs.append(a)
            weights.append(min((effect == damaging).sum(), (effect == neutral).sum()))
    return float(np.average(aurocs, weights=weights)) if aurocs else None


def mean_ci(values: np.ndarray, rng: np.random.Generator) -> dict:
    """Mean and bootstrap 95 % CI (None for fewer than 2 values)."""
    if len(values) < 2:
        return {"n": len(values), "mean": float(values.mean()) if len(values) else None,
                "ci95": None}  # fmt: skip
    boots = rng.choice(values, size=(BOOT, len(values))).mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"n": len(values), "mean": float(values.mean()), "ci95": [float(low), float(high)]}


def auroc(llr: np.ndarray, effect: np.ndarray, damaging: str, neutral: str) -> float | None:
    """P(LLR of a `neutral` SNV > LLR of a `damaging` one) (ties half); None if one is absent.

    The Mann-Whitney U over both counts' product, which is the AUROC exactly: the gene
    bootstrap (`auroc_gain`) calls this 2 x BOOT times per contrast, and sklearn's
    roc_auc_score spends ~7 ms per call validating its input (minutes per run).
    """
    pick = (effect == damaging) | (effect == neutral)
    y = effect[pick] == neutral
    positives, negatives = int(y.sum()), int((~y).sum())
    if not (positives and negatives):
        return None
    u = rankdata(llr[pick])[y].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def contrast(llr: np.ndarray, effect: np.ndarray, damaging: str, neutral: str) -> dict:
    a, b = llr[effect == damaging], llr[effect == neutral]
    p = float(mannwhitneyu(a, b, alternative="less").pvalue) if len(a) and len(b) else None
    return {"auroc": auroc(llr, effect, damaging, neutral), "mannwhitney_p_less": p,
            "n": [len(a), len(b)]}  # fmt: skip


def class_report(s: dict[str, np.ndarray]) -> dict:
    """Means per class, the contrasts, and whether the means are ordered."""
    rng = np.random.default_rng(SEED)
    means = {c: mean_ci(s["llr"][s["effect"] == c], rng) for c in CLASSES}
    m = {c: means[c]["mean"] for c in ("nonsense", "missense", "synonymous")}
    ordered = None if None in m.values() else m["nonsense"] < m["missense"] < m["synonymous"]
    third = s["codon_pos"] == 3
    return {
        "snvs": len(s["llr"]),
        "genes": len(set(s["group"].tolist())),
        "mean_llr": means,
        "contrasts": {f"{a}_vs_{b}": contrast(s["llr"], s["effect"], a, b) for a, b in CONTRASTS},
        "missense_vs_synonymous_third_position": contrast(
            s["llr"][third], s["effect"][third], "missense", "synonymous"
        ),
        "nonsense_vs_synonymous_same_change_auroc": same_change_auroc(s, "nonsense", "synonymous"),
        "ordered": ordered,
    }


def auroc_gain(long: dict, short: dict, damaging: str) -> dict:
    """AUROC(long) - AUROC(short) of `damaging` vs synonymous, CI by resampling genes."""
    rng = np.random.default_rng(SEED)
    genes = np.unique(long["group"])
    rows = {g: np.flatnonzero(long["group"] == g) for g in genes}
    same = np.array_equal(long["group"], short["group"])
    if not same:
        raise ValueError("long and short contexts scored different SNVs")

    def gain(pick: np.ndarray) -> float | None:
        a = auroc(long["llr"][pick], long["effect"][pick], damaging, "synonymous")
        b = auroc(short["llr"][pick], short["effect"][pick], damaging, "synonymous")
        return None if a is None or b is None else a - b

    point = gain(np.arange(len(long["llr"])))
    boots = [gain(np.concatenate([rows[g] for g in rng.choice(genes, len(genes))]))
             for _ in range(BOOT)]  # fmt: skip
    boots = [b for b in boots if b is not None]
    ci = np.percentile(boots, [2.5, 97.5]).tolist() if boots else None
    return {"gain": point, "ci95_genes": ci}


def pooled(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def gene_report(out: Path, genomes: list[str], contexts: tuple[str, ...]) -> dict:
    """Per genome and pooled: the class report per context and the long-vs-short gains."""
    data = {g: {c: scored(out / "data" / f"{g}.tsv", out / "scores" / f"{g}_{c}" / "scores.tsv")
                for c in contexts} for g in genomes}  # fmt: skip
    data["pooled"] = {c: pooled([data[g][c] for g in genomes]) for c in contexts}
    report = {}
    for name, by_context in data.items():
        report[name] = {c: class_report(s) for c, s in by_context.items()}
        report[name]["long_minus_short_auroc"] = {
            d: auroc_gain(by_context["long"], by_context["short"], d)
            for d in ("nonsense", "missense")
        }
    return report


def paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> dict:
    """Mean of a - b, bootstrap 95 % CI over groups (regions), Wilcoxon signed-rank p."""
    rng = np.random.default_rng(SEED)
    diff = a - b
    names = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in names}
    boots = [diff[np.concatenate([rows[g] for g in rng.choice(names, len(names))])].mean()
             for _ in range(BOOT)]  # fmt: skip
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None
    return {"mean": float(diff.mean()), "ci95_regions": np.percentile(boots, [2.5, 97.5]).tolist(),
            "wilcoxon_p": p, "n": len(diff)}  # fmt: skip


def duplication_report(out: Path, directory: str, prefix: str, pairs: tuple) -> dict:
    """One duplication set's scorings (`scores/<prefix>_<name>`) of its second copies' SNVs
    and the paired differences of `pairs`."""
    names = sorted({n for pair in pairs for n in pair})
    table = out / directory / "snvs.tsv"
    s = {n: scored(table, out / "scores" / f"{prefix}_{n}" / "scores.tsv") for n in names}
    groups = s[names[0]]["group"]
    report: dict = {"snvs": len(groups), "regions": len(set(groups.tolist()))}
    report["mean"] = {n: {"llr": float(v["llr"].mean()), "ref_ll": float(v["ref_ll"].mean())}
                      for n, v in s.items()}  # fmt: skip
    for a, b in pairs:
        report[f"{a}_minus_{b}"] = {key: paired(s[a][key], s[b][key], groups)
                                    for key in ("llr", "ref_ll")}  # fmt: skip
    return report


def evaluate(
    out: Path, genomes: list[str], contexts: tuple[str, ...], results: Path, setup: dict
) -> dict:
    """variant_effects.json and variant_effects.png into `results`."""
    results.mkdir(parents=True, exist_ok=True)
    summaries = {p.name: json.loads((p / "summary.json").read_text())
                 for p in sorted((out / "scores").iterdir())}  # fmt: skip
    report = {
        "setup": setup,
        "environment": environment("cpu"),
        "genes": gene_report(out, genomes, contexts),
        "duplication": {
            name: duplication_report(out, *spec) for name, spec in DUPLICATION_SETS.items()
        },
        "scoring": {
            n: {k: s[k] for k in ("alts_scored", "wall_s", "alts_per_s", "context")}
            for n, s in summaries.items()
        },
    }
    write_json(results / "variant_effects.json", report)
    plot(report, genomes, contexts, results / "variant_effects.png")
    return report


def short_name(genome: str) -> str:
    """escherichia_coli_DH1 -> E. coli DH1."""
    parts = genome.split("_")
    if len(parts) < 3:
        return genome
    return f"{parts[0][0].upper()}. {parts[1]} {' '.join(parts[2:])[:10]}"


def plot(report: dict, genomes: list[str], contexts: tuple[str, ...], path: Path) -> None:
    """Mean LLR per class (pooled), AUROC per genome, the duplication differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    shown = ("synonymous", "missense", "nonsense", "stop_lost", "start_lost")
    for k, c in enumerate(contexts):
        means = report["genes"]["pooled"][c]["mean_llr"]
        x = np.arange(len(shown)) + (k - 0.5) * 0.3
        y = [means[n]["mean"] for n in shown]
        err = np.array([[means[n]["mean"] - means[n]["ci95"][0],
                         means[n]["ci95"][1] - means[n]["mean"]] for n in shown]).T  # fmt: skip
        axes[0].errorbar(x, y, yerr=err, fmt="o", capsize=3, label=f"{c} context")
    axes[0].set_xticks(range(len(shown)), shown, rotation=20)
    axes[0].set_ylabel("mean LLR (nats), 95% CI")
    axes[0].set_title("pooled SNVs of 4 held-out genomes")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].legend()
    names = [*genomes, "pooled"]
    for c, d in [(c, d) for d in ("nonsense", "missense") for c in contexts]:
        y = [report["genes"][g][c]["contrasts"][f"{d}_vs_synonymous"]["auroc"] for g in names]
        axes[1].plot(range(len(names)), y, "o-" if d == "nonsense" else "s--",
                     label=f"{d} vs syn., {c}")  # fmt: skip
    axes[1].axhline(0.5, color="grey", lw=0.5)
    axes[1].set_xticks(range(len(names)), [short_name(g) for g in names], rotation=20)
    axes[1].set_ylabel("AUROC (damaging ranked lower)")
    axes[1].set_title("ranking of damaging vs synonymous SNVs")
    axes[1].legend(fontsize=8)
    labels, y, err = [], [], []
    for name, (_, _, pairs) in DUPLICATION_SETS.items():
        for a, b in pairs:
            for key in ("llr", "ref_ll"):
                d = report["duplication"][name][f"{a}_minus_{b}"][key]
                labels.append(f"{name.replace('_', ' ')}\n{key}\n{a[:3]} - {b[:3]}")
                y.append(d["mean"])
                err.append([d["mean"] - d["ci95_regions"][0], d["ci95_regions"][1] - d["mean"]])
    axes[2].errorbar(range(len(y)), y, yerr=np.array(err).T, fmt="o", capsize=3)
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[2].set_xticks(range(len(y)), labels, fontsize=7)
    axes[2].set_ylabel("paired difference (nats), 95% CI")
    axes[2].set_title("SNVs of a duplicated region's second copy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
