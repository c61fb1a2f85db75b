"""Figures (PNG, matplotlib Agg) and the one-page HTML report of a study run.

    from polysdk.report import toy_models_report
    path = toy_models_report(study, "runs/demo")     # runs/demo/report.html

The figures follow the original's plots (``plot_helper.py``): loss, monosemantic
neurons / features and mean bias against log2(step); monosemanticity against the swept
variable; single-feature activation heat maps with neurons sorted by score and features
by their strongest neuron; sorted final biases. The page links its figures from
``<out>/figures/`` and tabulates every instance's numbers and the run's config.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["toy_models_report", "plot_training_curves", "plot_vs_swept",
           "plot_activation_heatmaps", "plot_sorted_biases", "sort_activation_matrix",
           "write_html"]


def _label(ds: xr.Dataset, i: int, swept: Sequence[str]) -> str:
    parts = [f"{v}={_fmt(ds[v].values[i])}" for v in swept if v in ds.coords]
    if "seed" in ds.coords:
        parts.append(f"seed {int(ds['seed'].values[i])}")
    return ", ".join(parts) or f"instance {int(ds['instance'].values[i])}"


def _fmt(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4g}"
    return str(x)


def _colors(values: np.ndarray) -> list[Any]:
    cmap = plt.get_cmap("viridis")
    try:
        v = np.asarray(values, dtype=float)
        if np.all(v > 0) and v.max() / v.min() >= 10:   # rates, eps, k, decays: log scale
            v = np.log(v)
        lo, hi = np.nanmin(v), np.nanmax(v)
        pos = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    except (TypeError, ValueError):
        uniq = list(dict.fromkeys(values.tolist()))
        pos = np.array([uniq.index(x) / max(1, len(uniq) - 1) for x in values.tolist()])
    return [cmap(0.9 * p) for p in pos]


def plot_training_curves(chunks: Sequence[xr.Dataset], swept: Sequence[str], path: Path
                         ) -> Path:
    """Loss, mono / features and mean bias against log2(step + 1), one line per model."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    var = swept[0] if swept else None
    for ds in chunks:
        colors = _colors(ds[var].values) if var in ds.coords else [None] * ds.sizes["instance"]
        lx = np.log2(ds["log_step"].values + 1)
        cx = np.log2(ds["checkpoint"].values + 1)
        for i in range(ds.sizes["instance"]):
            lab = _label(ds, i, swept)
            axes[0].plot(lx, ds["loss"].values[i], color=colors[i], lw=0.8, alpha=0.8,
                         label=lab)
            axes[1].plot(cx, ds["checkpoint_mono_per_feature"].values[i], "o-",
                         color=colors[i], ms=3, lw=1)
            axes[2].plot(cx, ds["checkpoint_mean_bias"].values[i], "o-", color=colors[i],
                         ms=3, lw=1)
    axes[0].set(yscale="log", xlabel="log2(step)", ylabel="loss", title="loss")
    axes[1].set(xlabel="log2(step)", ylabel="mono neurons / features",
                title="monosemantic neurons / N")
    axes[2].set(xlabel="log2(step)", ylabel="mean first-layer bias", title="mean bias")
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 16:
        axes[0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_vs_swept(summary: xr.Dataset, var: str, path: Path,
                  group_by: str | None = None) -> Path:
    """Final mono / neurons, mono / features and loss against the swept variable.

    Points are instances; the line joins the mean over seeds (per ``group_by`` value
    when a second variable is swept).
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = summary[var].values
    numeric = np.issubdtype(np.asarray(x).dtype, np.number)
    groups = [None] if group_by is None else list(dict.fromkeys(summary[group_by].values))
    colors = _colors(np.asarray(groups)) if group_by else ["C0"]
    for g, color in zip(groups, colors):
        sel = np.ones(len(x), bool) if g is None else summary[group_by].values == g
        for ax, name in zip(axes, ("mono_per_neuron", "mono_per_feature", "final_loss")):
            y = summary[name].values[sel]
            xs = x[sel]
            ax.scatter(xs, y, color=color, s=14, alpha=0.6)
            uniq = list(dict.fromkeys(xs.tolist()))
            means = [y[xs == u].mean() for u in uniq]
            order = np.argsort(uniq) if numeric else np.arange(len(uniq))
            ax.plot(np.asarray(uniq)[order], np.asarray(means)[order], "-", color=color,
                    label=None if g is None else f"{group_by}={_fmt(g)}")
    log_x = numeric and np.all(x > 0) and x.max() / max(x.min(), 1e-300) >= 20
    for ax, title in zip(axes, ("monosemantic neurons / k", "monosemantic neurons / N",
                                "final loss")):
        ax.set(xlabel=var, title=title, xscale="log" if log_x else "linear")
    axes[2].set_yscale("log")
    if group_by is not None and len(groups) <= 12:
        axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def plot_activation_heatmaps(chunks: Sequence[xr.Dataset], swept: Sequence[str], path: Path,
                             max_panels: int = 12, first_seed_only: bool = True) -> Path:
    """Sorted single-feature activation matrices (final model), one panel per model."""
    panels = []
    for ds in chunks:
        seeds = ds["seed"].values if "seed" in ds.coords else np.zeros(ds.sizes["instance"])
        for i in range(ds.sizes["instance"]):
            if first_seed_only and seeds[i] != seeds.min():
                continue
            panels.append((_label(ds, i, swept), ds["checkpoint_activation"].values[i, -1],
                           ds["score"].values[i]))
    panels = panels[:max_panels]
    cols = min(4, max(1, len(panels)))
    rows = int(np.ceil(len(panels) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, acts, score) in zip(axes.ravel(), panels):
        ax.axis("on")
        mat = sort_activation_matrix(acts, score)
        vmax = float(np.abs(mat).max()) or 1.0
        ax.imshow(mat, aspect="auto", cmap="magma", vmin=min(0.0, float(mat.min())),
                  vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=7)
        ax.set_xlabel("feature (by strongest neuron)", fontsize=7)
        ax.set_ylabel("neuron (by score)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sorted_biases(chunks: Sequence[xr.Dataset], swept: Sequence[str], path: Path) -> Path:
    """Each model's final first-layer biases, sorted, against neuron rank / k."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    var = swept[0] if swept else None
    for ds in chunks:
        colors = _colors(ds[var].values) if var in ds.coords else [None] * ds.sizes["instance"]
        for i in range(ds.sizes["instance"]):
            b = np.sort(ds["b1"].values[i])
            ax.plot(np.linspace(0, 1, len(b)), b, color=colors[i], lw=1,
                    label=_label(ds, i, swept))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="neuron rank / k", ylabel="final bias", title="sorted final biases")
    if len(ax.get_lines()) <= 17:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_html(path: Path, title: str, intro: str, config: dict[str, Any],
               table: list[dict[str, Any]], figures: list[tuple[str, Path]]) -> Path:
    """A single page: the figures (relative links), a per-instance table, the config."""
    esc = html.escape
    head = list(table[0]) if table else []
    rows = "\n".join("<tr>" + "".join(f"<td>{esc(_fmt(r[h]))}</td>" for h in head) + "</tr>"
                     for r in table)
    figs = "\n".join(
        f'<figure><img src="{esc(str(p.relative_to(path.parent)))}" alt="{esc(cap)}">'
        f"<figcaption>{esc(cap)}</figcaption></figure>" for cap, p in figures)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px;
text-align:right}}img{{max-width:100%}}figure{{margin:1.5em 0}}pre{{background:#f6f6f6;
padding:1em;overflow:auto}}</style></head><body>
<h1>{esc(title)}</h1>
<p>{intro}</p>
<h2>Figures</h2>
{figs}
<h2>Per-instance numbers</h2>
<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr>
{rows}
</table>
<h2>Config</h2>
<pre>{esc(json.dumps(config, indent=2))}</pre>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def toy_models_report(study: Any, out: Path) -> Path:
    """Figures and ``report.html`` for a finished toy-models run in ``out``."""
    from polysdk.store import ActivationStore

    paths = study.paths(out)
    paths["figures"].mkdir(parents=True, exist_ok=True)
    store = ActivationStore(paths["store"], mode="r")
    names = sorted(n for n in store.list_results() if n.startswith("toy_models/chunk_"))
    chunks = [store.read_result(n) for n in names]
    summary = store.read_result("toy_models/summary")
    swept = json.loads(summary.attrs.get("swept", "[]"))
    fig_dir = paths["figures"]
    figures = [("Training: loss, monosemantic neurons / N and mean bias against log2(step)",
                plot_training_curves(chunks, swept, fig_dir / "training.png"))]
    if swept:
        figures.append((f"Final monosemanticity and loss against {swept[0]}",
                        plot_vs_swept(summary, swept[0], fig_dir / "vs_swept.png",
                                      group_by=swept[1] if len(swept) > 1 else None)))
    figures.append(("Single-feature activations of the final models (neurons sorted by "
                    "score, features by their strongest neuron; first seed)",
                    plot_activation_heatmaps(chunks, swept, fig_dir / "activations.png")))
    figures.append(("Sorted final biases",
                    plot_sorted_biases(chunks, swept, fig_dir / "biases.png")))
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
    cfg = study.config()
    n_inst = summary.sizes["instance"]
    intro = html.escape(
        f"{n_inst} toy models (batch {cfg.get('batch') or 'custom'}"
        f"{', quick scale' if cfg.get('quick') else ''}), swept over {', '.join(swept) or '-'}. "
        f"Monosemantic: max/sum of a neuron's single-feature activations > "
        f"{cfg.get('threshold')}. mono_per_feature = monosemantic neurons / N (can exceed 1), "
        "mono_per_neuron = / k; features_covered (distinct features with a monosemantic "
        "neuron) is a polysdk metric, not the paper's. final_loss = mean of the last 8 "
        f"logged losses. Data: {paths['store'].name} (results toy_models/chunk_*, "
        "toy_models/summary).")
    return write_html(paths["report"], f"Toy models of superposition: "
                      f"{cfg.get('batch') or 'custom sweep'}", intro, cfg, table, figures)
