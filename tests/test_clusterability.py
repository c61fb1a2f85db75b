"""Clusterability (Filan et al. 2021) against a naive reimplementation of the original loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralClustering
from sklearn.manifold import spectral_embedding as sk_embedding
from sklearn.metrics import adjusted_rand_score

from polysdk.detect import Clusterability
from polysdk.detect.clusterability import (
    WeightGraph, adjacency, clusterability_naive, n_cut, n_cut_naive, spectral_embedding,
    spectral_labels, weight_graph,
)
from polysdk.errors import ConfigError


def _graph(mats):
    mats = [np.asarray(m, float) for m in mats]
    return WeightGraph([np.abs(m) for m in mats], ["input"] + [f"l{i}" for i in
                                                              range(len(mats))],
                       [("linear", m.T.copy(), {}) for m in mats])


def _planted(rng, sizes=(12, 9, 9, 6), k=3, inside=1.0, across=0.02):
    """(in, out) matrices whose units split into k modules, strong inside, weak across."""
    mats = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        ga, gb = np.arange(a) % k, np.arange(b) % k
        same = ga[:, None] == gb[None, :]
        mats.append(np.where(same, inside, across) * rng.uniform(0.5, 1.5, (a, b)))
    return mats


def _naive_labels(adj, k, seed=0):
    sc = SpectralClustering(n_clusters=k, eigen_solver="arpack", affinity="precomputed",
                            assign_labels="kmeans", n_init=25, random_state=seed)
    return sc.fit(adj).labels_


def test_two_disconnected_blocks_cut_zero():
    a = np.zeros((6, 4))
    a[:3, :2] = 1.0
    a[3:, 2:] = 2.0
    b = np.zeros((4, 2))
    b[:2, 0] = 1.0
    b[2:, 1] = 0.5
    g = _graph([a, b])
    labels, eig = spectral_labels(g, n_clusters=2, n_init=10, seed=0)
    assert n_cut(g, labels) == pytest.approx(0.0, abs=1e-12)
    assert eig[:2] == pytest.approx([0.0, 0.0], abs=1e-10)   # two components
    adj = adjacency(g)
    ref = _naive_labels(adj, 2)
    assert adjusted_rand_score(ref, labels) == 1.0
    assert n_cut_naive(adj, ref) == pytest.approx(0.0, abs=1e-12)
    # the two blocks are the two clusters
    assert len(set(labels[:3]) | set(labels[6:8]) | set(labels[10:11])) == 1
    assert set(labels[:3]) != set(labels[3:6])


def test_n_cut_equals_compute_ncut_for_any_labels():
    rng = np.random.default_rng(1)
    g = _graph([rng.normal(size=(7, 5)), rng.normal(size=(5, 4)), rng.normal(size=(4, 3))])
    adj = adjacency(g)
    for k in (2, 3, 5):
        labels = rng.integers(0, k, g.n_nodes)
        assert n_cut(g, labels) == pytest.approx(n_cut_naive(adj, labels), rel=1e-12)


def test_embedding_spans_sklearn_subspace():
    rng = np.random.default_rng(2)
    g = _graph(_planted(rng, (20, 15, 15, 8), k=4, across=0.3))
    adj = adjacency(g)
    for k in (3, 4, 6):
        ours, eig = spectral_embedding(g, k)
        ref = sk_embedding(adj, n_components=k, eigen_solver="arpack", random_state=0,
                           drop_first=False, norm_laplacian=True)
        q1, q2 = np.linalg.qr(ours)[0], np.linalg.qr(ref)[0]
        assert np.linalg.svd(q1.T @ q2, compute_uv=False).min() > 1 - 1e-8
        # eigenvalues are the normalized Laplacian's smallest
        lap = np.eye(g.n_nodes) - adj.toarray() / np.sqrt(np.outer(adj.sum(1), adj.sum(1)))
        assert eig == pytest.approx(np.sort(np.linalg.eigvalsh(lap))[:k], abs=1e-9)


def test_more_clusters_than_pairs_tiny_graph():
    rng = np.random.default_rng(3)
    g = _graph([rng.uniform(0.1, 1, (5, 2)), rng.uniform(0.1, 1, (2, 1))])   # 8 nodes
    adj = adjacency(g)
    ours, eig = spectral_embedding(g, 5)
    lap = np.eye(8) - adj.toarray() / np.sqrt(np.outer(adj.sum(1), adj.sum(1)))
    assert eig == pytest.approx(np.sort(np.linalg.eigvalsh(lap))[:5], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_modules_same_partition_as_original(seed):
    rng = np.random.default_rng(seed)
    g = _graph(_planted(rng))
    adj = adjacency(g)
    labels, _ = spectral_labels(g, 3, 25, seed=seed)
    ref = _naive_labels(adj, 3, seed)
    assert adjusted_rand_score(ref, labels) == 1.0
    assert n_cut(g, labels) == pytest.approx(n_cut_naive(adj, ref), rel=1e-10)


def test_against_naive_loop_statistics():
    rng = np.random.default_rng(4)
    mats = _planted(rng, (16, 12, 12, 6), k=3, across=0.05)
    res = Clusterability(n_clusters=3, n_shuffles=20, n_jobs=1, seed=0).fit(mats).result_
    ref = clusterability_naive(mats, n_clusters=3, n_shuffles=20, seed=0)
    assert float(res["n_cut"]) == pytest.approx(ref["n_cut"], rel=1e-9)
    assert adjusted_rand_score(ref["labels"], res["label"].values) == 1.0
    # the planted network is more clusterable than every shuffle, in both
    assert float(res["left_p_value"]) == ref["left_p_value"] == pytest.approx(1 / 21)
    assert float(res["z_score"]) < -3 and ref["z_score"] < -3
    # null distributions agree within their own spread (different random permutations)
    sh, rsh = res["shuffled_n_cut"].values, ref["shuffled_n_cut"]
    assert abs(sh.mean() - rsh.mean()) < 3 * (sh.std() + rsh.std()) / np.sqrt(20) + 1e-9
    # Z and p are what the stored null gives
    assert float(res["z_score"]) == pytest.approx((float(res["n_cut"]) - sh.mean()) / sh.std())
    assert float(res["left_p_value"]) == ((sh < float(res["n_cut"])).sum() + 1) / 21


def test_same_result_for_any_n_jobs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    a = Clusterability(n_clusters=3, n_shuffles=6, n_jobs=1, seed=5).fit(net).result_
    b = Clusterability(n_clusters=3, n_shuffles=6, n_jobs=2, seed=5).fit(net).result_
    np.testing.assert_array_equal(a["shuffled_n_cut"].values, b["shuffled_n_cut"].values)
    assert float(a["n_cut"]) == float(b["n_cut"])
    assert list(a["layer"].values[:10]) == ["input"] * 10 and a.sizes["node"] == 22


def test_linear_graph_is_abs_weights_biases_skipped():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    g = weight_graph(net)
    np.testing.assert_allclose(g.mats[0], net[0].weight.detach().abs().numpy().T)
    np.testing.assert_allclose(g.mats[1], net[1].weight.detach().abs().numpy().T)
    assert g.sizes == [3, 2, 1]


def test_conv_filters_as_units():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(2, 4, 3, groups=2), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 2 * 2, 5))
    g = weight_graph(net)
    assert g.sizes == [1, 2, 4, 5]
    w0 = net[0].weight.detach().double()
    np.testing.assert_allclose(g.mats[0], w0.abs().sum((2, 3)).numpy().T)
    w2 = net[2].weight.detach().double().abs().sum((2, 3)).numpy()   # (4, 1)
    expect = np.zeros((2, 4))
    expect[0, :2], expect[1, 2:] = w2[:2, 0], w2[2:, 0]              # groups: no cross edges
    np.testing.assert_allclose(g.mats[1], expect)
    w4 = net[4].weight.detach().double().abs().numpy().reshape(5, 4, 4).sum(2)
    np.testing.assert_allclose(g.mats[2], w4.T)
    g2 = weight_graph(net, conv_norm="l2")
    np.testing.assert_allclose(g2.mats[0], w0.pow(2).sum((2, 3)).sqrt().numpy().T)
    res = Clusterability(n_clusters=2, n_shuffles=3, n_jobs=1).fit(net).result_
    assert res.sizes["node"] == 12 and np.isfinite(float(res["n_cut"]))


def test_errors():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(5, 2))
    with pytest.raises(ConfigError, match="chain"):
        weight_graph(net)
    ok = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="no layer 'fc9'"):
        weight_graph(ok, layers=["0", "fc9"])
    with pytest.raises(ConfigError, match="ReLU"):
        weight_graph(ok, layers=["1"])
    with pytest.raises(ConfigError, match="n_clusters"):
        Clusterability(n_clusters=1).fit(ok)
    with pytest.raises(ConfigError, match="more than the graph"):
        Clusterability(n_clusters=20, n_shuffles=0).fit(ok)
    with pytest.raises(ConfigError, match="nn.Module"):
        Clusterability().fit("model")
