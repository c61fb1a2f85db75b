"""The AlexNet-subnetworks report: headline block against the seed, then per candidate
a montage, histograms, densities per layer, the overlap table and the ladder.

    from polysdk.studies.alexnet_report import make_report, summarize
    make_report(study, "runs/alexnet")        # runs/alexnet/report.html (+ figures/*.png)

``summarize`` (the study's ``alexnet/summary`` result) gathers one row per candidate
and the detection numbers per layer, which the headline block and docs/results.md use.

The report also maps the detector agreement atlas (:func:`polysdk.atlas.add_atlas`)
on the recorded centre activations of every layer (labels: the class), with the
study's own HDBSCAN settings (``top_k``, ``min_cluster_size``: its flagged units are
the candidates) and, on the embedded set, the merged-class units as the truth
(``two_looks`` of ``alexnet/clusters/<layer>``: the unit's top images are mostly one
merged class and both of its looks hold >= ``minor_share`` of them), so each detector
gets a precision and recall. Neuron pages show the top images as a montage (regenerated
from the seed, only the shown ones are drawn); each candidate gets one with its circuits'
AUCs as the interventions. ``<out>/atlas.html``, numbers in ``<out>/atlas_summary.json``;
print them:

    .venv/bin/python -m polysdk.studies.alexnet_report runs/alexnet-quick
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.reporting import Finding, ReportPage, fmt, new_figure
from polysdk.reporting.montage import montage_figure

__all__ = ["make_report", "summarize", "detection_rows", "plot_histograms",
           "plot_densities", "plot_ladder", "atlas_truth", "atlas_summary",
           "add_alexnet_atlas", "print_atlas", "ATLAS_SUMMARY"]

#: the atlas numbers of a run, beside its report
ATLAS_SUMMARY = "atlas_summary.json"

def _at(obj: Any, dim: str, name: Any) -> Any:
    """``obj.isel({dim: position of name})`` (string labels are looked up by hand: a
    round trip through zarr can give a string index that ``sel`` does not match)."""
    labels = [str(v) for v in obj[dim].values]
    return obj.isel({dim: labels.index(str(name))})


SEED = "seed 000 (Subnetworks and Superposition)"
FAIL_R = 0.5   # a circuit whose Pearson r falls below this no longer computes the unit


def _results(study: Any, store: Any) -> dict[str, xr.Dataset]:
    return {u.name: store.read_result(u.name) for u in study.stored_units(store)
            if u.name in store.list_results()}


def detection_rows(study: Any, res: dict[str, xr.Dataset]) -> list[dict[str, Any]]:
    """Per layer: units, candidates, ground-truth merged-look units, precision/recall
    of the candidates against them, median ARI of the candidates' clusters per factor."""
    rows = []
    for layer in study.config.layers:
        ds = res.get(f"alexnet/clusters/{layer}")
        if ds is None:
            continue
        cand = ds["n_clusters"].values >= 2
        row: dict[str, Any] = {"layer": layer, "units": int(ds.sizes["unit"]),
                               "candidates": int(cand.sum())}
        if "two_looks" in ds:
            for key, name in (("multi_look", "multi_look"), ("two_looks", "merged_look")):
                if key not in ds:
                    continue
                truth = ds[key].values.astype(bool)
                tp = int((cand & truth).sum())
                row[f"{name}_units"] = int(truth.sum())
                row[f"{name}_precision"] = tp / cand.sum() if cand.sum() else float("nan")
                row[f"{name}_recall"] = tp / truth.sum() if truth.sum() else float("nan")
        ari = ds["ari"].values
        for j, f in enumerate(ds["factor"].values):
            if str(f) in ("cx", "cy", "radius", "label") and "look" in ds["factor"].values:
                continue   # (stored; near 0 like the background)
            vals = ari[cand, j]
            vals = vals[np.isfinite(vals)]
            row[f"ari_{f}"] = float(np.median(vals)) if len(vals) else float("nan")
        rows.append(row)
    return rows


def summarize(study: Any, store: Any) -> xr.Dataset:
    """One row per candidate (subnetwork densities, AUCs, overlaps) and, in the attrs,
    the model's accuracy and the detection table."""
    res = _results(study, store)
    rows = []
    for i in range(study.n_slots()):
        cmp = res.get(f"alexnet/cand{i}/compare")
        if cmp is None or "empty" in cmp:
            continue
        row = {"slot": i, "layer": cmp.attrs["layer"], "unit": int(cmp.attrs["unit"]),
               "density_a": float(cmp.attrs["density_a"]),
               "density_b": float(cmp.attrs["density_b"])}
        for c, v in zip(cmp["circuit"].values, cmp["auc_test"].values):
            row[f"auc_{c}"] = float(v)
        for key in ("ab", "control"):
            if f"{key}_p_value" in cmp:
                o = _at(cmp, "param", "overall")
                row[f"{key}_iou"] = float(o[f"{key}_iou"])
                row[f"{key}_enrichment"] = float(o[f"{key}_enrichment"])
                row[f"{key}_log_p"] = float(o[f"{key}_log_p_value"])
                row[f"{key}_log_p_depletion"] = float(o[f"{key}_log_p_value_depletion"])
        rows.append(row)
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                  if rows and k in rows[0] else 999)
    data = {k: ("candidate", np.array([r.get(k, np.nan) for r in rows])) for k in keys}
    model = res.get("alexnet/model")
    attrs = {"detection": json.dumps(detection_rows(study, res), default=float)}
    if model is not None:
        attrs["test_accuracy"] = float(model.attrs.get("test_accuracy", float("nan")))
    return xr.Dataset(data, coords={"candidate": np.arange(len(rows))}, attrs=attrs)


# ----------------------------------------------------------------------------- figures
def _sides(cmp: xr.Dataset, circuit: str) -> tuple[np.ndarray, np.ndarray]:
    v = _at(cmp["value"], "circuit", circuit).values
    side = cmp["side"].values
    return v[side == "a"], v[side == "b"]


def plot_histograms(cmp: xr.Dataset) -> Any:
    """The unit's activation on cluster A vs B images through each circuit (the seed's
    comparison); panel titles give the test AUC of the circuit's own cluster."""
    circuits = [str(c) for c in cmp["circuit"].values]
    cols = 3
    rows = int(np.ceil(len(circuits) / cols))
    fig, axes = new_figure(rows, cols, width=12, height=2.6 * rows)
    for ax in axes.ravel()[len(circuits):]:
        ax.set_visible(False)
    for ax, c in zip(axes.ravel(), circuits):
        a, b = _sides(cmp, c)
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        ax.hist(a, bins=bins, alpha=0.6, color="C0", label="cluster A")
        ax.hist(b, bins=bins, alpha=0.6, color="C3", label="cluster B")
        auc = float(_at(cmp["auc_test"], "circuit", c))
        ax.set_title(f"{c}: AUC {auc:.2f}")
        ax.set_xlabel("pre-ReLU centre activation")
    axes[0, 0].set_ylabel("images")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper")
    return fig


def plot_densities(cmp: xr.Dataset) -> Any:
    """Kept share of each conv's weights per circuit (log scale; the target layer: of
    the unit's filter)."""
    fig, axes = new_figure(1, 1, width=9, height=3.6)
    ax = axes[0, 0]
    circuits = [c for c in cmp["circuit"].values if c != "original"]
    layers = [str(v) for v in cmp["layer"].values]
    w = 0.8 / max(len(circuits), 1)
    for i, c in enumerate(circuits):
        d = _at(cmp["layer_density"], "circuit", c).values
        ax.bar(np.arange(len(layers)) + i * w - 0.4 + w / 2, np.maximum(d, 1e-5), width=w,
               label=str(c), color=f"C{i % 10}")
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set(yscale="log", ylabel="kept share of weights", title="mask density per layer")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    return fig


def plot_ladder(cmp: xr.Dataset) -> Any:
    """Feature preservation of the baselines (Pearson r, dF_norm) against density, the
    subnetworks' own at their density."""
    fig, axes = new_figure(1, 2, width=11, height=3.6)
    d = cmp["density"].values
    for i, m in enumerate(cmp["method"].values):
        axes[0, 0].plot(d, _at(cmp["ladder_pearson_r"], "method", m).values, "o-", color=f"C{i}",
                        label=str(m))
        axes[0, 1].plot(d, _at(cmp["ladder_dF_norm"], "method", m).values, "o-", color=f"C{i}")
    for j, s in enumerate(cmp["subnet"].values):
        dens = float(cmp.attrs[f"density_{s}"])
        axes[0, 0].plot([dens], [float(_at(cmp["subnet_pearson_r"], "subnet", s))], "*", ms=12,
                        color=f"C{5 + j}", label=f"subnet_{s}")
        axes[0, 1].plot([dens], [float(_at(cmp["subnet_dF_norm"], "subnet", s))], "*", ms=12,
                        color=f"C{5 + j}")
    axes[0, 0].axhline(FAIL_R, color="grey", lw=0.6, ls="--")
    axes[0, 0].set(xscale="log", xlabel="density", ylabel="Pearson r", title="preservation r")
    axes[0, 1].set(xscale="log", yscale="log", xlabel="density", ylabel="dF_norm",
                   title="dF_norm")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper")
    return fig


def _montage(study: Any, clusters: xr.Dataset, unit: int, cmp: xr.Dataset | None) -> Any:
    data = study.data()
    lab = clusters["cluster"].values[unit]
    top = clusters["top_index"].values[unit]
    groups, caps = {}, {}
    ids = sorted(set(lab[lab >= 0].tolist()))
    names = {}
    if cmp is not None:
        names = {int(cmp.attrs["cluster_a"]): "A", int(cmp.attrs["cluster_b"]): "B"}
    for cid in ids:
        members = top[lab == cid][:8]
        key = f"cluster {cid}{' (' + names[cid] + ')' if cid in names else ''}\n" \
              f"{int((lab == cid).sum())} images"
        groups[key] = data.display(members)
        caps[key] = [data.caption(int(i)) for i in members]
    noise = top[lab < 0][:8]
    if len(noise):
        key = f"noise\n{int((lab < 0).sum())} images"
        groups[key] = data.display(noise)
        caps[key] = [data.caption(int(i)) for i in noise]
    return montage_figure(groups, caps, per_row=8)


# ----------------------------------------------------------------------------- headline
def _fails_below(cmp: xr.Dataset, method: str) -> float:
    """The largest ladder density at which the method's r is below FAIL_R (nan: never)."""
    r = _at(cmp["ladder_pearson_r"], "method", method).values
    d = cmp["density"].values
    bad = d[~(r >= FAIL_R)]
    return float(bad.max()) if len(bad) else float("nan")


def headline(study: Any, res: dict[str, xr.Dataset], summary: xr.Dataset) -> list[Finding]:
    det = detection_rows(study, res)
    rows = []
    n_cand = sum(r["candidates"] for r in det)
    n_units = sum(r["units"] for r in det)
    per = ", ".join(f"{r['layer']} {r['candidates']}/{r['units']}" for r in det)
    rows.append(Finding("HDBSCAN on the layer's centre vector finds units with two or more "
                        "clusters", run=f"{n_cand} of {n_units} units ({per})",
                        seed=f"{SEED}: polysemantic conv3-5 units, e.g. conv5 255 (dogs vs "
                        "stripes)", verdict="agrees" if n_cand else "differs"))
    if det and "multi_look_units" in det[0] and "merged_look_units" in det[0]:
        def pr(name: str) -> tuple[float, float, int]:
            truth = sum(r[f"{name}_units"] for r in det)
            tp = sum(round(r[f"{name}_precision"] * r["candidates"]) for r in det
                     if r["candidates"] and np.isfinite(r[f"{name}_precision"]))
            return (tp / n_cand if n_cand else float("nan"),
                    tp / truth if truth else float("nan"), truth)

        p_multi, r_multi, n_multi = pr("multi_look")
        p_merged, r_merged, n_merged = pr("merged_look")
        ari = {f: [r.get(f"ari_{f}", np.nan) for r in det] for f in ("look", "background")}
        rows.append(Finding(
            "Units with two or more clusters are the units that answer to two or more "
            "looks (ground truth of the embedded set)",
            run=f"precision {fmt(p_multi)}, recall {fmt(r_multi)} against the {n_multi} units "
                "whose top images hold >= min_cluster_size images of two or more looks",
            seed=f"{SEED}: clusters of top images are the unit's distinct meanings "
                 "(no ground truth there)",
            verdict="agrees" if p_multi >= 0.8 and r_multi >= 0.8 else "differs"))
        rows.append(Finding(
            "The channels serving merged classes (one label, two looks) are found",
            run=f"recall {fmt(r_merged)} of the {n_merged} units whose top images hold both "
                f"looks of a merged class; they are {fmt(p_merged)} of the candidates (the "
                "rest answer to looks of different classes)",
            seed=f"{SEED}: polysemantic units exist (merged concepts are this set's planted "
                 "cause)", verdict="agrees" if r_merged >= 0.8 else "differs"))
        rows.append(Finding(
            "The clusters are the looks, not the nuisance factors",
            run="median ARI of the candidates' clusters per layer: vs look "
                f"{', '.join(fmt(a) for a in ari['look'])}; vs background "
                f"{', '.join(fmt(a) for a in ari['background'])}",
            seed=f"{SEED}: e.g. conv5 255's clusters are dogs and stripes",
            verdict="agrees" if np.nanmin(ari["look"]) >= 0.8 else "differs"))
    if summary.sizes.get("candidate", 0):
        dens = np.concatenate([summary["density_a"].values, summary["density_b"].values])
        rows.append(Finding("Each subnetwork keeps 3-7% of the conv weights",
                            run=f"{fmt(100 * dens.min())}-{fmt(100 * dens.max())}% over "
                                f"{len(dens)} subnetworks (lam={study.config.lam}, "
                                f"{study.config.cs_epochs} epochs)",
                            seed=f"{SEED}: 3%-7%",
                            verdict="agrees" if 0.03 <= dens.min() and dens.max() <= 0.07
                            else "differs"))
        sub = np.concatenate([summary["auc_subnet_a"].values, summary["auc_subnet_b"].values])
        best, wins, n_sides = [], 0, 0
        for side in "ab":
            cols = [c for c in summary.data_vars if c.startswith("auc_")
                    and c.endswith(f"_{side}") and c != f"auc_subnet_{side}"]
            if not cols:
                continue
            b = np.nanmax(np.stack([summary[c].values for c in cols]), axis=0)
            best.append(b)
            wins += int(np.sum(summary[f"auc_subnet_{side}"].values > b))
            n_sides += len(b)
        best_all = np.concatenate(best) if best else np.array([np.nan])
        rows.append(Finding(
            "Through its subnetwork the unit answers to one cluster only, better than the "
            "ActGrad / SNIP / FORCE circuits at the same density",
            run=f"held-out AUC (own cluster vs the other) of the subnetworks {fmt(sub.min())}-"
                f"{fmt(sub.max())}; of the best baseline for the same cluster "
                f"{fmt(np.nanmin(best_all))}-{fmt(np.nanmax(best_all))}; original unit (A vs "
                f"B) {', '.join(fmt(a) for a in summary['auc_original'].values)}; the "
                f"subnetwork is strictly better in {wins} of {n_sides} (candidate, cluster)",
            seed=f"{SEED}: histograms show each subnetwork separating its cluster, the "
                 "baselines not",
            verdict="agrees" if n_sides and wins == n_sides else "differs"))
        if "ab_log_p" in summary:
            p = np.exp(summary["ab_log_p"].values)
            pdep = np.exp(summary["ab_log_p_depletion"].values)
            enr = summary["ab_enrichment"].values
            ctrl = summary["control_enrichment"].values if "control_enrichment" in summary \
                else np.full_like(enr, np.nan)
            lp = summary["ab_log_p"].values / np.log(10)
            lpd = summary["ab_log_p_depletion"].values / np.log(10)
            indep = bool(np.all((p > 0.01) & (pdep > 0.01)))
            rows.append(Finding(
                "The two subnetworks overlap as independent random masks would "
                "(the seed's 'independent processes')",
                run=f"A vs B overlap / random expectation {', '.join(fmt(e) for e in enr)} "
                    f"(log10 p of more overlap {', '.join(f'{v:.4g}' for v in lp)}; of less "
                    f"{', '.join(f'{v:.4g}' for v in lpd)}); control pair (A, two seeds) "
                    f"{', '.join(fmt(e) for e in ctrl)}",
                seed=f"{SEED}: claimed, never tested (no overlap statistic in its code)",
                verdict="agrees" if indep else "differs"))
        fails = []
        for i in range(summary.sizes["candidate"]):
            cmp = res.get(f"alexnet/cand{int(summary['slot'].values[i])}/compare")
            if cmp is not None:
                fails += [(str(m), _fails_below(cmp, str(m))) for m in cmp["method"].values]
        if fails:
            lowest = fmt(float(min(study.config.ladder)))
            text = "; ".join(f"{m}: r < {FAIL_R} from density {fmt(d)} down" if np.isfinite(d)
                             else f"{m}: r >= {FAIL_R} down to {lowest}" for m, d in fails)
            ok = all(np.isfinite(d) and d <= 0.1 for _, d in fails)
            rows.append(Finding("The heuristics fail below 10% density",
                                run=text, seed=f"{SEED}: fail below 10%",
                                verdict="agrees" if ok else "differs"))
    return rows


# ----------------------------------------------------------------------------- atlas
def atlas_truth(res: dict[str, xr.Dataset]) -> dict[str, np.ndarray]:
    """{layer: one bool per unit} of the merged-class units (``two_looks`` of the
    layer's clusters: the modal class of the unit's top images is a merged class holding
    >= half of them, and the smaller of its looks holds >= ``minor_share`` of the class's
    top images); empty on the real path (no generating factors)."""
    out = {}
    for name, ds in res.items():
        if name.startswith("alexnet/clusters/") and "two_looks" in ds:
            out[str(ds.attrs.get("layer", name.rsplit("/", 1)[1]))] = \
                ds["two_looks"].values.astype(bool)
    return out


def _num(x: Any) -> float | None:
    return None if x is None or not np.isfinite(float(x)) else round(float(x), 4)


def atlas_summary(atlases: list[Any]) -> dict[str, Any]:
    """Per atlas site: units, flagged per detector, precision / recall against the
    merged-class truth (when there is one), each detector pair's Jaccard and Spearman,
    the skipped detectors and the page; NaN is written as None."""
    out: dict[str, Any] = {}
    for atlas in atlases:
        for site, ds in atlas.results_.items():
            names = [str(d) for d in ds["detector"].values]
            row: dict[str, Any] = {
                "units": int(ds.sizes["unit"]), "inputs": int(ds.attrs.get("n_inputs", 0)),
                "page": Path(str(getattr(atlas, "page_", ""))).name,
                "flagged": {n: int(ds["n_flagged"].values[j]) for j, n in enumerate(names)}}
            if "truth" in ds:
                row["truth"] = int(ds["truth"].values.sum())
                row["precision"] = {n: _num(ds["precision"].values[j])
                                    for j, n in enumerate(names)}
                row["recall"] = {n: _num(ds["recall"].values[j]) for j, n in enumerate(names)}
            row["pairs"] = {f"{names[i]} & {names[j]}": {
                "jaccard": _num(ds["jaccard"].values[i, j]),
                "spearman": _num(ds["spearman"].values[i, j])}
                for i in range(len(names)) for j in range(i + 1, len(names))}
            row["skipped"] = sorted(json.loads(ds.attrs.get("skipped_json", "{}")))
            out[site] = row
    return out


def atlas_tables(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per layer and detector: flagged, precision, recall; per detector pair: Jaccard /
    Spearman per layer)."""
    flagged = []
    for site, v in summary.items():
        for det, n in v["flagged"].items():
            row: dict[str, Any] = {"layer": site, "detector": det, "flagged": f"{n} / {v['units']}"}
            if "truth" in v:
                row["truth units"] = v["truth"]
                row["precision"] = v["precision"][det]
                row["recall"] = v["recall"][det]
            flagged.append(row)
    pairs = list(dict.fromkeys(p for v in summary.values() for p in v["pairs"]))
    rows = []
    for pair in pairs:
        row = {"detectors": pair}
        for site, v in summary.items():
            got = v["pairs"].get(pair, {})
            row[site] = "/".join("n/a" if got.get(k) is None else f"{got[k]:.2f}"
                                 for k in ("jaccard", "spearman"))
        rows.append(row)
    return flagged, rows


class _Images:
    """Image ``i`` of the study's set for a neuron page, drawn when asked (the set is
    regenerated from the seed once, and only the shown images are converted)."""

    def __init__(self, study: Any) -> None:
        self.study = study

    def __call__(self, i: int) -> np.ndarray:
        return self.study.data().display([int(i)])[0]


def _group_store(out: Path, group: dict[str, Any]) -> Path:
    """A recording's store: in this run folder when it is there (the recorded path is
    relative to where the run was started)."""
    here = out / "activations" / Path(group["store"]).name
    return here if (here / "zarr.json").exists() else Path(group["store"])


def _candidate_effects(cmp: xr.Dataset) -> dict[str, Any]:
    """The circuits of a candidate as its neuron page's interventions."""
    out = {}
    for c, a, t in zip(cmp["circuit"].values, cmp["auc_test"].values, cmp["auc_train"].values):
        how = "the whole model" if str(c) == "original" else "masked weights"
        out[f"circuit {c} ({how})"] = {"AUC own cluster vs other, held-out": float(a),
                                                "AUC, train": float(t)}
    return out


def add_alexnet_atlas(page: Any, study: Any, res: dict[str, xr.Dataset], out: Path
                      ) -> tuple[list[Any], dict[tuple[str, int], str]]:
    """The atlas section of the report (see the module docstring): one atlas page per
    recording store (``atlas.html``; ``atlas-box<i>.html`` when the layers' centres
    needed several passes), the summary tables, ``<out>/atlas_summary.json``, and a
    neuron page per candidate. Returns the atlases and {(layer, unit): page}."""
    from polysdk.atlas import add_atlas, neuron_page_path, write_neuron_page
    from polysdk.store import ActivationStore

    cfg = study.config
    record = res.get("alexnet/record")
    if not cfg.atlas:
        page.section("Detector agreement atlas", "Left out of this report (atlas=false); the "
                     "recorded centre activations are in <out>/activations: polysdk atlas "
                     "STORE --site LAYER maps them.")
        return [], {}
    if record is None:
        page.section("Detector agreement atlas", "Nothing recorded yet (alexnet/record).")
        return [], {}
    groups = json.loads(record.attrs["groups"])
    truth = atlas_truth(res)
    images = _Images(study)
    atlases = []
    for gi, g in enumerate(groups):
        sites = [s for s in g["layers"] if s in cfg.layers]
        if not sites:
            continue
        name = "atlas.html" if len(groups) == 1 else f"atlas-box{gi}.html"
        store = ActivationStore(_group_store(out, g), mode="r")
        site_truth = {s: truth[s] for s in sites if s in truth} or None
        atlases.append(add_atlas(
            page, store, out, sites=sites, name=name, truth=site_truth, images=images,
            pages=int(cfg.atlas_pages),
            params={"hdbscan": {"top_k": int(cfg.top_k),
                                "min_cluster_size": int(cfg.min_cluster_size)}}))
    summary = atlas_summary(atlases)
    (out / ATLAS_SUMMARY).write_text(json.dumps(summary, indent=1))
    flagged, pairs = atlas_tables(summary)
    what = ("; truth: the units serving both looks of a merged class (two_looks)"
            if truth else "")
    page.table(flagged, "Atlas: units flagged polysemantic by each detector on the centre "
               f"activations of every image (labels: the class; hdbscan with the study's "
               f"top_k {cfg.top_k}, min_cluster_size {cfg.min_cluster_size}: its flagged "
               f"units are the candidates{what}; numbers in {ATLAS_SUMMARY})",
               left=("layer", "detector"))
    page.table(pairs, "Atlas: agreement per detector pair and layer, Jaccard of the flagged "
               "sets / Spearman of the scores (n/a: a constant score)", left=("detectors",))
    links: dict[tuple[str, int], str] = {}
    by_site = {s: a for a in atlases for s in a.results_}
    for i in range(study.n_slots()):
        cmp = res.get(f"alexnet/cand{i}/compare")
        if cmp is None or "empty" in cmp or cmp.attrs["layer"] not in by_site:
            continue
        layer, unit = str(cmp.attrs["layer"]), int(cmp.attrs["unit"])
        atlas = by_site[layer]
        rel = neuron_page_path(layer, unit)
        back = os.path.relpath(Path(atlas.page_), (out / rel).parent)
        write_neuron_page(out / rel, atlas.source, unit, site=layer, atlas=atlas,
                          images=images, interventions=_candidate_effects(cmp),
                          atlas_href=back)
        links[(layer, unit)] = rel
    return atlases, links


def print_atlas(out: str | Path, file: Any = None) -> None:
    """Print a run's atlas numbers (``<out>/atlas_summary.json``, written by the report)."""
    path = Path(out) / ATLAS_SUMMARY
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: write the report first "
                                f"(polysdk report {out}).")
    summary = json.loads(path.read_text())
    file = file or sys.stdout
    flagged, pairs = atlas_tables(summary)
    for site, v in summary.items():
        t = f", truth {v['truth']} units" if "truth" in v else ""
        print(f"{site}: {v['units']} units, {v['inputs']} images{t} ({v['page']})", file=file)
    print("flagged (precision / recall against the truth):", file=file)
    for r in flagged:
        pr = (f"  P {r['precision']}  R {r['recall']}" if "precision" in r else "")
        print(f"  {r['layer']:>12} {r['detector']:>20} {r['flagged']:>9}{pr}", file=file)
    print("Jaccard / Spearman per layer:", file=file)
    for r in pairs:
        print(f"  {r['detectors']:>42}  " + "  ".join(f"{k} {v}" for k, v in r.items()
                                                      if k != "detectors"), file=file)


# ----------------------------------------------------------------------------- page
def make_report(study: Any, out: str | Path) -> Path:
    """Figures and ``report.html`` of a finished run in ``out``."""
    from polysdk.store import ActivationStore

    out = Path(out)
    paths = study.paths(out)
    study._out = out
    store = ActivationStore(paths["store"], mode="r")
    res = _results(study, store)
    summary = res.get("alexnet/summary") or summarize(study, store)
    cfg = study.config
    fig_dir = paths["figures"]
    model = res.get("alexnet/model")
    record = res.get("alexnet/record")
    src = ("embedded shapes set" if not cfg.root else f"ImageFolder {cfg.root}")
    groups = json.loads(record.attrs["groups"]) if record is not None else []
    rf = "; ".join(f"{', '.join(g['layers'])}: RF {g['rf_size']} px on a {g['grid']}x"
                   f"{g['grid']} map, box {g['box']}{' (whole image)' if g['whole_image'] else ''}"
                   for g in groups)
    intro = (f"{src}: {record.attrs['n_images'] if record is not None else '?'} images; "
             f"top {cfg.top_k} per unit (the seed: 1000 of ImageNet), HDBSCAN "
             f"min_cluster_size {cfg.min_cluster_size} (seed 50) on the whole layer's "
             f"pre-ReLU centre vector; receptive fields {rf}. Subnetworks: continuous "
             f"sparsification, contrastive BCE, lam {cfg.lam}, {cfg.cs_epochs} epochs, lr "
             f"{cfg.cs_lr}, T 1 to {cfg.temperature_end}; {int(cfg.holdout * 100)}% of each "
             "cluster held out for the AUCs. Baselines at the same kept weight count: "
             "ActGrad per kernel, SNIP and FORCE per weight, biases unmasked.")
    page = ReportPage(f"AlexNet subnetworks ({study.preset or 'custom'}"
                      f"{', quick' if study.quick else ''})", intro)
    page.findings(headline(study, res, summary))
    if model is not None:
        acc = {"source": model.attrs.get("source"),
               "parameters": model.attrs.get("parameters"),
               "test accuracy": model.attrs.get("test_accuracy", float("nan")),
               "train accuracy": model.attrs.get("train_accuracy", float("nan")),
               "train seconds": model.attrs.get("train_seconds", float("nan"))}
        page.table([acc], "Model")
        if "class_accuracy" in model and not cfg.root:
            data = study.data()
            page.table([{"class": i, "looks": n, "merged": i in data.merged,
                         "test accuracy": float(a)} for i, (n, a) in
                        enumerate(zip(data.class_names, model["class_accuracy"].values))],
                       "Test accuracy per class", left=("looks",))
    page.table(detection_rows(study, res),
               "Detection per layer (ARI: median over the candidates' clusters vs each "
               "generating factor; merged_look_units: ground truth)")
    _, neuron_links = add_alexnet_atlas(page, study, res, out)
    for i in range(study.n_slots()):
        cmp = res.get(f"alexnet/cand{i}/compare")
        if cmp is None or "empty" in cmp:
            continue
        layer, unit = cmp.attrs["layer"], int(cmp.attrs["unit"])
        cl = res[f"alexnet/clusters/{layer}"]
        truth = ""
        if "two_looks" in cl:
            data = study.data()
            c = int(cl["top_class"].values[unit])
            truth = (f" Ground truth: top class {c} ({data.class_names[c]}, "
                     f"{fmt(float(cl['top_class_share'].values[unit]))} of the top images), "
                     f"{'a merged class' if bool(cl['top_class_merged'].values[unit]) else 'not merged'}"
                     f"; ARI of the clusters vs look "
                     f"{fmt(float(_at(cl['ari'], 'factor', 'look').values[unit]))}.")
        page.section(f"Candidate {i}: {layer} unit {unit}",
                     f"{int(cl['n_clusters'].values[unit])} clusters; A = cluster "
                     f"{cmp.attrs['cluster_a']}, B = cluster {cmp.attrs['cluster_b']}; "
                     f"subnetworks keep {fmt(100 * cmp.attrs['density_a'])}% (A) and "
                     f"{fmt(100 * cmp.attrs['density_b'])}% (B) of {cmp.attrs['n_weights']} "
                     f"conv weights.{truth}")
        if (layer, unit) in neuron_links:
            href = neuron_links[(layer, unit)]
            page._parts.append(f'<p><a href="{href}">neuron page of {layer} unit {unit}</a> '
                               "(its verdict under every detector, top images, circuits)</p>")
        tag = f"cand{i}_{layer}_{unit}"
        page.figure(_montage(study, cl, unit, cmp),
                    f"{layer} unit {unit}: top images per cluster, best first (caption: "
                    "colour texture shape, background, radius)",
                    save_as=fig_dir / f"{tag}_montage.png")
        page.figure(plot_histograms(cmp), "The unit's activation on cluster A and B images "
                    "(train and held-out) through each circuit; AUC on the held-out images",
                    save_as=fig_dir / f"{tag}_hist.png")
        page.figure(plot_densities(cmp), "Mask density per layer",
                    save_as=fig_dir / f"{tag}_density.png")
        table = []
        for key, what in (("ab", "A vs B"), ("control", "A vs A (other seed)")):
            if f"{key}_iou" not in cmp:
                continue
            for j, p in enumerate(cmp["param"].values):
                table.append({"pair": what, "param": str(p),
                              "size": int(cmp[f"{key}_size"].values[j]),
                              "kept 1": int(cmp[f"{key}_kept_a"].values[j]),
                              "kept 2": int(cmp[f"{key}_kept_b"].values[j]),
                              "both": int(cmp[f"{key}_intersection"].values[j]),
                              "expected": float(cmp[f"{key}_expected_intersection"].values[j]),
                              "IoU": float(cmp[f"{key}_iou"].values[j]),
                              "enrichment": float(cmp[f"{key}_enrichment"].values[j]),
                              "log10 p more": float(cmp[f"{key}_log_p_value"].values[j])
                              / np.log(10),
                              "log10 p less": float(cmp[f"{key}_log_p_value_depletion"]
                                                    .values[j]) / np.log(10)})
        page.table(table, f"Mask overlap of {layer} unit {unit} (weights; {layer}: the "
                   "unit's filter) against independent random masks of the same counts",
                   left=("pair", "param"))
        page.figure(plot_ladder(cmp), "Feature preservation ladder of the baselines (fitted "
                    "on A and B's train images, scored on the held-out ones); stars: the "
                    f"subnetworks; dashed: r = {FAIL_R}", save_as=fig_dir / f"{tag}_ladder.png")
        page.table([{"circuit": str(c), "AUC held-out": float(a), "AUC train": float(t)}
                    for c, a, t in zip(cmp["circuit"].values, cmp["auc_test"].values,
                                       cmp["auc_train"].values)],
                   f"AUC of the circuit's own cluster vs the other ({layer} unit {unit})",
                   left=("circuit",))
    timing = [{"unit": name, "seconds": float(ds.attrs.get("seconds", float("nan")))}
              for name, ds in res.items() if name != "alexnet/summary"]
    page.table(timing, "Where the time goes (seconds per resume unit, this run)",
               left=("unit",))
    page.config(study.record())
    return page.write(paths["report"])


if __name__ == "__main__":   # python -m polysdk.studies.alexnet_report RUN_FOLDER
    print_atlas(sys.argv[1] if len(sys.argv) > 1 else "runs/alexnet-quick")
