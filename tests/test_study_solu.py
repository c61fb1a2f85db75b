"""The SoLU neuron-hunt study (seed 003) on tiny models: pipeline, planted truth, errors,
report and heat maps, the real-model path, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from polysdk.data.corpora import ConceptCorpus, concept_sets
from polysdk.detect.token_types import attribute, normalise, token_type, token_types
from polysdk.errors import ConfigError, DetectorInputError, SiteNotFoundError
from polysdk.reporting.text_heatmap import display_tokens, neuron_page_html, set_heatmaps_html
from polysdk.store import ActivationStore
from polysdk.studies import get_study
from polysdk.studies.solu_hunt import SoLUHuntStudy
from polysdk.studies.solu_hunt_pipeline import (TruncationWarning, analyse, record,
                                                scaled_top_k)

#: a study small enough for a test: 2 layers x 32 neurons, 5 steps, 4 texts per set
TINY = dict(d_model=16, d_mlp=32, n_layers=2, n_heads=2, train_steps=5, chars_per_topic=5000,
            vocab_size=400, top_k=3, top_k_reference=None, n_texts=4, max_chars=300,
            n_ctx=256, batch_texts=3)
TINY_SETS = [f"--set={k}={'none' if v is None else v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("solu") / "run"
    study = SoLUHuntStudy("seed-run-2", model="solu,gelu", progress=False, **TINY)
    report = study.run(out=out)
    return study, out, report


def test_registered_and_units():
    assert get_study("solu-hunt") is SoLUHuntStudy
    names = [u.name for u in SoLUHuntStudy(quick=True).units()]
    assert names == ["twins/tokenizer", "twins/solu/train", "twins/gelu/train", "solu/record",
                     "gelu/record", "minilm/record", "solu/analyse", "gelu/analyse",
                     "minilm/analyse", "planted/analyse"]
    assert SoLUHuntStudy("seed-run-1").config.top_k == 50
    assert SoLUHuntStudy(quick=True).config.d_mlp * 4 == 1024


def test_planted_neurons_come_out_as_planted(tiny_run):
    study, out, _ = tiny_run
    p = study.results(out)["planted/analyse"]
    verdict = {int(u): (str(v), bool(c), {str(a), str(b)}) for u, v, c, a, b, layer in zip(
        p["cand_unit"].values, p["verdict"].values, p["is_candidate"].values,
        p["pair_a"].values, p["pair_b"].values, p["cand_layer"].values) if layer == 1}
    assert verdict[0] == ("polysemantic", True, {"fortran", "medical"})
    assert verdict[1][0] == "shallow cause"          # fires on "." only
    j = list(p["cand_unit"].values).index(1)
    share = dict(zip(p["type"].values, p["type_share"].values[j].max(0)))
    assert share["punctuation"] > 0.99


def test_results_and_report(tiny_run):
    study, out, report = tiny_run
    res = study.results(out)
    for m in ("solu", "gelu"):
        ds = res[f"{m}/analyse"]
        k = ds.attrs["top_k"]
        assert ds.sizes["neuron"] == 64 and k == 3
        assert (ds["active"].sum("neuron").values == k).all()        # the rank rule
        np.testing.assert_array_equal(ds["candidate"].values, ds["n_sets"].values == 2)
        narrow = ds["candidate"] & ds["active"].sel(set="fortran") & \
            ~ds["active"].sel(set="gibberish")
        np.testing.assert_array_equal(ds["narrow_candidate"].values, narrow.values)
    rec = res["solu/record"]
    assert "<bos>" not in set(rec["tok_str"].values)                   # BOS does not count
    summary = ActivationStore(out / "results.zarr").read_result("solu_hunt/summary")
    assert list(summary["model_row"].values) == ["solu", "gelu"]
    page = report.read_text()
    for text in ("Headline findings", "38 neurons in exactly two", "Candidates per layer",
                 "Verdicts", "Planted neurons come out as planted", "SoLU twin vs GELU twin",
                 'class="scale"', "data:image/png;base64,"):
        assert text in page, text
    pages = sorted((out / "neurons").rglob("*.html"))
    assert pages and "Top-activating tokens" in pages[0].read_text()
    assert (out / "tokens" / "solu.zarr").exists()


def test_report_links_the_atlas_of_each_model(tiny_run):
    study, out, report = tiny_run
    page = report.read_text()
    assert "Detector agreement atlas" in page and "Atlas against the study" in page
    summary = json.loads((out / "atlas_summary.json").read_text())
    assert list(summary) == ["solu", "gelu", "planted"]
    res = study.results(out)
    for m in ("solu", "gelu"):
        assert f'href="atlas/{m}/atlas.html"' in page
        atlas_page = (out / "atlas" / m / "atlas.html").read_text()
        assert "Detector agreement atlas" in atlas_page and "concept_sets" in atlas_page
        assert sorted(summary[m]) == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
        ds = res[f"{m}/analyse"]
        for site, s in summary[m].items():
            assert "concept_sets" in s["flagged"] and "dictionary_features" in s["flagged"]
            assert s["params"]["concept_sets"]["exactly"] == 2          # the study's rule
            layer = ds["layer"].values == s["layer"]
            assert s["study"]["candidate"]["n"] == int(ds["candidate"].values[layer].sum())
        pages = list((out / "atlas" / m / "neurons").rglob("unit-*.html"))
        assert pages and "atlas.html" in pages[0].read_text()           # links back
    assert list(summary["planted"]) == ["blocks.1.mlp.hook_post"]
    assert set(summary["planted"]["blocks.1.mlp.hook_post"]["planted_units"]) == {"0", "1"}


def test_padding_never_counts_and_texts_are_cut_with_a_warning(tiny_run, tmp_path):
    study = tiny_run[0]
    model, tok, sites, kind, _ = study.model_for("solu")
    corpus = ConceptCorpus({"a": ["real :: x\n  x = 1", "subroutine foo(a, b) end"],
                            "b": ["El tumor es benigno.", "patient blood pressure of 101"]})
    rec = record(model, tok, corpus, sites, tmp_path / "t.zarr", max_len=256, batch_size=3)
    alone = record(model, tok, ConceptCorpus({"a": [corpus.sets["a"][1]]}), sites,
                   tmp_path / "u.zarr", max_len=256)
    np.testing.assert_allclose(rec["text_mean"].values[1], alone["text_mean"].values[0],
                               rtol=1e-4, atol=1e-5)
    with pytest.warns(TruncationWarning, match=r"1 of 4 texts .* 3 tokens dropped \(b: 3\)"):
        n = len(tok(corpus.sets["b"][0])["input_ids"])
        short = ConceptCorpus({"a": ["x = 1"] * 3, "b": corpus.sets["b"][:1]})
        cut = record(model, tok, short, sites, tmp_path / "v.zarr", max_len=n - 3)
    assert cut.attrs["tokens_dropped"] == 3


def test_clear_errors(tiny_run, tmp_path):
    study = tiny_run[0]
    model, tok, sites, _, _ = study.model_for("solu")
    corpus = concept_sets("seed-run-2", n_texts=1, max_chars=60)
    with pytest.raises(SiteNotFoundError, match="blocks.0.mlp.hook_post"):
        record(model, tok, corpus, ["blocks.0.mlp.hook_pots"], tmp_path / "x.zarr", max_len=64)
    with pytest.raises(ConfigError, match="'medical' has no texts"):
        ConceptCorpus({"fortran": ["x"], "medical": []})
    with pytest.raises(ConfigError, match="n_texts=0"):
        SoLUHuntStudy(n_texts=0)
    with pytest.raises(ConfigError, match="between 1 and the model's neuron count"):
        scaled_top_k(100, 64, None)
    rec = study.results(tiny_run[1])["solu/record"]
    with pytest.raises(ConfigError, match="top_k=65 but the model has 64 neurons"):
        analyse(rec, top_k=65)
    with pytest.raises(DetectorInputError, match="'x' has no texts"):
        from polysdk.studies.solu_hunt_pipeline import _set_means

        _set_means(rec["text_mean"].values, rec["text_set"].values, ["fortran", "x"])
    with pytest.raises(ConfigError, match="narrow filter names 'cobol'"):
        SoLUHuntStudy(narrow_require=("cobol",))


def test_token_types():
    assert [token_type(t) for t in ["▁.", "3.14", "\n", "##la", "[CLS]", "▁::", "Ġthe"]] == \
        ["punctuation", "digits", "whitespace", "content", "special", "punctuation", "content"]
    assert normalise("▁Real") == "real"
    types = token_types(["▁real", "▁real", "▁x", "▁y"], ["a", "b", "a", "b"], ("a", "b"))
    assert list(types) == ["shared", "shared", "content", "content"]
    share = attribute(np.array([2.0, 0.0, -1.0, 2.0]), ["punctuation", "content", "content",
                                                        "content"], np.array([0, 0, 1, 1]))
    assert share["punctuation"] == pytest.approx(0.5) and share["content"] == pytest.approx(0.5)


def test_heatmap_component():
    sets = {"fortran": [(["real", "▁::", "▁x", "\n"], np.array([0.0, 2.0, 1.0, -1.0]))],
            "medical": [(["The", "▁<cell>"], np.array([4.0, 0.5]))]}
    block = set_heatmaps_html(sets, title="L0N1", label="L0N1 activation")
    assert block.count('class="scale"') == 1 and ">-1<" in block and ">4<" in block
    assert "&lt;cell&gt;" in block and "rgb(178,24,43)" in block       # max = full red
    assert "rgb(255,255,255)" in block                                 # 0 = white
    assert display_tokens(["▁a", "\n"]) == [" a", "⏎\n"]
    assert display_tokens(["ho", "##la"]) == [" ho", "la"]
    page = neuron_page_html("L0N1", sets, verdict="unclear", evidence="a | b")
    assert "<li>a</li>" in page and "Top-activating texts" in page


def _legacy_checkpoint(folder: Path) -> None:
    """A tiny checkpoint in the legacy TransformerLens format (as NeelNanda/SoLU_*)."""
    L, dm, dmlp, H, dh, V, C = 2, 16, 32, 2, 8, 50, 12
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(
        d_model=dm, n_layers=L, d_mlp=dmlp, d_head=dh, n_heads=H, n_ctx=C, d_vocab=V,
        act_fn="solu_ln", attn_only=False, normalization_type="LN")))
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g) * 0.1
    sd = {"embed.W_E": r(V, dm), "pos_embed.W_pos": r(C, dm), "ln_final.w": torch.ones(dm),
          "ln_final.b": torch.zeros(dm), "unembed.W_U": r(dm, V), "unembed.b_U": torch.zeros(V)}
    for i in range(L):
        p = f"blocks.{i}."
        sd.update({p + "ln1.w": torch.ones(dm), p + "ln1.b": torch.zeros(dm),
                   p + "ln2.w": torch.ones(dm), p + "ln2.b": torch.zeros(dm),
                   p + "attn.W_Q": r(H, dm, dh), p + "attn.W_K": r(H, dm, dh),
                   p + "attn.W_V": r(H, dm, dh), p + "attn.W_O": r(H, dh, dm),
                   p + "attn.b_Q": r(H, dh), p + "attn.b_K": r(H, dh), p + "attn.b_V": r(H, dh),
                   p + "attn.b_O": r(dm), p + "mlp.W_in": r(dm, dmlp), p + "mlp.b_in": r(dmlp),
                   p + "mlp.W_out": r(dmlp, dm), p + "mlp.b_out": r(dm),
                   p + "mlp.ln.w": torch.ones(dmlp), p + "mlp.ln.b": torch.zeros(dmlp)})
    torch.save(sd, folder / "model_final.pth")
    return sd


def test_real_path_loads_local_checkpoints(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from polysdk.data.tokenizer import train_tokenizer
    from polysdk.models.text import load_tl_model

    sd = _legacy_checkpoint(tmp_path / "solu")
    solu = load_tl_model(str(tmp_path / "solu"))          # what solu-4l's repo holds
    assert "blocks.1.mlp.hook_post" in solu.hook_dict
    torch.testing.assert_close(solu.original_model.layers[0].mlp.fc_in.weight,
                               sd["blocks.0.mlp.W_in"].T)
    hf = tmp_path / "gpt2"
    tok = train_tokenizer(["real :: x = 1.0", "el tumor es benigno."] * 20, 120)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=64,
                               vocab_size=len(tok))).save_pretrained(hf)
    tok.save_pretrained(hf)
    gpt = load_tl_model(str(hf))
    corpus = ConceptCorpus({"a": ["real :: x"], "b": ["el tumor."]})
    rec = record(gpt, gpt.tokenizer, corpus, ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"],
                 tmp_path / "g.zarr", max_len=64)
    assert rec.sizes["neuron"] == 2 * 64 and np.isfinite(rec["text_mean"].values).all()


def _starts(trace: Path) -> list[str]:
    if not trace.exists():
        return []
    return [line.split()[1] for line in trace.read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_mid_study_resumes_at_the_cut_unit(tmp_path):
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    cmd = [sys.executable, "-m", "polysdk.cli", "run", "solu-hunt", "--out", str(out),
           "--no-progress", "--set", "model=solu", "--set", "plant_check=false",
           "--set", f"trace={trace}", "--set", "pause=1", *TINY_SETS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while "solu/record" not in _starts(trace):   # tokenizer and training are stored
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run did not reach solu/record"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = ActivationStore(out / "results.zarr").list_results()
    assert stored == ["twins/solu/train", "twins/tokenizer"]
    trace.unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _starts(trace) == ["solu/record", "solu/analyse"]      # resumed at the cut unit
    assert (out / "report.html").exists()
