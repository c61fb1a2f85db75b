"""The penalty study's report: headline against seed 001, firing heat maps, n-cut vs Z.

    from polysdk.studies.penalty_report import make_report
    make_report(study, "runs/penalty")        # runs/penalty/report.html (+ figures/*.png)

Figures follow the seed: per hidden layer, the class x neuron firing frequency on the
test set (its Fig. 1 and 2; neurons sorted by preferred class, then by rate), one row
per group (first trial); n-cut against Z for every trial with its left p-value written
beside the point (its Fig. 3); both accuracies per trial; the null distributions.

Then the detector agreement atlas (:func:`polysdk.atlas.add_atlas`) on the test-set
activations of each group's representative network (sites ``<group>.<layer>``, recorded
by the study's ``finish``): ``<out>/atlas.html`` with its neuron pages, the agreement
heat maps and two tables here (flagged units per detector; Jaccard / Spearman per
detector pair and group), and the numbers in ``<out>/atlas_summary.json``. Print them:

    .venv/bin/python -m polysdk.studies.penalty_report runs/penalty-soft-quick
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import json
import sys

import numpy as np

from polysdk.reporting import Finding, ReportPage, colors_for, heatmap, new_figure

__all__ = ["make_report", "SEED", "group_table", "headline_findings", "atlas_summary",
           "add_penalty_atlas", "print_atlas", "ATLAS_SUMMARY"]

#: the atlas numbers of a run, beside its report
ATLAS_SUMMARY = "atlas_summary.json"

#: seed 001's MNIST numbers (methods.md; p from its clusterability_results_k12.csv)
SEED = {
    "alpha_0": {"elementwise": 0.996, "n_cut": 10.06, "z": -3.4, "p_lt_05": "4/5"},
    "alpha_+1": {"elementwise": 0.993, "n_cut": 9.63, "z": -9.7, "p_lt_05": "5/5"},
    "alpha_-1": {"elementwise": 0.82, "n_cut": 10.18, "z": 6.2, "p_lt_05": "0/5"},
}
SEED_FASHION = {"alpha_0": (9.88, -6.9), "alpha_+1": (9.58, 1.1), "alpha_-1": (10.21, 0.6)}


def alive_measures(ds: Any) -> tuple[float, float, float]:
    """Over the hidden neurons that fire at all: the fraction firing for every class, the
    fraction firing on >= 99% of the inputs of every class ("for all inputs"), and their
    mean firing frequency (each a mean over layers)."""
    alls, always, means = [], [], []
    for layer in ds["layer"].values:
        rate = ds["firing_rate"].sel(layer=layer).values      # (class, unit)
        rate = rate[:, ~np.isnan(rate).all(0)]
        alive = rate.max(0) > 0
        alls.append(float((rate[:, alive] > 0).all(0).mean()) if alive.any() else 0.0)
        always.append(float((rate[:, alive] >= 0.99).all(0).mean()) if alive.any() else 0.0)
        means.append(float(rate[:, alive].mean()) if alive.any() else 0.0)
    return float(np.mean(alls)), float(np.mean(always)), float(np.mean(means))


def add_alive(summary: Any, results: dict[str, Any]) -> Any:
    """``summary`` with ``alive_all_classes`` and ``alive_mean_rate`` per run."""
    vals = np.array([alive_measures(results[str(r)]) for r in summary["run"].values])
    return summary.assign(alive_all_classes=("run", vals[:, 0]),
                          alive_always=("run", vals[:, 1]), alive_mean_rate=("run", vals[:, 2]))


def _seed_key(alpha: float) -> str:
    return "alpha_0" if alpha == 0 else f"alpha_{alpha:+g}"


def _order(summary: Any) -> list[str]:
    groups = list(dict.fromkeys(str(g) for g in summary["group"].values))
    return sorted(groups, key=lambda g: (g != "alpha_0", "hard" in g, g))


def group_table(summary: Any) -> list[dict[str, Any]]:
    """Per group: means over trials, beside the seed's MNIST numbers."""
    rows = []
    for g in _order(summary):
        sel = summary["group"].values == g
        alpha = float(summary["alpha"].values[sel][0])
        seed = SEED.get(_seed_key(alpha), {})
        p = summary["left_p_value"].values[sel]
        rows.append({
            "group": g, "trials": int(sel.sum()),
            "top-1": float(summary["top1_accuracy"].values[sel].mean()),
            "element-wise": float(summary["elementwise_accuracy"].values[sel].mean()),
            "seed element-wise": seed.get("elementwise", ""),
            "n-cut": float(summary["n_cut"].values[sel].mean()),
            "seed n-cut": seed.get("n_cut", ""),
            "Z": float(summary["z_score"].values[sel].mean()),
            "seed Z": seed.get("z", ""),
            "p<0.05": f"{int((p < 0.05).sum())}/{int(sel.sum())}",
            "seed p<0.05": seed.get("p_lt_05", ""),
            "polysemantic": float(summary["frac_polysemantic"].values[sel].mean()),
            "all classes": float(summary["frac_all_classes"].values[sel].mean()),
            "all classes (firing)": float(summary["alive_all_classes"].values[sel].mean())
            if "alive_all_classes" in summary else "",
            "always (firing)": float(summary["alive_always"].values[sel].mean())
            if "alive_always" in summary else "",
            "other-class rate": float(summary["other_class_rate"].values[sel].mean()),
            "dead": float(summary["frac_dead"].values[sel].mean()),
        })
    return rows


def _means(summary: Any, group: str) -> dict[str, float] | None:
    sel = summary["group"].values == group
    if not sel.any():
        return None
    return {k: float(summary[k].values[sel].mean()) for k in
            ("top1_accuracy", "elementwise_accuracy", "n_cut", "z_score", "other_class_rate",
             "frac_all_classes", "frac_polysemantic", "frac_dead", "alive_all_classes",
             "alive_always", "alive_mean_rate") if k in summary}


def headline_findings(summary: Any) -> list[Finding]:
    """The seed's claims, each tested where the run has the groups."""
    rows: list[Finding] = []
    base = _means(summary, "alpha_0")
    modes = [m for m in ("soft", "hard") if _means(summary, f"{m}_alpha_+1") is not None]
    if base is None:
        return [Finding("every claim", run="no alpha = 0 control in this run",
                        seed="compared against alpha = 0")]
    for m in modes:
        pen = _means(summary, f"{m}_alpha_+1")
        assert pen is not None
        rows.append(Finding(
            f"alpha = 1 ({m}): neurons fire less for their other classes",
            run=f"mean non-preferred-class firing rate {pen['other_class_rate']:.3f} vs "
                f"{base['other_class_rate']:.3f} (control)",
            seed="fired less frequently for other classes (Fig. 1)",
            verdict="agrees" if pen["other_class_rate"] < base["other_class_rate"]
            else "differs"))
        cost = base["top1_accuracy"] - pen["top1_accuracy"]
        rows.append(Finding(
            f"alpha = 1 ({m}): small accuracy cost",
            run=f"top-1 {pen['top1_accuracy']:.4f} vs {base['top1_accuracy']:.4f} "
                f"({-cost:+.4f}{': no cost' if cost <= 0 else ''}); element-wise {pen['elementwise_accuracy']:.4f} vs "
                f"{base['elementwise_accuracy']:.4f}",
            seed="~0.1% less accurate (element-wise 0.993 vs 0.996)",
            verdict="agrees" if cost <= 0.01 else "differs"))
        rows.append(Finding(
            f"alpha = 1 ({m}): lower n-cut (absolutely more clusterable)",
            run=f"mean n-cut {pen['n_cut']:.3f} vs {base['n_cut']:.3f}; Z {pen['z_score']:.2f}"
                f" vs {base['z_score']:.2f}",
            seed="n-cut 9.63 vs 10.06 (MNIST), 9.58 vs 9.88 (Fashion); Z -9.7 vs -3.4 "
                 "(MNIST only)",
            verdict="agrees" if pen["n_cut"] < base["n_cut"] else "differs"))
        rows.append(Finding(
            f"alpha = 1 ({m}): lower Z (relatively more clusterable; MNIST only in the seed)",
            run=f"mean Z {pen['z_score']:.2f} vs {base['z_score']:.2f}",
            seed="Z -9.7 vs -3.4 on MNIST; +1.1 vs -6.9 on Fashion-MNIST (not relatively)",
            verdict="agrees" if pen["z_score"] < base["z_score"] else "differs"))
    for m in [m for m in ("soft", "hard") if _means(summary, f"{m}_alpha_-1") is not None]:
        enc = _means(summary, f"{m}_alpha_-1")
        assert enc is not None
        rows.append(Finding(
            f"alpha = -1 ({m}): all neurons fire for all classes",
            run=f"{enc['alive_always']:.1%} of the neurons that fire at all fire on >= 99% of "
                f"every class's inputs (control {base['alive_always']:.1%}); "
                f"{enc['alive_all_classes']:.1%} fire for all 10 classes at least once "
                f"(control {base['alive_all_classes']:.1%}); mean frequency "
                f"{enc['alive_mean_rate']:.2f} (control {base['alive_mean_rate']:.2f}); "
                f"{enc['frac_dead']:.0%} of neurons never fire (control {base['frac_dead']:.0%})",
            seed="all hidden neurons fired for all inputs",
            verdict="agrees (the neurons that fire)" if enc["alive_always"] > max(
                0.9, base["alive_always"]) else "differs"))
        rows.append(Finding(
            f"alpha = -1 ({m}): the accuracy it costs",
            run=f"top-1 {enc['top1_accuracy']:.4f} (chance 0.1); element-wise "
                f"{enc['elementwise_accuracy']:.4f} (0.82 = one class always predicted)",
            seed="~17% less accurate: element-wise 0.82, i.e. a collapsed network",
            verdict="agrees" if enc["top1_accuracy"] < 0.2 else "differs"))
        rows.append(Finding(
            f"alpha = -1 ({m}): higher n-cut than the control",
            run=f"mean n-cut {enc['n_cut']:.3f} vs {base['n_cut']:.3f}; Z {enc['z_score']:.2f}",
            seed="n-cut 10.18 vs 10.06, Z +6.2 (MNIST)",
            verdict="agrees" if enc["n_cut"] > base["n_cut"] else "differs"))
    if len(modes) == 2:
        eff = {}
        for m in modes:
            pen = _means(summary, f"{m}_alpha_+1")
            assert pen is not None
            removed = base["other_class_rate"] - pen["other_class_rate"]
            lost = base["top1_accuracy"] - pen["top1_accuracy"]
            eff[m] = (removed, lost)
        text = "; ".join(f"{m}: other-class rate -{r:.3f} for top-1 {-lo:+.4f}"
                         for m, (r, lo) in eff.items())
        best = max(eff, key=lambda m: eff[m][0] / max(eff[m][1], 1e-3))
        rows.append(Finding("soft vs hard: class-sharing removed per unit of top-1 lost",
                            run=f"{text}; more per unit lost: {best}",
                            seed="proposed: hard should target the definition better",
                            verdict="agrees" if best == "hard" else "differs"))
    return rows


def _sorted_rates(rate: np.ndarray) -> np.ndarray:
    """Neurons (columns) by preferred class, then by their rate on it (descending); dead last."""
    rate = rate[:, ~np.isnan(rate).all(0)]
    pref = np.where(rate.max(0) > 0, rate.argmax(0), rate.shape[0])   # dead neurons last
    order = np.lexsort((-rate.max(0), pref))
    return rate[:, order]


def plot_firing(results: dict[str, Any], groups: list[str]) -> Any:
    """Class x neuron firing frequency per layer (rows: groups, first trial)."""
    first = {g: next(ds for n, ds in results.items() if f"/{g}/" in n) for g in groups}
    layers = list(next(iter(first.values()))["layer"].values)
    fig, axes = new_figure(len(groups), len(layers), width=13, height=1.9 * len(groups) + 0.6)
    for i, g in enumerate(groups):
        ds = first[g]
        for j, layer in enumerate(layers):
            mat = _sorted_rates(ds["firing_rate"].sel(layer=layer).values)
            heatmap(axes[i, j], mat, label="firing freq.", vmin=0, vmax=1,
                    title=f"{g}, {layer}", xlabel="neuron (by class)" if i == len(groups) - 1
                    else "", ylabel="class" if j == 0 else "", cmap="viridis")
    return fig


def plot_ncut_z(summary: Any) -> Any:
    """n-cut against Z, every trial, its left p-value beside the point (seed Fig. 3)."""
    fig, axes = new_figure(1, 1, width=8, height=5.5)
    ax = axes[0, 0]
    groups = _order(summary)
    for g, color in zip(groups, colors_for(groups, "tab10") if len(groups) > 1 else ["C0"]):
        sel = summary["group"].values == g
        x, y = summary["n_cut"].values[sel], summary["z_score"].values[sel]
        ax.scatter(x, y, s=70, color=color, label=g, alpha=0.85)
        for xi, yi, p in zip(x, y, summary["left_p_value"].values[sel]):
            ax.annotate(f"{p:.3f}", (xi, yi), xytext=(4, 3), textcoords="offset points",
                        fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.set(xlabel="n-cut", ylabel="Z score", title="clusterability (p = left p-value)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


def plot_accuracy(summary: Any) -> Any:
    """Top-1 and element-wise accuracy per trial, by group."""
    fig, axes = new_figure(1, 2, width=11, height=4)
    groups = _order(summary)
    for ax, var, title in zip(axes[0], ("top1_accuracy", "elementwise_accuracy"),
                              ("top-1 accuracy", "element-wise accuracy (the seed's)")):
        for i, g in enumerate(groups):
            v = summary[var].values[summary["group"].values == g]
            ax.scatter(np.full(v.shape, i) + np.linspace(-0.1, 0.1, len(v)), v, s=30)
        ax.set_xticks(range(len(groups)), groups, rotation=20)
        ax.set(title=title, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0, 1].axhline(0.82, color="grey", ls="--", lw=0.8)
    axes[0, 0].axhline(0.1, color="grey", ls="--", lw=0.8)
    return fig


def plot_null(results: dict[str, Any], summary: Any) -> Any:
    """Each trial's shuffled n-cuts (dots) and its own n-cut (cross)."""
    fig, axes = new_figure(1, 1, width=11, height=4)
    ax = axes[0, 0]
    names = list(summary["run"].values)
    for i, n in enumerate(names):
        ds = results[n]
        ax.scatter(np.full(ds.sizes["shuffle"], i), ds["shuffled_n_cut"].values, s=6,
                   color="grey", alpha=0.6)
        ax.scatter([i], [float(ds["n_cut"])], marker="x", s=60, color="C3")
    ax.set_xticks(range(len(names)), [n.replace("penalty/", "") for n in names], rotation=70,
                  fontsize=9)
    ax.set(ylabel="n-cut", title="null (shuffled layers, grey) and the trained network (x)")
    return fig


def atlas_summary(atlas: Any, sites: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Per atlas site: group, layer, units, flagged units per detector, and each detector
    pair's Jaccard (flagged sets) and Spearman (scores); NaN is written as None."""
    def num(x: float) -> float | None:
        return None if not np.isfinite(x) else round(float(x), 4)

    out: dict[str, Any] = {}
    for site, ds in atlas.results_.items():
        names = [str(d) for d in ds["detector"].values]
        group, layer = sites[site]
        out[site] = {
            "group": group, "layer": layer, "units": int(ds.sizes["unit"]),
            "flagged": {n: int(ds["n_flagged"].values[j]) for j, n in enumerate(names)},
            "pairs": {f"{names[i]} & {names[j]}": {
                "jaccard": num(ds["jaccard"].values[i, j]),
                "spearman": num(ds["spearman"].values[i, j])}
                for i in range(len(names)) for j in range(i + 1, len(names))},
            "skipped": json.loads(ds.attrs.get("skipped_json", "{}"))}
        if "near_constant" in ds:   # dead / pruned units, and each detector's flags on them
            out[site]["near_constant"] = {
                "units": int(ds["near_constant"].values.sum()),
                "flagged": {n: int(ds["n_flagged_near_constant"].values[j])
                            for j, n in enumerate(names)}}
    return out


def _mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def atlas_tables(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(flagged units per site and detector, per pair: Jaccard / Spearman per group as
    the mean over its layers, each layer's value in brackets)."""
    flagged = [{"group": v["group"], "layer": v["layer"], "units": v["units"], **v["flagged"]}
               for v in summary.values()]
    groups = list(dict.fromkeys(v["group"] for v in summary.values()))
    pairs = list(dict.fromkeys(p for v in summary.values() for p in v["pairs"]))
    rows = []
    for pair in pairs:
        row: dict[str, Any] = {"detectors": pair}
        for g in groups:
            per = [v["pairs"].get(pair, {}) for v in summary.values() if v["group"] == g]
            for key, short in (("jaccard", "J"), ("spearman", "rho")):
                vals = [p.get(key) for p in per]
                layer_txt = ", ".join("n/a" if x is None else f"{x:.2f}" for x in vals)
                m = _mean(vals)
                row[f"{g} {short}"] = (f"{m:.2f}" if np.isfinite(m) else "n/a") + \
                    f" ({layer_txt})"
        rows.append(row)
    return flagged, rows


def add_penalty_atlas(page: Any, study: Any, store: Any, out: Path,
                      groups: list[str]) -> Any:
    """The atlas section of the report (see the module docstring); None when the run
    recorded no atlas sites (a run stored before the study kept its weights)."""
    from polysdk.atlas import add_atlas
    from polysdk.studies.penalty import atlas_site

    where = {atlas_site(g, layer): (g, layer) for g in groups for layer in study.config.layers}
    sites = [s for s in store.sites if s in where]
    if not study.config.atlas:
        page.section("Detector agreement atlas", "Left out of this report (atlas=false); "
                     f"the recorded sites ({len(sites)}) are in the store: polysdk atlas "
                     "STORE --site SITE maps them.")
        return None
    if not sites:
        page.section("Detector agreement atlas", "Not recorded in this run (its trials were "
                     "stored without their weights); re-run with --fresh to get it.")
        return None
    atlas = add_atlas(page, store, out, sites=sites, pages=int(study.config.atlas_pages))
    summary = atlas_summary(atlas, where)
    (out / ATLAS_SUMMARY).write_text(json.dumps(summary, indent=1))
    flagged, pairs = atlas_tables(summary)
    page.table(flagged, "Atlas: units flagged polysemantic by each detector (test set of "
               f"trial 1 of each group; site = group.layer; numbers in {ATLAS_SUMMARY})",
               left=["group", "layer"])
    page.table(pairs, "Atlas: agreement per detector pair and group: Jaccard of the flagged "
               "sets (J; 1 when both are empty) and Spearman of the scores (rho; n/a when a "
               "score is constant), mean over the hidden layers (relu1..relu4 in brackets)",
               left=["detectors"])
    return atlas


def print_atlas(out: str | Path, file: Any = None) -> None:
    """Print a run's atlas numbers (``<out>/atlas_summary.json``, written by the report)."""
    path = Path(out) / ATLAS_SUMMARY
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: write the report first "
                                f"(polysdk run penalty ... --out {out}).")
    flagged, pairs = atlas_tables(json.loads(path.read_text()))
    file = file or sys.stdout
    dets = [k for k in flagged[0] if k not in ("group", "layer", "units")] if flagged else []
    print("flagged polysemantic (of units):", file=file)
    print("  " + " ".join(f"{h:>20}" for h in ["group.layer", *dets]), file=file)
    for r in flagged:
        cells = [f"{r['group']}.{r['layer']}"] + [f"{r.get(d, '-')}/{r['units']}" for d in dets]
        print("  " + " ".join(f"{c:>20}" for c in cells), file=file)
    summary = json.loads(path.read_text())
    flat = {site: v["near_constant"] for site, v in summary.items()
            if v.get("near_constant", {}).get("units")}
    if flat:
        print("near-constant units (std < 5% of the site's 95th percentile), flagged among them:",
              file=file)
        for site, v in flat.items():
            print(f"  {site}: {v['units']} units; " + ", ".join(
                f"{d} {c}" for d, c in v["flagged"].items()), file=file)
    print("agreement (mean over layers; per layer in brackets):", file=file)
    for r in pairs:
        print(f"  {r['detectors']}", file=file)
        for k, v in r.items():
            if k != "detectors":
                print(f"    {k:>22}: {v}", file=file)


def make_report(study: Any, out: str | Path) -> Path:
    """Figures and ``report.html`` for a finished penalty run in ``out``."""
    from polysdk.store import ActivationStore

    paths = study.paths(out)
    store = ActivationStore(paths["store"], mode="r")
    units = study.stored_units(store)
    results = {u.name: store.read_result(u.name) for u in units}
    summary = add_alive(store.read_result("penalty/summary"), results)
    cfg = study.config
    groups = _order(summary)
    any_ds = next(iter(results.values()))
    intro = (
        f"{len(units)} trained MLPs ({cfg.dataset}, {int(any_ds.attrs['epochs'])} epochs, "
        f"hidden {cfg.hidden}, Adam {cfg.learning_rate:g}, batch {cfg.batch_size}"
        f"{', quick scale' if study.quick else ''}); groups {', '.join(groups)}. Top-1 "
        "accuracy and the seed's element-wise accuracy (binary accuracy over the 10 softmax "
        "outputs: a network that always predicts one class scores 0.82) are on the test set. "
        "A neuron fires when its activation is > 0; polysemantic = fires for >= 2 classes "
        "(ClassSelectivity); other-class rate = a neuron's mean firing frequency on its 9 "
        f"non-preferred classes. Clusterability: k = {cfg.n_clusters}, {cfg.n_shuffles} "
        "within-layer shuffles, input pixels as nodes. Seed numbers are MNIST "
        f"(methods.md){'; this run is digits, 8x8 inputs, so its n-cuts are not on the same scale (a 1098-node graph, 1818 on MNIST)' if cfg.dataset == 'digits' else ''}.")
    page = ReportPage(f"Polysemanticity penalty ({cfg.dataset}, {'/'.join(cfg.modes)})", intro)
    page.findings(headline_findings(summary))
    page.table(group_table(summary), "Headline table: means over trials, beside seed 001 "
               "(MNIST)", left=["group"])
    page.figure(plot_firing(results, groups),
                "Firing frequency on the test set, class x neuron per hidden layer (first "
                "trial of each group; neurons sorted by preferred class) - the seed's Fig. 1/2",
                save_as=paths["figures"] / "firing.png")
    page.figure(plot_ncut_z(summary), "n-cut against Z score, every trial; the number is its "
                "left p-value - the seed's Fig. 3", save_as=paths["figures"] / "ncut_z.png")
    page.figure(plot_accuracy(summary), "Top-1 and element-wise accuracy per trial (dashed: "
                "chance top-1 0.1; element-wise 0.82 of a one-class network)",
                save_as=paths["figures"] / "accuracy.png")
    page.figure(plot_null(results, summary), "Null distributions of n-cut per trial",
                save_as=paths["figures"] / "null.png")
    table = []
    for i, run in enumerate(summary["run"].values):
        row: dict[str, Any] = {"run": str(run).replace("penalty/", "")}
        for v in ("top1_accuracy", "elementwise_accuracy", "n_cut", "z_score", "left_p_value",
                  "frac_polysemantic", "frac_all_classes", "other_class_rate", "frac_dead",
                  "train_seconds", "cluster_seconds"):
            row[v] = summary[v].values[i].item()
        table.append(row)
    page.table(table, "Per-trial numbers", left=["run"])
    per_layer = []
    for name, ds in results.items():
        for layer in ds["layer"].values:
            per_layer.append({"run": name.replace("penalty/", ""), "layer": str(layer),
                              "polysemantic": int(ds["n_polysemantic"].sel(layer=layer)),
                              "fraction": float(ds["frac_polysemantic"].sel(layer=layer)),
                              "all classes": float(ds["frac_all_classes"].sel(layer=layer)),
                              "dead": float(ds["frac_dead"].sel(layer=layer))})
    page.table(per_layer, "Polysemantic neurons per layer (ClassSelectivity)",
               left=["run", "layer"])
    add_penalty_atlas(page, study, store, paths["out"], groups)
    page.config(study.record())
    return page.write(paths["report"])


if __name__ == "__main__":   # python -m polysdk.studies.penalty_report RUN_FOLDER
    print_atlas(sys.argv[1] if len(sys.argv) > 1 else "runs/penalty-soft-quick")
