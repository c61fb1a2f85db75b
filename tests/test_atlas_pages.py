"""The atlas page and the neuron pages: self-contained (no network, images inline),
linked both ways; text heat maps, image montages, plain rows; and ``polysdk atlas``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from polysdk.atlas import Atlas, neuron_page, save_truth, write_neuron_page
from polysdk.cli import main
from polysdk.data import make_planted_classes, make_planted_concepts
from polysdk.errors import ConfigError
from polysdk.reporting.examples import montage_html
from polysdk.store import ActivationStore

FAST = {"dictionary_features": {"epochs": 5}}


def assert_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    for src in re.findall(r'src="([^"]*)"', text):
        assert src.startswith("data:image/png;base64,"), src[:60]
    assert "<script" not in text and "<link" not in text


def hrefs(text: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', text)


@pytest.fixture(scope="module")
def concept_page(tmp_path_factory):
    pc = make_planted_concepts(seed=0)
    atlas = Atlas(pc.activations, truth=pc.polysemantic, params=FAST).fit()
    out = tmp_path_factory.mktemp("atlas") / "atlas.html"
    page = atlas.to_html(out, pages=3, tokenizer=pc.tokenizer,
                         interventions={atlas.disputed(1)[0]: {"zero ablation": {"loss change": 0.25}}})
    return pc, atlas, page


def test_atlas_page_is_self_contained_and_links_to_neuron_pages(concept_page):
    _, atlas, page = concept_page
    text = page.read_text()
    assert_self_contained(text)
    assert text.count("data:image/png;base64,") == 2      # the matrix and the agreement map
    for needle in ("Against the planted truth", "precision", "Jaccard", "Spearman", "skipped",
                   "feature_capacity", "weight-based"):
        assert needle in text
    links = [h for h in hrefs(text) if h.startswith("neurons/")]
    assert len(links) == 3
    assert links == [f"neurons/activations/unit-{u}.html" for u in atlas.disputed(3)]
    for link in links:
        target = page.parent / link
        assert target.exists()
        sub = target.read_text()
        assert_self_contained(sub)
        back = [h for h in hrefs(sub) if h.endswith("atlas.html")]
        assert back and (target.parent / back[0]).resolve() == page.resolve()


def test_neuron_page_shows_tokens_scores_histogram_and_interventions(concept_page):
    pc, atlas, page = concept_page
    u = atlas.disputed(1)[0]
    text = (page.parent / f"neurons/activations/unit-{u}.html").read_text()
    assert 'class="tokens"' in text and 'class="scale"' in text      # heat map + its colour bar
    top_text = int(np.argmax(pc.activations.isel(unit=u).max("position").values))
    assert f"text {top_text} (" in text                                # the best text first
    first = text.index("Top-activating examples")
    assert text.index(f"text {top_text} (") > first
    for name in atlas.result_["detector"].values:
        assert f"<td class=\"l\">{name}</td>" in text
    assert "Activation histogram by label" in text and "data:image/png;base64," in text
    assert "zero ablation" in text and "0.25" in text


def test_neuron_page_on_flat_tokens_decodes_ids_with_the_tokenizer():
    pc = make_planted_concepts(seed=0, texts_per_set=3)
    a = pc.activations
    mask = a["mask"].values
    s, p = np.nonzero(mask)
    ids = np.array([pc.tokenizer.index[t] for t in a["token"].values[s, p]])
    flat = xr.DataArray(a.values[s, p], dims=("token", "unit"),
                        coords={"sample": ("token", s), "position": ("token", p),
                                "token_id": ("token", ids),
                                "concept": ("token", a["concept"].values[s])})
    text = neuron_page(flat, 3, tokenizer=pc.tokenizer)
    assert_self_contained(text)
    assert 'class="tokens"' in text
    word = pc.tokenizer.convert_ids_to_tokens([ids[np.argmax(flat.isel(unit=3).values)]])[0]
    assert f">{word}</span>" in text
    assert "#" not in re.sub(r"#[0-9a-f]{3,6}", "", text.split("Top-activating")[1].split("<h2>")[0])
    plain = neuron_page(flat.drop_vars("token_id"), 3)                # no tokens: placeholders
    assert "[0]" in plain


def test_neuron_page_images_as_a_montage_and_rows_otherwise(tmp_path):
    pl = make_planted_classes(n_samples=120, n_classes=3, units_per_class=2, n_poly=2, seed=0)
    images = np.random.default_rng(0).random((120, 3, 8, 8))          # (N, C, H, W)
    text = neuron_page(pl.activations, 0, images=images, top=5)
    assert_self_contained(text)
    assert text.count('class="montage"') == 1
    montage = text.split('class="montage"')[1].split("</div>")[0]
    assert montage.count("<img") >= 1                                  # the montage figure
    with_images = xr.Dataset({"activation": pl.activations,
                              "image": (("sample", "h", "w"), images[:, 0])})
    assert 'class="montage"' in neuron_page(with_images, 0, top=4)
    grid = montage_html(list(images[:3]), ["a", "b", "c"])               # the HTML fallback
    assert grid.count("<img") == 3 and "<figcaption>b</figcaption>" in grid
    rows = neuron_page(pl.activations, 0, top=4)
    assert "<th>rank</th>" in rows and "<th>label</th>" in rows
    path = write_neuron_page(tmp_path / "n" / "u.html", pl.activations, 1)
    assert path.exists()
    with pytest.raises(ConfigError, match="out of range"):
        neuron_page(pl.activations, 99)


def _store(path, n=500):
    pl = make_planted_classes(n_samples=n, seed=2)
    with ActivationStore(path, mode="w", chunk_samples=128) as store:
        store.append({"fc": pl.activations.values, "fc2": pl.activations.values[:, :10]},
                     dims={"fc": ("sample", "unit"), "fc2": ("sample", "unit")},
                     coords={"label": pl.activations["label"].values})
    with ActivationStore(path, mode="a") as store:
        save_truth(store, "fc", pl.polysemantic)
    return pl


def test_cli_atlas_on_a_store(tmp_path, capsys):
    _store(tmp_path / "acts.zarr")
    rc = main(["atlas", str(tmp_path / "acts.zarr"), "--site", "fc", "--out", str(tmp_path / "o"),
               "--pages", "2", "--detectors", "class_selectivity,concept_ranking,hdbscan",
               "--save"])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip() == f"atlas: {tmp_path / 'o' / 'atlas.html'}"
    text = (tmp_path / "o" / "atlas.html").read_text()
    assert_self_contained(text)
    assert "Against the planted truth" in text
    assert all((tmp_path / "o" / h).exists() for h in hrefs(text) if h.startswith("neurons/"))
    assert "atlas/fc" in ActivationStore(tmp_path / "acts.zarr").list_results()
    rc = main(["atlas", str(tmp_path / "acts.zarr"), "--detectors", "class_selectivity",
               "--pages", "0"])                                    # every site, default --out
    assert rc == 0
    text = (tmp_path / "acts-atlas" / "atlas.html").read_text()
    assert "Site fc2" in text and "Site fc" in text


def test_cli_labels_names_the_label_coordinate(tmp_path):
    """Labels stored under another name ('digit'): class selectivity is skipped, and
    fitted once --labels names the coordinate."""
    pl = make_planted_classes(n_samples=300, seed=2)
    with ActivationStore(tmp_path / "acts.zarr", mode="w") as store:
        store.append({"fc": pl.activations.values}, dims={"fc": ("sample", "unit")},
                     coords={"digit": pl.activations["label"].values})
    argv = ["atlas", str(tmp_path / "acts.zarr"), "--detectors", "class_selectivity",
            "--pages", "0", "--save"]
    assert main(argv) == 0
    assert "class_selectivity" not in ActivationStore(tmp_path / "acts.zarr").read_result(
        "atlas/fc")["detector"].values
    assert main([*argv, "--labels", "digit"]) == 0
    table = ActivationStore(tmp_path / "acts.zarr").read_result("atlas/fc")
    assert list(table["detector"].values) == ["class_selectivity"]
    assert "'digit'" in table.attrs["labels_from"]


def test_cli_no_progress_silences_the_detectors_bars(tmp_path, capsys):
    """40 units are two HDBSCAN unit batches: a bar, unless --no-progress (every bar off)."""
    _store(tmp_path / "acts.zarr", n=200)
    argv = ["atlas", str(tmp_path / "acts.zarr"), "--site", "fc", "--detectors", "hdbscan",
            "--pages", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert "hdbscan" in capsys.readouterr().err
    assert main([*argv, "--no-progress"]) == 0
    assert "hdbscan" not in capsys.readouterr().err
    assert main(argv) == 0                                  # the switch is per call, not sticky
    assert "hdbscan" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["atlas", "{tmp}/nothing.zarr"], "no activation store"),
    (["atlas", "{tmp}/acts.zarr", "--site", "fc3"], "'fc3' is not in the store"),
    (["atlas", "{tmp}/acts.zarr", "--detectors", "class_selectivty"], "class_selectivity"),
    (["atlas", "{tmp}/acts.zarr", "--pages", "-1"], "--pages -1"),
    (["atlas", "{tmp}/acts.zarr", "--detectors", ","], "names no detector"),
    (["atlas", "{tmp}/acts.zarr", "--labels", "lable"], "--labels 'lable': site 'fc' has no"),
])
def test_cli_atlas_bad_input_is_one_line(tmp_path, capsys, argv, message):
    _store(tmp_path / "acts.zarr", n=200)
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("polysdk: error: ") and "\n" not in err and message in err


def test_add_atlas_is_one_call_for_a_study_report(tmp_path):
    from polysdk.atlas import add_atlas
    from polysdk.reporting import ReportPage

    pl = make_planted_classes(n_samples=300, seed=3)
    page = ReportPage("a study")
    atlas = add_atlas(page, pl.activations, tmp_path, detectors=["class_selectivity", "hdbscan"],
                      truth=pl.polysemantic, pages=1)
    report = page.write(tmp_path / "report.html").read_text()
    assert 'href="atlas.html"' in report and "Detector agreement atlas" in report
    assert_self_contained(report)
    assert atlas.page_ == tmp_path / "atlas.html" and atlas.page_.exists()


def test_subword_tokens_are_shown_as_words():
    toks = np.array(["[CLS]", "play", "##ing", "ball", "[CLS]", "red", "##dish"])
    flat = xr.DataArray(np.arange(14.0).reshape(7, 2), dims=("token", "unit"),
                        coords={"sample": ("token", [0, 0, 0, 0, 1, 1, 1]),
                                "token_str": ("token", toks)})
    text = neuron_page(flat, 1)
    assert '"> play</span>' in text and '">ing</span>' in text and "##" not in text


def test_flat_tokens_without_a_tokenizer_show_token_ids_not_row_numbers():
    """A per-token store's `token` coordinate is the row number; with no tokenizer the
    heat map shows each token's id (#id), never that row number."""
    rng = np.random.default_rng(0)
    lengths = [5, 3, 4]
    sample = np.repeat(np.arange(3), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    ids = 1000 + rng.integers(0, 50, size=len(sample))
    acts = xr.DataArray(rng.random((len(sample), 4)), dims=("token", "unit"), coords={
        "token": np.arange(len(sample)), "sample": ("token", sample),
        "position": ("token", position), "token_id": ("token", ids)})
    shown = re.findall(r">([^<>]+)</span>", neuron_page(acts, 0, top=3))
    tokens = [t for t in shown if t.startswith("#")]
    assert len(tokens) == len(sample)                    # every token of the 3 texts, as #id
    assert set(tokens) <= {f"#{i}" for i in ids}
