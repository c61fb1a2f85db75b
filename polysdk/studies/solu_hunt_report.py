"""The SoLU neuron-hunt report: headline block against the seed, candidates per layer
and model, the verdict table with its evidence, heat maps, the twins compared.

    from polysdk.studies.solu_hunt_report import make_report
    make_report(study, "runs/solu")     # runs/solu/report.html, neurons/<model>/*.html

Every candidate gets a neuron page (``neurons/<model>/L<l>N<u>.html``: verdict,
evidence, its set table, top-activating texts and tokens, heat maps of every text);
the report shows the heat maps of the first candidates of each verdict inline.
Then the detector agreement atlas of every model's per-token store
(:mod:`polysdk.studies.solu_hunt_atlas`: ``atlas/<model>/atlas.html``, the agreement
heat maps, the study's verdicts against the detectors, ``atlas_summary.json``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.reporting import Finding, ReportPage, heatmap, new_figure
from polysdk.reporting.text_heatmap import HEATMAP_STYLE, neuron_page_html, set_heatmaps_html

__all__ = ["make_report", "headline_findings", "set_texts", "SEED"]

SEED = ("seed 003 (solu-4l, 8192 neurons, top 100): 38 neurons in exactly two of four "
        "lists; 10 with the narrow filter (Fortran and not gibberish), e.g. L3N18 on "
        "Spanish and Fortran")
LABELS = {"solu": "SoLU twin", "gelu": "GELU twin", "minilm": "MiniLM", "planted": "planted"}
MAX_PAGES = 40


class _Page(ReportPage):
    def raw(self, text: str) -> _Page:
        self._parts.append(text)
        return self


def _label(m: str) -> str:
    return LABELS.get(m, m)


def _name(ds: Any, j: int) -> str:
    return f"L{int(ds['cand_layer'].values[j])}N{int(ds['cand_unit'].values[j])}"


def set_texts(ds: Any, j: int) -> dict[str, list[tuple[list[str], np.ndarray]]]:
    """Candidate ``j``'s per-token values, grouped {set: [(tokens, values) per text]}."""
    tok_text = ds["tok_text"].values
    strs = ds["tok_str"].values.astype(str)
    vals = ds["token_value"].values[:, j]
    text_set = ds["text_set"].values.astype(str)
    out: dict[str, list[tuple[list[str], np.ndarray]]] = {s: [] for s in ds["set"].values}
    bounds = np.flatnonzero(np.diff(np.r_[-1, tok_text, -2]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        t = int(tok_text[lo])
        out[str(text_set[t])].append((list(strs[lo:hi]), vals[lo:hi]))
    return out


def _set_rows(ds: Any, j: int) -> list[dict[str, Any]]:
    u = int(ds["cand_neuron"].values[j])
    rows = []
    for si, s in enumerate(ds["set"].values):
        rows.append({"set": str(s), "set mean": float(ds["set_activation"].values[u, si]),
                     "rank": int(ds["rank"].values[u, si]),
                     "rank w/o shallow": int(ds["content_rank"].values[u, si]),
                     "active": "yes" if ds["active"].values[u, si] else ""})
    return rows


def _verdicts(ds: Any) -> list[str]:
    """The candidates' verdicts (planted extras that are not candidates left out)."""
    return list(ds["verdict"].values[ds["is_candidate"].values].astype(str))


def headline_findings(results: dict[str, Any]) -> list[Finding]:
    """The run against the seed's numbers and conclusion, model by model."""
    def counts(f: str) -> str:
        return "; ".join(f"{_label(m)} {int(ds[f].sum())} of {ds.attrs['n_neurons']} "
                         f"(top {ds.attrs['top_k']})" for m, ds in results.items()
                         if m != "planted")
    rows = [
        Finding("Neurons active on exactly two concept sets",
                run=counts("candidate"), seed=f"{SEED.split(';')[0]}",
                verdict="agrees" if all(int(ds["candidate"].sum()) > 0 for ds in
                                        results.values()) else "differs"),
        Finding("With the narrow filter (Fortran and not gibberish)",
                run=counts("narrow_candidate"), seed="10 of 8192 (solu-4l)",
                verdict="agrees" if all(int(ds["narrow_candidate"].sum()) > 0 for m, ds in
                                        results.items() if m != "planted") else "differs"),
    ]
    parts, confirmed = [], 0
    for m, ds in results.items():
        if m == "planted":
            continue
        v = _verdicts(ds)
        parts.append(f"{_label(m)}: {v.count('polysemantic')} polysemantic, "
                     f"{v.count('shallow cause')} shallow cause, {v.count('unclear')} unclear")
        confirmed += v.count("polysemantic")
    rows.append(Finding("Candidates confirmed polysemantic once shallow causes are ruled out",
                        run="; ".join(parts), seed="none confirmed (checked by hand)",
                        verdict="agrees" if confirmed == 0 else
                        "differs: some survive the automated check"))
    shallow_fm = []
    for m, ds in results.items():
        if m == "planted":
            continue
        for j, v in enumerate(ds["verdict"].values.astype(str)):
            pair = {str(ds["pair_a"].values[j]), str(ds["pair_b"].values[j])}
            if v == "shallow cause" and pair == {"fortran", "medical"}:
                shallow_fm.append(f"{_label(m)} {_name(ds, j)}")
    rows.append(Finding("A Fortran + medical candidate explained by shallow tokens",
                        run=", ".join(shallow_fm[:6]) or "none",
                        seed="one, firing only on '.' in the medical text",
                        verdict="agrees" if shallow_fm else "differs"))
    if "solu" in results and "gelu" in results:
        s, g = results["solu"], results["gelu"]
        sv, gv = _verdicts(s), _verdicts(g)
        rows.append(Finding(
            "SoLU twin vs GELU twin (same size, data, steps)",
            run=f"candidates SoLU {int(s['candidate'].sum())} vs GELU "
                f"{int(g['candidate'].sum())}; polysemantic {sv.count('polysemantic')} vs "
                f"{gv.count('polysemantic')}; shallow {sv.count('shallow cause')} vs "
                f"{gv.count('shallow cause')}",
            seed="not compared by the seed (SoLU was designed to make neurons more "
                 "interpretable)"))
    if "planted" in results:
        p = results["planted"]
        rows.append(Finding("Planted neurons come out as planted",
                            run=_planted_text(p), seed="(ground truth of this study)",
                            verdict="agrees" if _planted_ok(p) else "differs"))
    return rows


def _planted(p: Any) -> dict[int, str]:
    layer, units = int(p.attrs["planted_layer"]), list(p.attrs["planted_units"])
    out = {}
    for j in range(p.sizes.get("cand", 0)):
        if int(p["cand_layer"].values[j]) == layer and int(p["cand_unit"].values[j]) in units:
            v = str(p["verdict"].values[j])
            out[int(p["cand_unit"].values[j])] = v if p["is_candidate"].values[j] else \
                f"{v} (not a candidate)"
    return {u: out.get(u, "missing") for u in units}


def _planted_ok(p: Any) -> bool:
    got = _planted(p)
    u0, u1 = list(p.attrs["planted_units"])
    return got[u0] == "polysemantic" and got[u1].startswith("shallow cause")


def _planted_text(p: Any) -> str:
    got = _planted(p)
    u0, u1 = list(p.attrs["planted_units"])
    layer = p.attrs["planted_layer"]
    sets = " + ".join(p.attrs["planted_sets"])
    return (f"L{layer}N{u0} (fires on {sets} content tokens): {got[u0]}; "
            f"L{layer}N{u1} (fires on '.' only): {got[u1]}")


def _per_layer_figure(results: dict[str, Any]) -> Any:
    models = [m for m in results if m != "planted"]
    fig, axes = new_figure(1, len(models), width=min(13, 4.2 * len(models)), height=3.6)
    for ax, m in zip(axes[0], models):
        ds = results[m]
        layers = np.unique(ds["layer"].values)
        cand = ds["candidate"].values
        narrow = ds["narrow_candidate"].values
        lay = ds["layer"].values
        ax.bar(layers - 0.2, [cand[lay == l].sum() for l in layers], 0.4, label="exactly two")
        ax.bar(layers + 0.2, [narrow[lay == l].sum() for l in layers], 0.4, label="narrow")
        ax.set(xlabel="layer", ylabel="candidates", xticks=layers,
               title=f"{_label(m)} ({ds.attrs['n_neurons']} neurons, top {ds.attrs['top_k']})")
        ax.legend(fontsize=9)
    return fig


def _overview_figure(results: dict[str, Any]) -> Any:
    models = [m for m in results if m != "planted" and results[m].sizes.get("cand", 0)]
    fig, axes = new_figure(1, max(1, len(models)), width=min(13, 4.3 * max(1, len(models))),
                           height=4.2)
    for ax, m in zip(axes[0], models):
        ds = results[m]
        idx = ds["cand_neuron"].values[:40]
        mat = ds["set_activation"].values[idx]   # (cand, set)
        z = (mat - mat.mean(1, keepdims=True)) / (mat.std(1, keepdims=True) + 1e-9)
        heatmap(ax, z.T, label="set mean (z over sets)", cmap="Reds",
                title=f"{_label(m)}: candidates x sets", xlabel="candidate",
                ylabel="set")
        ax.set_yticks(range(ds.sizes["set"]), [str(s) for s in ds["set"].values])
    return fig


def _loss_figure(study: Any) -> Any:
    fig, axes = new_figure(1, 1, width=6.5, height=3.6)
    ax = axes[0, 0]
    for act in ("solu", "gelu"):
        try:
            ds = study.need(f"twins/{act}/train")
        except Exception:   # a run without that twin
            continue
        ax.plot(ds["log_step"].values, ds["loss"].values, label=_label(act))
    ax.set(xlabel="step", ylabel="next-token loss", title="twins: training loss")
    ax.legend(fontsize=9)
    return fig


def make_report(study: Any, out: str | Path) -> Path:
    """``report.html`` and the neuron pages for a finished run in ``out``."""
    from polysdk.store import ActivationStore

    out = Path(out)
    paths = study.paths(out)
    store = ActivationStore(paths["store"], mode="r")
    names = store.list_results()
    results = {}
    for m in study.config.models():
        key = f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in m)}/analyse"
        if key in names:
            results[m] = store.read_result(key)
    if "planted/analyse" in names:
        results["planted"] = store.read_result("planted/analyse")
    corpus = study.corpus()
    cfg = study.config
    intro = (f"Concept sets {cfg.corpus}: " + "; ".join(
        f"{k} ({len(v)} texts: {corpus.sources[k]})" for k, v in corpus.sets.items())
        + f". A text's activation is the mean over its real tokens (padding never; "
        f"{'BOS/[CLS]/[SEP] included' if cfg.count_special else 'BOS/[CLS]/[SEP] left out'}"
        "); a set's, the mean over its texts; active = in the set's top k of all the "
        + (f"model's neurons (k = {cfg.top_k} x neurons / {cfg.top_k_reference}); "
           if cfg.top_k_reference else f"model's neurons (k = {cfg.top_k}); ")
        + f"candidates "
        f"= active on exactly {cfg.exactly} sets. Verdicts: shallow cause (punctuation, "
        f"digits, whitespace or special tokens carry >= {cfg.shallow_share:.0%} of a set's "
        "positive activation, or the neuron leaves the set's top k without them), "
        "polysemantic (in the top k of both sets on tokens neither shallow nor shared by "
        "the two sets, and not carried by word fragments on both), unclear (the rest).")
    page = _Page(f"SoLU neuron hunt: {study.preset or 'custom'}"
                 f"{' (quick)' if study.quick else ''}", intro)
    page.raw(f"<style>{HEATMAP_STYLE}</style>")
    page.findings(headline_findings(results))
    rows = []
    for m, ds in results.items():
        v = _verdicts(ds)
        rows.append({"model": _label(m), "neurons": ds.attrs["n_neurons"],
                     "top k": ds.attrs["top_k"], "exactly two": int(ds["candidate"].sum()),
                     "narrow": int(ds["narrow_candidate"].sum()),
                     **{f"L{l}": int(ds["candidate"].values[ds["layer"].values == l].sum())
                        for l in np.unique(ds["layer"].values)},
                     "polysemantic": v.count("polysemantic"),
                     "shallow cause": v.count("shallow cause"), "unclear": v.count("unclear"),
                     "tokens cut": ds.attrs.get("tokens_dropped", 0)})
    page.table(rows, "Candidates per layer and model", left=["model"])
    page.figure(_per_layer_figure(results), "Candidates per layer: active on exactly two "
                "sets, and with the narrow filter", save_as=paths["figures"] / "per_layer.png")
    if any(ds.sizes.get("cand", 0) for m, ds in results.items() if m != "planted"):
        page.figure(_overview_figure(results), "Set activation of each candidate (z-scored "
                    "over the sets; first 40 per model)", save_as=paths["figures"] / "sets.png")
    if "solu" in results or "gelu" in results:
        page.figure(_loss_figure(study), "The twins' training loss (same data, steps, "
                    "init seed)", save_as=paths["figures"] / "loss.png")
    # ---- verdict table + neuron pages
    table = []
    inline = []
    for m, ds in results.items():
        folder = out / "neurons" / m
        folder.mkdir(parents=True, exist_ok=True)
        shown: set[str] = set()
        for j in range(min(ds.sizes.get("cand", 0), MAX_PAGES)):
            nm, v = _name(ds, j), str(ds["verdict"].values[j])
            rel = f"neurons/{m}/{nm}.html"
            sets = set_texts(ds, j)
            (out / rel).write_text(neuron_page_html(
                f"{_label(m)} {nm}", sets, verdict=v, evidence=str(ds["evidence"].values[j]),
                summary_rows=_set_rows(ds, j), back="../../report.html",
                label=f"{nm} activation"), encoding="utf-8")
            table.append({"model": _label(m), "neuron": nm,
                          "sets": f"{ds['pair_a'].values[j]} + {ds['pair_b'].values[j]}",
                          "narrow": "yes" if ds["narrow"].values[j] else "",
                          "verdict": v, "evidence": str(ds["evidence"].values[j]),
                          "page": rel})
            if v not in shown and len(shown) < 3:
                shown.add(v)
                pair = [str(ds["pair_a"].values[j]), str(ds["pair_b"].values[j])]
                inline.append(set_heatmaps_html(
                    {s: sets[s] for s in pair + [s for s in sets if s not in pair]},
                    title=f"{_label(m)} {nm}: {v} ({' + '.join(pair)})",
                    label=f"{nm} activation", max_texts=2))
    body = "".join(
        f"<tr><td class='l'>{html.escape(r['model'])}</td><td class='l'><a href="
        f"'{html.escape(r['page'])}'>{html.escape(r['neuron'])}</a></td><td class='l'>"
        f"{html.escape(r['sets'])}</td><td>{r['narrow']}</td><td class='l'>"
        f"{html.escape(r['verdict'])}</td><td class='l' style='font-size:12px'>"
        f"{html.escape(r['evidence'])}</td></tr>" for r in table)
    page.section("Verdicts", f"Every candidate (first {MAX_PAGES} per model) with the "
                 "evidence per set: each token type's share of its positive activation, "
                 "its rank on the set, without shallow tokens, and also without the "
                 "sub-words both sets share; the top tokens. Each name links to its page.")
    page.raw("<table><tr><th class='l'>model</th><th class='l'>neuron</th><th class='l'>"
             "sets</th><th>narrow</th><th class='l'>verdict</th><th class='l'>evidence</th>"
             f"</tr>{body}</table>" if table else "<p>(no candidates)</p>")
    page.section("Heat maps", "White to red on one scale per neuron (its largest "
                  "activation over every set; below 0 white to blue); two texts per set "
                  "here, all of them on the neuron pages.")
    page.raw("\n".join(inline) or "<p>(no candidates)</p>")
    from polysdk.studies.solu_hunt_atlas import add_solu_atlas

    add_solu_atlas(page, study, out, store=store)
    page.config(study.record())
    return page.write(paths["report"])
