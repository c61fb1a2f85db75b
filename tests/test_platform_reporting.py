"""The reporting toolkit: object-API figures (no pyplot state), colour bars on heat maps,
readable fonts, offline HTML pages with the headline findings first; the run index."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from polysdk.reporting import (
    MIN_FONT_PT, Finding, ReportPage, check_figure, heatmap, new_figure, write_index,
)


def test_importing_sets_nothing_in_matplotlib() -> None:
    code = ("import matplotlib, sys; before = dict(matplotlib.rcParams); "
            "import polysdk.reporting, polysdk.studies.toy_models_report; "
            "assert dict(matplotlib.rcParams) == before; "
            "assert 'matplotlib.pyplot' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_check_figure_rules() -> None:
    fig, axes = new_figure(1, 2, width=8)
    heatmap(axes[0, 0], np.eye(3), label="value")
    assert check_figure(fig) == []
    axes[0, 1].imshow(np.eye(3))                               # no colour bar
    axes[0, 1].set_title("tiny", fontsize=5)
    problems = check_figure(fig)
    assert any("no colour bar" in p for p in problems)
    assert any("'tiny'" in p for p in problems)
    assert new_figure(1, 1, width=30)[0].get_figwidth() <= 13  # never wider than the page


def test_page_is_offline_and_starts_with_findings(tmp_path) -> None:
    fig, axes = new_figure(1, 1)
    axes[0, 0].plot([0, 1], [1, 0], label="x")
    axes[0, 0].legend(fontsize=5)                              # raised when saved
    page = ReportPage("A <study>", "intro & more")
    page.findings([Finding("it rises", run="0.3 vs 0.1", seed="rises", verdict="agrees")])
    page.figure(fig, "a line", save_as=tmp_path / "figures" / "line.png")
    page.table([{"a": 0.123456, "b": "x"}], "numbers")
    path = page.write(tmp_path / "report.html")
    text = path.read_text()
    assert "A &lt;study&gt;" in text and "intro &amp; more" in text
    assert text.index("Headline findings") < text.index("intro") < text.index("<figure>")
    assert 'class="agrees"' in text and "0.1235" in text
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|//)', text)   # nothing fetched
    assert (tmp_path / "figures" / "line.png").read_bytes()[:4] == b"\x89PNG"
    assert all(t.get_fontsize() >= MIN_FONT_PT
               for t in fig.findobj(lambda a: hasattr(a, "get_fontsize")) if t.get_text())


def test_toy_figures_follow_the_rules(tmp_path) -> None:
    from polysdk.store import ActivationStore
    from polysdk.studies import ToyModelStudy
    from polysdk.studies import toy_models_report as rep

    study = ToyModelStudy("K1", quick=True, sweep={"k": [4, 8]}, seeds=2, progress=False,
                          N=16, m=4, log2_batch_size=4, log2_training_steps=5)
    study.run(out=tmp_path / "k", report=False)
    store = ActivationStore(tmp_path / "k" / "results.zarr")
    chunks = [store.read_result(u.name) for u in study.stored_units(store)]
    summary = store.read_result("toy_models/summary")
    for fig in (rep.plot_training_curves(chunks, ["k"]), rep.plot_vs_swept(summary, "k"),
                rep.plot_activation_heatmaps(chunks, ["k"]),
                rep.plot_sorted_biases(chunks, ["k"])):
        from polysdk.reporting import png_bytes

        png_bytes(fig)
        assert check_figure(fig) == []
    findings = rep.headline_findings(summary, chunks, ["k"])
    assert [f.verdict for f in findings][0] == "not tested here"   # lr not swept
    assert findings[2].finding.startswith("More neurons") and "k=8" in findings[2].run


def test_index_lists_runs_and_their_state(tmp_path) -> None:
    from polysdk.studies import get_study

    cls = get_study("example-noise")
    cls(quick=True, progress=False).run(out=tmp_path / "a" / "done")
    (tmp_path / "b").mkdir()
    index = write_index(tmp_path).read_text()
    assert 'href="a/done/report.html"' in index and "<td>2/2</td>" in index
    with pytest.raises(Exception, match="not a folder"):
        write_index(tmp_path / "missing")
