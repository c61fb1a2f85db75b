"""Detectors at scale and with models: dask chunks, a dask.distributed LocalCluster,
lazy store sites, HDBSCAN representations (another site, activation x gradient) and
recording concept sets through Probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.data import make_planted_classes, make_planted_concepts, precision_recall
from polysdk.detect import ClassSelectivity, ConceptRanking, ConceptSets, HDBSCANClusters
from polysdk.errors import DetectorInputError
from polysdk.store import ActivationStore


@pytest.fixture(scope="module")
def client():
    import dask.distributed as distributed   # a required dependency: never skipped
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def planted():
    return make_planted_classes(n_samples=600, n_classes=4, units_per_class=2, n_poly=3,
                                balanced=True, seed=7)


@pytest.fixture(scope="module")
def store_site(planted, tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "a.zarr"
    acts = planted.activations
    with ActivationStore(path, mode="w", chunk_samples=64) as store:
        for s in range(0, 600, 150):  # four batches
            store.append({"act": acts.values[s:s + 150]}, dims={"act": ("sample", "unit")},
                         coords={"label": acts["label"].values[s:s + 150]})
    return ActivationStore(path, mode="r")["act"]


def _same(a: xr.Dataset, b: xr.Dataset, names):
    for n in names:
        np.testing.assert_allclose(np.asarray(a[n].values, dtype=float),
                                   np.asarray(b[n].values, dtype=float), rtol=1e-9)


def test_lazy_store_site_and_client_give_the_in_memory_answer(planted, store_site, client):
    assert store_site.chunks[0][0] == 64  # dask-backed, chunked as stored
    mem = ClassSelectivity().fit(planted.activations).result_
    lazy = ClassSelectivity().fit(store_site).result_
    dist = ClassSelectivity().fit(store_site, client=client).result_
    _same(mem, lazy, ["firing_rate", "score", "polysemantic"])
    _same(mem, dist, ["firing_rate", "score", "polysemantic"])
    assert precision_recall(dist["polysemantic"], planted.polysemantic) == (1.0, 1.0)

    mem = HDBSCANClusters(top_k=80, min_cluster_size=15).fit(planted.activations).result_
    dist = HDBSCANClusters(top_k=80, min_cluster_size=15).fit(store_site, client=client).result_
    _same(mem, dist, ["top_index", "top_activation", "cluster", "polysemantic"])

    kw = dict(top_n=5, concepts=["class0", "class1", "class2", "class3"])
    mem = ConceptRanking(**kw).fit(planted.activations).result_
    dist = ConceptRanking(**kw).fit(store_site, client=client).result_
    _same(mem, dist, ["concept_score", "concept_rank", "polysemantic"])


def test_client_runs_the_work(planted, client):
    from dask.distributed import get_task_stream

    with get_task_stream(client=client) as ts:
        ClassSelectivity().fit(planted.activations.chunk({"sample": 100}), client=client)
    assert len(ts.data) >= 6  # at least one task per chunk (6 chunks) ran on the cluster


def test_streaming_graph_never_holds_the_whole_site(planted):
    # the per-chunk work of ClassSelectivity is (chunk, unit) -> (class, unit): check that
    # the graph reduces each chunk on its own (no task takes all sample chunks at once)
    import dask.array as da

    from polysdk.detect._stream import grouped_sum, label_codes

    x = da.from_array(planted.activations.values, chunks=(50, -1))
    codes, cls = label_codes(planted.activations["label"])
    g = grouped_sum(x, codes, len(cls))
    np.testing.assert_allclose(
        g.compute(), np.stack([planted.activations.values[codes == c].sum(0)
                               for c in range(len(cls))]), rtol=1e-6)
    graph = dict(g.__dask_graph__())
    n_chunks = len(x.chunks[0])
    blockwise_layers = [k for k in g.__dask_graph__().layers if "einsum" in k]
    assert blockwise_layers and n_chunks == 12
    assert len(graph) > n_chunks  # one task per chunk plus a tree of partial sums


def test_hdbscan_spatial_positions(planted):
    pl = make_planted_classes(n_samples=400, n_classes=3, units_per_class=2, n_poly=2,
                              spatial=3, seed=1)
    det = HDBSCANClusters(top_k=80, min_cluster_size=20).fit(pl.activations)
    centre = pl.activations.values[:, :, 1, 1]
    for u in range(centre.shape[1]):  # ranking at the centre, as the seed
        np.testing.assert_allclose(det.result_["top_activation"].values[u],
                                   -np.sort(-centre[:, u])[:80])
    assert precision_recall(det.result_["polysemantic"], pl.polysemantic) == (1.0, 1.0)
    det = HDBSCANClusters(top_k=80, min_cluster_size=20, position={"y": 0, "x": 2})
    det.fit(pl.activations)
    np.testing.assert_allclose(det.result_["top_activation"].values[0],
                               -np.sort(-pl.activations.values[:, 0, 0, 2])[:80])
    with pytest.raises(DetectorInputError, match="out of range"):
        HDBSCANClusters(top_k=80, min_cluster_size=20, position={"y": 5, "x": 0}).fit(
            pl.activations)


def test_hdbscan_representation_from_another_site(planted):
    inputs = planted.inputs.numpy()
    other = xr.DataArray(inputs, dims=("sample", "unit"))  # the model's input as a "site"
    det = HDBSCANClusters(top_k=80, min_cluster_size=15, representation="site")
    det.fit(planted.activations, represent=other)
    assert precision_recall(det.result_["polysemantic"], planted.polysemantic) == (1.0, 1.0)
    with pytest.raises(DetectorInputError, match="represent has 10 samples"):
        det.fit(planted.activations, represent=other.isel(sample=slice(0, 10)))


def test_hdbscan_activation_times_gradient(planted):
    pl = planted
    det = HDBSCANClusters(top_k=80, min_cluster_size=15, representation="attribution",
                          attribution_site="stem", target_site="units", batch_size=40)
    det.fit(pl.activations, model=pl.model, inputs=pl.inputs)
    # attribution of unit u at the stem: x * w_u; for its top inputs of two classes these
    # are two separated groups
    assert precision_recall(det.result_["polysemantic"], pl.polysemantic) == (1.0, 1.0)
    # the hooks are gone afterwards (sites layer owns them)
    assert not pl.model.stem._forward_hooks and not pl.model.units._forward_hooks
    # compare one unit's representation with the closed form x * w_u
    u = int(det.polysemantic_[0])
    rows = det._attribution_rows(pl.model, pl.inputs, det.result_["top_index"].values[u][:5],
                                 u, "units", ("sample", "unit"))
    x = pl.inputs[det.result_["top_index"].values[u][:5]]
    np.testing.assert_allclose(rows, (x * pl.model.units.weight[u]).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(DetectorInputError, match="model=model, inputs=inputs"):
        HDBSCANClusters(top_k=80, min_cluster_size=15, representation="attribution",
                        attribution_site="stem").fit(pl.activations)


def test_concept_sets_record_through_probe():
    from polysdk.detect._stream import prepare, text_labels, to_tokens

    pc = make_planted_concepts(texts_per_set=3, seed=2)
    texts = {s: pc.texts[s] for s in pc.set_names}
    texts["spanish"] = [t + " the" for t in texts["spanish"][:2]]  # longer -> padding
    acts = ConceptSets.record(pc.model, pc.tokenizer, texts, site="act", batch_size=4)
    # padded with its attention mask, or flat (padding not there): the real tokens agree
    assert acts.dims in (("sample", "position", "unit"), ("token", "unit"))
    tokens = to_tokens(prepare(acts))
    n_real = sum(len(t.split()) for ts in texts.values() for t in ts)
    assert tokens.sizes["token"] == n_real
    assert text_labels(prepare(acts), prepare(acts)["concept"]).tolist().count("spanish") == 2
    ids = pc.tokenizer(pc.texts["fortran"][0])["input_ids"]
    with torch.no_grad():
        ref = pc.model(ids)[0].numpy()
    first = tokens.isel(token=np.flatnonzero(tokens["sample"].values == 0))
    np.testing.assert_allclose(first.values, ref, rtol=1e-6)
    res = ConceptSets(top_n=8, exclude_shallow=True).fit(acts).result_
    assert res.sizes["set"] == 4 and res["texts_per_set"].sel(set="spanish") == 2
    assert "<pad>" not in set(res["top_token"].values.ravel().tolist())
    assert res["top_token"].values[res["active"].values][0] in pc.tokenizer.vocab
