"""The toy-models report: headline findings against the paper, four figures, tables.

    from polysdk.studies.toy_models_report import make_report
    make_report(study, "runs/demo")            # runs/demo/report.html (+ figures/*.png)

The figures follow the original's plots (``plot_helper.py``): loss, monosemantic
neurons / features and mean bias against log2(step); monosemanticity against the swept
variable; single-feature activation heat maps with neurons sorted by score and features
by their strongest neuron; sorted final biases. The headline block compares the run
with the directions the seed's paper reports (Jermyn, Schiefer & Hubinger 2022).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.reporting import Finding, ReportPage, colors_for, fmt, heatmap, new_figure

__all__ = ["make_report", "headline_findings", "sort_activation_matrix",
           "plot_training_curves", "plot_vs_swept", "plot_activation_heatmaps",
           "plot_sorted_biases"]

PAPER = "Jermyn, Schiefer & Hubinger 2022 (seed 002)"


def _label(ds: Any, i: int, swept: Sequence[str]) -> str:
    parts = [f"{v}={fmt(ds[v].values[i])}" for v in swept if v in ds.coords]
    if "seed" in ds.coords:
        parts.append(f"seed {int(ds['seed'].values[i])}")
    return ", ".join(parts) or f"instance {int(ds['instance'].values[i])}"


def _colors(ds: Any, var: str | None) -> list[Any]:
    if var is None or var not in ds.coords:
        return ["C0"] * ds.sizes["instance"]
    return colors_for(ds[var].values)


def plot_training_curves(chunks: Sequence[Any], swept: Sequence[str]) -> Any:
    """Loss, mono / features and mean bias against log2(step + 1), one line per model."""
    fig, axes = new_figure(1, 3, width=13, height=4.2)
    ax0, ax1, ax2 = axes[0]
    var = swept[0] if swept else None
    n_lines = 0
    for ds in chunks:
        colors = _colors(ds, var)
        lx = np.log2(ds["log_step"].values + 1)
        cx = np.log2(ds["checkpoint"].values + 1)
        for i in range(ds.sizes["instance"]):
            ax0.plot(lx, ds["loss"].values[i], color=colors[i], lw=0.9, alpha=0.8,
                     label=_label(ds, i, swept))
            ax1.plot(cx, ds["checkpoint_mono_per_feature"].values[i], "o-", color=colors[i],
                     ms=3, lw=1)
            ax2.plot(cx, ds["checkpoint_mean_bias"].values[i], "o-", color=colors[i], ms=3,
                     lw=1)
            n_lines += 1
    ax0.set(yscale="log", xlabel="log2(step)", ylabel="loss", title="loss")
    ax1.set(xlabel="log2(step)", ylabel="mono neurons / features",
            title="monosemantic neurons / N")
    ax2.set(xlabel="log2(step)", ylabel="mean first-layer bias", title="mean bias")
    if n_lines <= 12:
        fig.legend(*ax0.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


def plot_vs_swept(summary: Any, var: str, group_by: str | None = None) -> Any:
    """Final mono / neurons, mono / features and loss against the swept variable.

    Points are instances; the line joins the mean over seeds (per ``group_by`` value
    when a second variable is swept).
    """
    fig, axes = new_figure(1, 3, width=13, height=4.2)
    x = summary[var].values
    numeric = np.issubdtype(np.asarray(x).dtype, np.number)
    groups = [None] if group_by is None else list(dict.fromkeys(summary[group_by].values))
    colors = colors_for(groups) if group_by else ["C0"]
    for g, color in zip(groups, colors):
        sel = np.ones(len(x), bool) if g is None else summary[group_by].values == g
        for ax, name in zip(axes[0], ("mono_per_neuron", "mono_per_feature", "final_loss")):
            y = summary[name].values[sel]
            xs = x[sel]
            ax.scatter(xs, y, color=color, s=16, alpha=0.6)
            uniq = list(dict.fromkeys(xs.tolist()))
            means = [y[xs == u].mean() for u in uniq]
            order = np.argsort(uniq) if numeric else np.arange(len(uniq))
            ax.plot(np.asarray(uniq)[order], np.asarray(means)[order], "-", color=color,
                    label=None if g is None else f"{group_by}={fmt(g)}")
    log_x = bool(numeric and np.all(x > 0) and x.max() / max(x.min(), 1e-300) >= 20)
    for ax, title in zip(axes[0], ("monosemantic neurons / k", "monosemantic neurons / N",
                                   "final loss")):
        ax.set(xlabel=var, title=title, xscale="log" if log_x else "linear")
    axes[0, 2].set_yscale("log")
    if group_by is not None and len(groups) <= 12:
        axes[0, 0].legend(fontsize=9)
    return fig


def sort_activation_matrix(acts: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """Rows (neurons) by descending score, columns (features) by their strongest neuron.

    >>> a = np.array([[0., 1., 1.], [2., 0., 0.]])       # neuron 1 is monosemantic
    >>> sort_activation_matrix(a).tolist()
    [[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    """
    acts = np.asarray(acts, dtype=float)
    if score is None:
        score = acts.max(1) / (1e-10 + acts.sum(1))
    rows = np.argsort(-score, kind="stable")
    sorted_rows = acts[rows]
    cols = np.argsort(np.argmax(sorted_rows, axis=0), kind="stable")
    return sorted_rows[:, cols]


def plot_activation_heatmaps(chunks: Sequence[Any], swept: Sequence[str],
                             max_panels: int = 8, first_seed_only: bool = True) -> Any:
    """Sorted single-feature activation matrices (final model), one panel per model,
    each with its colour bar."""
    panels = []
    for ds in chunks:
        seeds = ds["seed"].values if "seed" in ds.coords else np.zeros(ds.sizes["instance"])
        for i in range(ds.sizes["instance"]):
            if first_seed_only and seeds[i] != seeds.min():
                continue
            panels.append((_label(ds, i, swept), ds["checkpoint_activation"].values[i, -1],
                           ds["score"].values[i]))
    panels = panels[:max_panels] or [("no models", np.zeros((1, 1)), None)]
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = new_figure(rows, cols, width=3.25 * cols, height=3.0 * rows)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (label, acts, score) in zip(axes.ravel(), panels):
        mat = sort_activation_matrix(acts, score)
        heatmap(ax, mat, label="activation", title=label, xlabel="feature (by neuron)",
                ylabel="neuron (by score)", vmin=min(0.0, float(mat.min())),
                vmax=float(np.abs(mat).max()) or 1.0)
    return fig


def plot_sorted_biases(chunks: Sequence[Any], swept: Sequence[str]) -> Any:
    """Each model's final first-layer biases, sorted, against neuron rank / k."""
    fig, axes = new_figure(1, 1, width=9, height=4.2)
    ax = axes[0, 0]
    var = swept[0] if swept else None
    for ds in chunks:
        colors = _colors(ds, var)
        for i in range(ds.sizes["instance"]):
            b = np.sort(ds["b1"].values[i])
            ax.plot(np.linspace(0, 1, len(b)), b, color=colors[i], lw=1,
                    label=_label(ds, i, swept))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="neuron rank / k", ylabel="final bias", title="sorted final biases")
    if len(ax.get_lines()) <= 13:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- headlines
def _means(summary: Any, chunks: Sequence[Any], var: str) -> dict[Any, tuple[float, ...]]:
    """swept value -> (final mono/N, peak mono/N over checkpoints, final loss), means."""
    peak = {int(i): float(v) for ds in chunks for i, v in
            zip(ds["instance"].values, ds["checkpoint_mono_per_feature"].values.max(1))}
    out = {}
    x = summary[var].values
    for u in sorted(set(x.tolist())):
        sel = x == u
        inst = summary["instance"].values[sel]
        out[u] = (float(summary["mono_per_feature"].values[sel].mean()),
                  float(np.mean([peak[int(i)] for i in inst])),
                  float(summary["final_loss"].values[sel].mean()))
    return out


def _compare(claim: str, seed_text: str, lo: Any, hi: Any, m: dict, var: str) -> Finding:
    (f_lo, p_lo, l_lo), (f_hi, p_hi, l_hi) = m[lo], m[hi]
    run = (f"final mono/N {f_hi:.3f} at {var}={fmt(hi)} vs {f_lo:.3f} at {fmt(lo)}; "
           f"peak during training {p_hi:.3f} vs {p_lo:.3f}; loss {l_hi:.4g} vs {l_lo:.4g}")
    if f_hi > f_lo:
        verdict = "agrees"
    elif p_hi > p_lo:
        verdict = "differs for the final models; agrees during training (peak)"
    else:
        verdict = "differs"
    return Finding(claim, run=run, seed=seed_text, verdict=verdict)


def headline_findings(summary: Any, chunks: Sequence[Any], swept: Sequence[str]
                      ) -> list[Finding]:
    """The run against the paper's three directions (each tested when its variable is
    swept): larger learning rate, negative bias offset, more neurons."""
    rows = []
    if "learning_rate" in swept:
        m = _means(summary, chunks, "learning_rate")
        rows.append(_compare("A larger learning rate gives more monosemantic neurons",
                             f"{PAPER}: monosemanticity rises with the learning rate",
                             min(m), max(m), m, "learning_rate"))
    else:
        rows.append(Finding("A larger learning rate gives more monosemantic neurons",
                            run="learning_rate not swept",
                            seed=f"{PAPER}: monosemanticity rises with the learning rate"))
    if "initial_bias" in swept:
        m = _means(summary, chunks, "initial_bias")
        neg = [b for b in m if b < 0]
        if neg and 0.0 in m:
            best = max(neg, key=lambda b: m[b][0] + 1e-6 * m[b][1])
            rows.append(_compare("A negative bias offset (with decay) gives more "
                                 "monosemantic neurons than offset 0 at about the same loss",
                                 f"{PAPER}: more monosemantic at a moderate negative offset",
                                 0.0, best, m, "initial_bias"))
    else:
        rows.append(Finding("A negative bias offset (with decay) gives more monosemantic "
                            "neurons than offset 0", run="initial_bias not swept",
                            seed=f"{PAPER}: more monosemantic at a moderate negative offset"))
    if "k" in swept:
        m = _means(summary, chunks, "k")
        rows.append(_compare("More neurons (larger k) give more monosemanticity",
                             f"{PAPER}: monosemanticity grows with k", min(m), max(m), m, "k"))
    else:
        rows.append(Finding("More neurons (larger k) give more monosemanticity",
                            run="k not swept", seed=f"{PAPER}: monosemanticity grows with k"))
    return rows


# ----------------------------------------------------------------------------- the page
def make_report(study: Any, out: str | Path) -> Path:
    """Figures and ``report.html`` for a finished toy-models run in ``out``."""
    from polysdk.store import ActivationStore

    paths = study.paths(out)
    store = ActivationStore(paths["store"], mode="r")
    names = [u.name for u in study.stored_units(store)]
    chunks = [store.read_result(n) for n in names]
    summary = store.read_result("toy_models/summary")
    swept = json.loads(summary.attrs.get("swept", "[]"))
    cfg = study.config
    fig_dir = paths["figures"]
    record = study.record()
    label = study.preset or "custom sweep"
    intro = (
        f"{summary.sizes['instance']} toy models (batch {study.preset or 'custom'}"
        f"{', quick scale' if study.quick else ''}), swept over {', '.join(swept) or '-'}. "
        f"Monosemantic: max/sum of a neuron's single-feature activations > "
        f"{cfg.threshold}. mono_per_feature = monosemantic neurons / N (can exceed 1), "
        "mono_per_neuron = / k; features_covered (distinct features with a monosemantic "
        "neuron) is a polysdk metric, not the paper's. final_loss = mean of the last 8 "
        f"logged losses. Data: {paths['store'].name} (results toy_models/chunk_*, "
        "toy_models/summary).")
    page = ReportPage(f"Toy models of superposition: {label}", intro)
    page.findings(headline_findings(summary, chunks, swept))
    page.figure(plot_training_curves(chunks, swept),
                "Training: loss, monosemantic neurons / N and mean bias against log2(step)",
                save_as=fig_dir / "training.png")
    if swept:
        page.figure(plot_vs_swept(summary, swept[0], swept[1] if len(swept) > 1 else None),
                    f"Final monosemanticity and loss against {swept[0]}",
                    save_as=fig_dir / "vs_swept.png")
    page.figure(plot_activation_heatmaps(chunks, swept),
                "Single-feature activations of the final models (neurons sorted by score, "
                "features by their strongest neuron; first seed)",
                save_as=fig_dir / "activations.png")
    page.figure(plot_sorted_biases(chunks, swept), "Sorted final biases",
                save_as=fig_dir / "biases.png")
    table = []
    for i in range(summary.sizes["instance"]):
        row: dict[str, Any] = {"instance": int(summary["instance"].values[i])}
        for v in swept:
            row[v] = summary[v].values[i].item()
        row["seed"] = int(summary["seed"].values[i])
        for v in ("final_loss", "mono_per_feature", "mono_per_neuron", "features_covered",
                  "n_mono", "final_mean_bias"):
            row[v] = summary[v].values[i].item()
        table.append(row)
    page.table(table, "Per-instance numbers")
    page.config(record)
    return page.write(paths["report"])
