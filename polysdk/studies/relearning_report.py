"""The relearning report: headline findings beside the seed's numbers, six figures, tables.

    from polysdk.studies.relearning_report import make_report
    make_report(study, "runs/relearning")       # report.html (+ figures/*.png)

Figures: F1 through retraining per arm (overall and for the pruned concept, the seed's
points beside them); the seed's concept-saliency heat map (layer x neuron) for the
base model and each arm pruned and after the last round; per-layer mean saliency per
round; where the concept's top neurons are after retraining (regrown pruned neurons or
others); polysemantic counts per layer and round; concept similarity of the top words
before and after. The seed's own run is the ``regrow`` arm (its code let the pruned
weights regrow); ``zero`` is the method as intended, ``random`` the control.

With ``atlas`` (default on) the report also maps the detector agreement atlas
(:func:`polysdk.atlas.add_atlas`) on the word-level residual stream (one site per
layer, ``base.block3``; labels: each word's entity type) of the base model and of one arm's last round
(``regrow`` when run), recorded from the checkpoints into ``<out>/atlas.zarr``:
``<out>/atlas.html`` with its neuron pages, numbers in ``<out>/atlas_summary.json``.
Print them: ``python -m polysdk.studies.relearning_report runs/relearning-quick``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.reporting import Finding, ReportPage, colors_for, heatmap, new_figure
from polysdk.studies.relearning import SEED_NUMBERS

__all__ = ["make_report", "headline_findings", "plot_f1", "plot_saliency_maps",
           "plot_layer_saliency", "plot_where", "plot_polysemantic", "plot_similarity",
           "centre_of_mass", "add_relearning_atlas"]

PAPER = "Lo, Cohen & Barez 2024 (seed 004)"
ARM_COLORS = {"zero": "C0", "regrow": "C3", "random": "C7"}
ARM_NAMES = {"zero": "kept at zero", "regrow": "regrow (original code)",
             "random": "random neurons (control)"}


def _val(summary: Any, var: str = "f1", metric: str = "overall") -> Any:
    return summary[var].sel(split="validation", metric=metric)


def centre_of_mass(layer_values: np.ndarray) -> float:
    """Mean layer index weighted by ``layer_values`` (0 = embeddings).

    >>> centre_of_mass(np.array([1.0, 0.0, 1.0]))
    1.0
    """
    v = np.nan_to_num(np.asarray(layer_values, dtype=float))
    return float((v * np.arange(len(v))).sum() / max(v.sum(), 1e-12))


def plot_f1(summary: Any) -> Any:
    """Validation F1 against retraining epochs per arm: overall and the pruned concept."""
    tag = summary.attrs["concept_tag"]
    fig, axes = new_figure(1, 2, width=12, height=4.2)
    ep = summary["epochs"].values
    for ax, metric, title in ((axes[0, 0], "overall", "F1, all entities"),
                              (axes[0, 1], tag, f"F1, {tag} (the pruned concept)")):
        base = float(_val(summary, "base_f1", metric))
        ax.axhline(base, color="k", ls="--", lw=1, label=f"base model {base:.3f}")
        for arm in summary["arm"].values:
            y = _val(summary, metric=metric).sel(arm=arm).values
            ax.plot(ep, y, "o-", color=ARM_COLORS.get(str(arm), "C1"),
                    label=ARM_NAMES.get(str(arm), str(arm)))
        if metric == "overall":
            ax.plot([0, 2, 8], [SEED_NUMBERS["f1_pruned"], SEED_NUMBERS["f1_after_2"],
                                SEED_NUMBERS["f1_after_8"]], "x", color="k", ms=9, mew=2,
                    label=f"seed (base {SEED_NUMBERS['f1_base']})")
        ax.set(xlabel="retraining epochs (0 = just pruned)", ylabel="validation F1",
               title=title, ylim=(-0.02, 1.02))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper",
               fontsize=9)
    return fig


def plot_saliency_maps(base: Any, rounds: dict[str, list[Any]], tag: str) -> Any:
    """The seed's heat map: concept saliency of each neuron (layer x dimension), for the
    base model, then per arm just pruned and after the last round."""
    panels = [("base model", base)]
    for arm, dss in rounds.items():
        panels += [(f"{arm}: pruned", dss[0]), (f"{arm}: after {dss[-1].attrs['epochs']} "
                                                "epochs", dss[-1])]
    cols = 3 if len(panels) > 4 else len(panels)
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = new_figure(rows, cols, width=4.3 * cols, height=2.5 * rows)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    layers = base.attrs["layers"]
    for ax, (title, ds) in zip(axes.ravel(), panels):
        sal = ds["saliency"].sel(concept=tag).values
        mat = np.full((len(layers), int(ds["dim"].values.max()) + 1), np.nan)
        mat[ds["layer"].values, ds["dim"].values] = sal
        heatmap(ax, mat, label="saliency", title=title, xlabel="dimension",
                ylabel="layer", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(layers)), [lab.replace("block ", "b") for lab in layers])
    return fig


def plot_layer_saliency(summary: Any) -> Any:
    """Per-layer mean concept saliency: the base model, each round of each arm, and the
    seed's first/last-layer values before and after retraining."""
    arms = list(summary["arm"].values)
    fig, axes = new_figure(1, len(arms), width=4.3 * len(arms), height=4.0)
    x = summary["layer"].values
    labels = [lab.replace("block ", "b") for lab in summary.attrs["layers"]]
    rounds = summary["round"].values
    colors = colors_for(rounds, "plasma")
    for ax, arm in zip(axes[0], arms):
        ax.plot(x, summary["base_layer_saliency"].values, "k--", lw=1.5, label="base")
        for r, c in zip(rounds, colors):
            ep = int(summary["epochs"].values[r])
            ax.plot(x, summary["layer_saliency"].sel(arm=arm, round=r).values, "o-",
                    color=c, ms=3, label="pruned" if r == 0 else f"{ep} epochs")
        b0, b1 = SEED_NUMBERS["saliency_before"]
        a0, a1 = SEED_NUMBERS["saliency_after"]
        ax.plot([x[0], x[-1]], [b0, b1], "s:", color="grey", label="seed before (ends)")
        ax.plot([x[0], x[-1]], [a0, a1], "^:", color="green", label="seed after (ends)")
        ax.set_xticks(x, labels)
        ax.set(xlabel="layer", ylabel="mean saliency", ylim=(0, 1),
               title=ARM_NAMES.get(str(arm), str(arm)))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper",
               fontsize=9)
    return fig


def plot_where(summary: Any) -> Any:
    """The concept's top neurons per layer after the last round: regrown pruned neurons
    and neurons that were never pruned; the base model's count beside them."""
    arms = list(summary["arm"].values)
    fig, axes = new_figure(1, len(arms), width=4.3 * len(arms), height=3.8)
    x = summary["layer"].values
    labels = [lab.replace("block ", "b") for lab in summary.attrs["layers"]]
    last = int(summary["round"].values[-1])
    for ax, arm in zip(axes[0], arms):
        top = summary["concept_top"].sel(arm=arm, round=last).values
        pruned = summary["top_pruned"].sel(arm=arm, round=last).values
        ax.bar(x, top - pruned, color="C2", label="never pruned")
        ax.bar(x, pruned, bottom=top - pruned, color="C1", label="pruned, regrown")
        ax.plot(x, summary["base_concept_top"].values, "k_", ms=22, mew=2,
                label="base model")
        ax.set_xticks(x, labels)
        ax.set(xlabel="layer", ylabel=f"top-{summary.attrs['top_n']} concept neurons",
               title=f"{ARM_NAMES.get(str(arm), arm)}, last round")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper",
               fontsize=9)
    return fig


def plot_polysemantic(summary: Any) -> Any:
    """Concept top neurons also in another concept's top set: per layer after the last
    round (per arm, base dashed), and in total through retraining."""
    fig, axes = new_figure(1, 2, width=12, height=4.0)
    x = summary["layer"].values
    labels = [lab.replace("block ", "b") for lab in summary.attrs["layers"]]
    last = int(summary["round"].values[-1])
    ax = axes[0, 0]
    ax.plot(x, summary["base_poly"].values, "k--", label="base model")
    for arm in summary["arm"].values:
        ax.plot(x, summary["poly"].sel(arm=arm, round=last).values, "o-",
                color=ARM_COLORS.get(str(arm), "C1"), label=ARM_NAMES.get(str(arm), arm))
    ax.set_xticks(x, labels)
    ax.set(xlabel="layer", ylabel="polysemantic concept neurons", title="per layer, last round")
    ax = axes[0, 1]
    ax.axhline(float(summary["base_poly"].sum()), color="k", ls="--")
    for arm in summary["arm"].values:
        ax.plot(summary["epochs"].values, summary["poly"].sel(arm=arm).sum("layer").values,
                "o-", color=ARM_COLORS.get(str(arm), "C1"))
    ax.set(xlabel="retraining epochs", ylabel="polysemantic concept neurons (all layers)",
           title="through retraining")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper",
               fontsize=9)
    return fig


def plot_similarity(summary: Any) -> Any:
    """Concept similarity (cosine of mean word embeddings of a neuron's top words in the
    base model and after retraining) of the concept's top neurons, per layer."""
    fig, axes = new_figure(1, 1, width=7.5, height=4.0)
    ax = axes[0, 0]
    x = summary["layer"].values
    last = int(summary["round"].values[-1])
    for arm in summary["arm"].values:
        ax.plot(x, summary["similarity"].sel(arm=arm, round=last).values, "o-",
                color=ARM_COLORS.get(str(arm), "C1"), label=ARM_NAMES.get(str(arm), arm))
    ax.axhline(summary.attrs["similarity_random_pairs"], color="grey", ls=":",
               label="two random neurons (base)")
    ax.set_xticks(x, [lab.replace("block ", "b") for lab in summary.attrs["layers"]])
    ax.set(xlabel="layer", ylabel="similarity of top words", ylim=(0, 1.02),
           title="top words before vs after, last round")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- headlines
def headline_findings(summary: Any) -> list[Finding]:
    """The run against the seed's numbers and directions."""
    S = SEED_NUMBERS
    tag = summary.attrs["concept_tag"]
    arms = [str(a) for a in summary["arm"].values]
    ref = "regrow" if "regrow" in arms else arms[0]
    base = float(_val(summary, "base_f1"))
    f1 = _val(summary).sel(arm=ref).values
    ep = summary["epochs"].values
    rows = []
    frac = f1[0] / max(base, 1e-12)
    rows.append(Finding(
        "F1 collapses when the concept's neurons are pruned",
        run=f"{ref}: {base:.3f} -> {f1[0]:.3f} ({100 * frac:.0f}% of base; "
            f"{summary.attrs['n_prune']} of {summary.attrs['n_neurons']} neurons)",
        seed=f"{S['f1_base']} -> {S['f1_pruned']} (3% of base; 3000 of 5376)",
        verdict="agrees" if frac < 0.5 else "differs"))
    if len(f1) > 1:
        r1 = f1[1] / max(base, 1e-12)
        rows.append(Finding(
            f"Most of the F1 is back after the first round ({int(ep[1])} epochs)",
            run=f"{ref}: {f1[1]:.3f} ({100 * r1:.1f}% of base)",
            seed=f"{S['f1_after_2']} after 2 epochs (97.7% of base)",
            verdict="agrees" if r1 >= 0.9 else "differs"))
        rl = f1[-1] / max(base, 1e-12)
        rows.append(Finding(
            f"After all rounds ({int(ep[-1])} epochs) F1 is close to the base",
            run=f"{ref}: {f1[-1]:.3f} ({100 * rl:.1f}% of base)",
            seed=f"{S['f1_after_8']} after 8 epochs (99.3% of base)",
            verdict="agrees" if rl >= 0.95 else "differs"))
    bs = summary["base_layer_saliency"].values
    b0, b1 = S["saliency_before"]
    rows.append(Finding(
        "Before pruning the concept's saliency rises from first to last layer",
        run=f"per-layer means {' '.join(f'{v:.2f}' for v in bs)}",
        seed=f"{b0} ... {b1} (first to last)",
        verdict="agrees" if bs[-1] > bs[0] else "differs"))
    a0, a1 = S["saliency_after"]
    for arm in [a for a in ("regrow", "zero") if a in arms]:
        after = summary["layer_saliency"].sel(arm=arm).values[-1]
        shift = centre_of_mass(after) - centre_of_mass(bs)
        rows.append(Finding(
            f"After retraining the concept moves to earlier layers ({arm})",
            run=(f"per-layer means {' '.join(f'{v:.2f}' for v in after)}; centre of "
                 f"saliency {shift:+.2f} layers"),
            seed=f"{a0} ... {a1} (first to last: reversed)",
            verdict=("agrees" if after[0] > after[-1] else
                     "differs (earlier, not reversed)" if shift < 0 else "differs")))
    z0 = summary["layer_saliency"].sel(arm=ref).values[0]
    rows.append(Finding(
        "Much of that reversal is there before any retraining (just pruned)",
        run=(f"{ref}, just pruned: per-layer means {' '.join(f'{v:.2f}' for v in z0)}; "
             "the pruned neurons (mostly late layers) fall to the bottom of the ranking, "
             "so the rest rise"),
        seed="compared only base and retrained models"))
    if "random" in arms:
        rs = summary["layer_saliency"].sel(arm="random").values
        rows.append(Finding(
            "Random pruning moves the concept's saliency too (control)",
            run=(f"random: per-layer means just pruned {' '.join(f'{v:.2f}' for v in rs[0])}"
                 f", last round {' '.join(f'{v:.2f}' for v in rs[-1])}"),
            seed="no random control"))
        fr = _val(summary).sel(arm="random").values
        fc = _val(summary, metric=tag).sel(arm="random").values
        rows.append(Finding(
            "Pruning as many random neurons instead (control): is the collapse specific?",
            run=(f"random: F1 {fr[0]:.3f} just pruned ({tag} {fc[0]:.3f}) vs {f1[0]:.3f} for "
                 "the concept's neurons"),
            seed="no random control (the original's 'random' arm was not random)"))
    if "zero" in arms and "regrow" in arms and len(ep) > 1:
        z = _val(summary).sel(arm="zero").values
        zc = summary["concept_top"].sel(arm="zero").values[-1]
        zp = summary["top_pruned"].sel(arm="regrow").values[-1]
        rows.append(Finding(
            "Keeping the pruned neurons at zero: does the concept come back as fast?",
            run=(f"F1 after round 1: zero {z[1]:.3f}, regrow {f1[1]:.3f}; last: zero "
                 f"{z[-1]:.3f}, regrow {f1[-1]:.3f}; regrow's top {tag} neurons that were "
                 f"pruned: {int(zp.sum())} of {int(summary['concept_top'].sel(arm='regrow').values[-1].sum())}; "
                 f"zero's top neurons by layer {zc.tolist()}"),
            seed="not studied (the original always regrew)"))
    last = summary["poly"].isel(round=-1).sum("layer")
    rows.append(Finding(
        f"Neurons that take the {tag} concept back are also high for other concepts",
        run=(f"concept top neurons also top for another concept: base "
             f"{int(summary['base_poly'].sum())}; last round "
             + ", ".join(f"{a} {int(last.sel(arm=a))}" for a in arms)),
        seed="seen by eye in top tokens (not counted)"))
    return rows


def _top_word_rows(base: Any, ds: Any, tag: str, n: int = 12) -> list[dict[str, Any]]:
    from polysdk.studies.relearning_analysis import concept_similarity

    words, emb = base["word"].values, base["word_embedding"].values
    rank = ds["concept_rank"].sel(concept=tag).values
    units = np.argsort(rank)[:n]
    rows = []
    for u in units:
        before, after = base["top_word"].values[u], ds["top_word"].values[u]
        sim = concept_similarity(before[None], after[None], emb)[0]
        rows.append({"neuron": f"{ds.attrs['layers'][int(ds['layer'].values[u])]} / "
                               f"{int(ds['dim'].values[u])}",
                     "rank now": int(rank[u]),
                     "rank in base": int(base["concept_rank"].sel(concept=tag).values[u]),
                     "was pruned": bool(ds["pruned"].values[u]),
                     "top words in base": ", ".join(words[before]),
                     "top words now": ", ".join(words[after]), "similarity": float(sim)})
    return rows


def add_relearning_atlas(page: Any, study: Any, out: Path) -> Any:
    """The atlas section (see the module docstring); None when left out or when the run
    kept no checkpoint to record from."""
    from polysdk.atlas import add_atlas
    from polysdk.studies.penalty_report import ATLAS_SUMMARY, atlas_summary, atlas_tables
    from polysdk.studies.relearning_run import atlas_models, atlas_pruned, record_atlas

    cfg = study.config
    if not cfg.atlas:
        page.section("Detector agreement atlas", "Left out of this report (atlas=false); "
                     "--set atlas=true records the residual stream from the checkpoints "
                     f"({', '.join(atlas_models(study, out)) or 'none kept'}) and maps it.")
        return None
    store = record_atlas(study, out)
    if store is None:
        page.section("Detector agreement atlas", "No checkpoint of this run is kept to "
                     "record from; re-run with --fresh to get it.")
        return None
    sites = list(store.sites)   # <model>.<layer>: each layer fitted on its own
    atlas = add_atlas(page, store, out, sites=sites, pages=int(cfg.atlas_pages))
    summary = atlas_summary(atlas, {s: tuple(s.split(".", 1)) for s in sites})
    for site, pruned in atlas_pruned(study, out, store).items():
        std = np.asarray(store[site].std("sample").values, dtype=np.float64)
        summary[site]["pruned"] = pruned_flags(atlas.table(site), pruned, std)
    (out / ATLAS_SUMMARY).write_text(json.dumps(summary, indent=1))
    flagged, pairs = atlas_tables(summary)
    page.table(flagged, f"Atlas: residual neurons flagged polysemantic by each detector "
               f"({cfg.concept_split} words, labels: entity type; numbers in {ATLAS_SUMMARY})",
               left=["group", "layer"])
    page.table(pairs, "Atlas: agreement per detector pair and model: Jaccard of the flagged "
               "sets (J; 1 when both are empty) and Spearman of the scores (rho; n/a when a "
               "score is constant)", left=["detectors"])
    rows = pruned_rows(summary)
    if rows:
        page.table(rows, "Atlas on the pruned model: units flagged among the pruned ones "
                   "(their activations' std beside) and among the kept ones. A pruned unit "
                   "is near-constant; a detector that flags it reads noise as polysemanticity",
                   left=["site"])
    return atlas


def pruned_flags(table: xr.Dataset, pruned: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Of one atlas site's table, per detector: flagged units among ``pruned`` and among
    the kept ones, with both groups' sizes and mean activation ``std`` (one per unit)."""
    verdict = table["polysemantic"]
    flags = {str(d): np.asarray(verdict.sel(detector=d).values, dtype=bool)
             for d in table["detector"].values}
    return {"pruned": int(pruned.sum()), "kept": int((~pruned).sum()),
            "flagged_pruned": {d: int(f[pruned].sum()) for d, f in flags.items()},
            "flagged_kept": {d: int(f[~pruned].sum()) for d, f in flags.items()},
            **({"std_pruned": float(std[pruned].mean()), "std_kept": float(std[~pruned].mean())}
               if pruned.any() and (~pruned).any() else {})}


def pruned_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per site with a pruned unit: "flagged among pruned / among kept"."""
    rows = []
    for site, v in summary.items():
        p = v.get("pruned")
        if not p:
            continue
        row: dict[str, Any] = {"site": site, "pruned / kept": f"{p['pruned']} / {p['kept']}"}
        if "std_pruned" in p:
            row["std pruned / kept"] = f"{p['std_pruned']:.3f} / {p['std_kept']:.3f}"
        for d in p["flagged_pruned"]:
            row[d] = f"{p['flagged_pruned'][d]} / {p['flagged_kept'][d]}"
        rows.append(row)
    return rows


def make_report(study: Any, out: str | Path) -> Path:
    """Figures and ``report.html`` of a finished relearning run in ``out``."""
    from polysdk.store import ActivationStore

    paths = study.paths(out)
    store = ActivationStore(paths["store"], mode="r")
    summary = store.read_result("relearning/summary")
    base = store.read_result("relearning/base")
    cfg = study.config
    tag = summary.attrs["concept_tag"]
    rounds = {str(arm): [store.read_result(f"relearning/{arm}/round_{k}")
                         for k in summary["round"].values] for arm in summary["arm"].values}
    fig_dir = paths["figures"]
    intro = (
        f"{cfg.model} fine-tuned as a token classifier on "
        f"{'faker sentences' if cfg.data == 'faker' else cfg.data} "
        f"({'quick scale, ' if study.quick else ''}{base.attrs['n_words']} words in the "
        f"{cfg.concept_split} split, {base.attrs['concept_words']} of them {tag}); "
        f"{summary.attrs['n_prune']} of {summary.attrs['n_neurons']} residual neurons "
        f"({len(summary.attrs['layers'])} layers) pruned by "
        f"{'LayerNorm gain' + (' and bias' if cfg.zero_bias else '') if cfg.mechanism == 'layernorm' else 'a UnitMask on the LayerNorm output'}"
        f" ({cfg.ranking} ranking), then {cfg.rounds} x {cfg.epochs_per_round} epochs of "
        f"retraining. F1: seqeval, entity level, validation split. Saliency: the seed's "
        f"|(b - B)/(1 - B)| of the rank in blocks of 100; top sets: the best "
        f"{summary.attrs['top_n']} neurons per concept (poly_top_fraction). The seed ran "
        "DistilBERT on CoNLL-2003 (768 x 7 neurons); this run's numbers are ours.")
    page = ReportPage(f"Pruning and relearning: {cfg.concept}", intro)
    page.findings(headline_findings(summary))
    page.figure(plot_f1(summary), "F1 through retraining, per arm (x: the seed's points)",
                save_as=fig_dir / "f1.png")
    page.figure(plot_saliency_maps(base, rounds, tag),
                f"Concept saliency of every neuron for {tag} (the seed's heat map; 1 = top "
                "block of ranks)", save_as=fig_dir / "saliency_maps.png")
    page.figure(plot_layer_saliency(summary), "Per-layer mean saliency through retraining",
                save_as=fig_dir / "layer_saliency.png")
    page.figure(plot_where(summary), f"Where the {tag} concept is after retraining",
                save_as=fig_dir / "where.png")
    page.figure(plot_polysemantic(summary), "Polysemantic concept neurons",
                save_as=fig_dir / "polysemantic.png")
    page.figure(plot_similarity(summary), "Concept similarity of the top words",
                save_as=fig_dir / "similarity.png")
    table = [{"arm": "base", "epochs": "-", "F1": float(_val(summary, "base_f1")),
              f"F1 {tag}": float(_val(summary, "base_f1", tag)),
              "test F1": float(summary["base_f1"].sel(split="test", metric="overall")),
              "polysemantic": int(summary["base_poly"].sum()),
              "centre of saliency": centre_of_mass(summary["base_layer_saliency"].values)}]
    for arm in summary["arm"].values:
        for r in summary["round"].values:
            s = summary.sel(arm=arm, round=r)
            table.append({"arm": str(arm), "epochs": int(s["epochs"]),
                          "F1": float(_val(s)), f"F1 {tag}": float(_val(s, metric=tag)),
                          "test F1": float(s["f1"].sel(split="test", metric="overall")),
                          "polysemantic": int(s["poly"].sum()),
                          "centre of saliency": centre_of_mass(s["layer_saliency"].values)})
    page.table(table, "F1 and counts per arm and round", left=["arm"])
    extra = [{"quantity": "probe-free vs probe: overlap of the top prune sets (Jaccard)",
              "value": summary.attrs.get("probe_overlap", "not run")},
             {"quantity": "elastic-net probe train accuracy",
              "value": summary.attrs.get("probe_accuracy", "not run")},
             {"quantity": "similarity of two random neurons' top words",
              "value": summary.attrs["similarity_random_pairs"]},
             {"quantity": "seconds fine-tuning the base", "value":
              summary.attrs["base_seconds_train"]},
             {"quantity": "seconds retraining per arm", "value":
              summary.attrs["seconds_train_per_arm"]}]
    page.table(extra, "Rankings and timing", left=["quantity"])
    for arm in [a for a in ("regrow", "zero") if a in rounds]:
        page.table(_top_word_rows(base, rounds[arm][-1], tag),
                   f"Top {tag} neurons after retraining ({arm}): their top words",
                   left=["neuron", "top words in base", "top words now"])
    add_relearning_atlas(page, study, Path(out))
    page.config(json.loads(json.dumps(study.record(), default=str)))
    return page.write(paths["report"])


if __name__ == "__main__":   # the atlas numbers of a run (written by its report)
    import sys

    from polysdk.studies.penalty_report import print_atlas

    run = sys.argv[1] if len(sys.argv) > 1 else "runs/relearning-quick"
    print_atlas(run)
    from polysdk.studies.penalty_report import ATLAS_SUMMARY as _SUMMARY

    pruned = pruned_rows(json.loads((Path(run) / _SUMMARY).read_text()))
    if pruned:
        print("on the pruned model, flagged among pruned / among kept units:")
        for r in pruned:
            print("  " + "  ".join(f"{k} {v}" for k, v in r.items()))

