"""Weight-graph clusterability (Filan et al. 2021): n-cut of a network against shuffles.

    from polysdk.detect import Clusterability
    cl = Clusterability(n_clusters=12, n_shuffles=50, seed=0).fit(model)   # any nn.Module
    cl.result_["n_cut"], cl.result_["z_score"], cl.result_["left_p_value"]
    cl.result_["label"]          # cluster of every node (dim ``node``, coords layer/unit)

The graph (:func:`weight_graph`): one node per input feature and per unit of every
``Linear`` / ``Conv`` layer in forward order; the edge between two units of consecutive
layers weighs ``|W|`` (biases skipped), as the original's ``weights_to_graph``. Convs
follow Filan et al.'s "filters as units": a node per channel, the edge between input
channel ``i`` and output channel ``j`` weighs the norm of the kernel slice ``W[j, i]``
(``conv_norm="l1"``: the sum of ``|w|``; ``"l2"``); a ``Linear`` after a conv joins
each channel to each unit by the same norm of the weights over that channel's
flattened positions (torch flattens channel-major). Grouped convs give zero edges
across groups.

Clustering is scikit-learn's ``SpectralClustering(affinity="precomputed",
assign_labels="kmeans")`` computed in a cheaper, exact way. A chain of layers is a
bipartite graph (even layers against odd layers), so the normalized adjacency
``D^-1/2 A D^-1/2 = [[0, B], [B^T, 0]]`` has eigenvalues ``+-s`` for the singular
values ``s`` of ``B``, with eigenvectors ``[u; v] / sqrt(2)``: the ``k`` smallest
eigenvectors of the normalized Laplacian ``I - D^-1/2 A D^-1/2`` that scikit-learn
finds with a shift-invert ARPACK solve on all nodes are the top ``k`` singular pairs of
``B``, found here from the Gram matrix of its smaller side (``eigen_solver="dense"``)
or with ``scipy.sparse.linalg.svds`` on large graphs. The embedding (``/ sqrt(degree)``)
and the k-means (``n_init`` k-means++ starts, best inertia) are scikit-learn's. The
n-cut is ``sum_c cut(c, not c) / (vol(c) + epsilon)`` (``vol`` = sum of degrees), as the
original's ``compute_ncut``, computed per layer from cluster-summed weight blocks.

The null model shuffles each layer's weight tensor independently (the original's
``shuffle_weights``: every entry of a layer permuted), ``n_shuffles`` times; ``Z =
(n_cut - mean) / std`` (``std`` with ddof 0, as ``np.std``) and the left p-value
``(#{shuffled < n_cut} + 1) / (n_shuffles + 1)``. Shuffles run ``n_jobs`` at a time on
threads (each with one BLAS/OpenMP thread) or on a ``dask.distributed`` client; every
shuffle has its own seed from ``seed`` (``numpy.random.SeedSequence``), so the result
does not depend on ``n_jobs`` or placement.

:func:`clusterability_naive` is the original's loop (one ``SpectralClustering`` fit
after another on the sparse adjacency, ``compute_ncut``), kept as the reference of
the tests and of ``benchmarks/clusterability.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from polysdk.errors import ConfigError, DetectorInputError

__all__ = ["Clusterability", "WeightGraph", "weight_graph", "spectral_labels", "n_cut",
           "adjacency", "clusterability_naive", "n_cut_naive"]


# ----------------------------------------------------------------------------- graph
@dataclass
class WeightGraph:
    """A layered weight graph: ``mats[l]`` (``sizes[l]``, ``sizes[l + 1]``) holds the edge
    weights between node layer ``l`` and ``l + 1`` (``>= 0``); ``names[l]`` names node
    layer ``l`` (``"input"``, then the layers' module names). ``raw`` keeps each layer's
    weight tensor and how it became its matrix (for shuffles)."""

    mats: list[np.ndarray]
    names: list[str]
    raw: list[tuple[str, np.ndarray, dict[str, Any]]]

    @property
    def sizes(self) -> list[int]:
        return [self.mats[0].shape[0]] + [m.shape[1] for m in self.mats]

    @property
    def n_nodes(self) -> int:
        return int(sum(self.sizes))

    def shuffled(self, rng: np.random.Generator, conv_norm: str = "l1") -> WeightGraph:
        """The graph of the network with each layer's weight tensor permuted."""
        raw = [(kind, rng.permutation(w.ravel()).reshape(w.shape), info)
               for kind, w, info in self.raw]
        return WeightGraph(_matrices(raw, conv_norm), list(self.names), raw)


def _norm(x: np.ndarray, axes: tuple[int, ...], conv_norm: str) -> np.ndarray:
    if conv_norm == "l1":
        return np.abs(x).sum(axis=axes)
    return np.sqrt((x * x).sum(axis=axes))


def _matrices(raw: Sequence[tuple[str, np.ndarray, dict[str, Any]]], conv_norm: str
              ) -> list[np.ndarray]:
    """(in, out) edge matrices from raw weight tensors (see the module docstring)."""
    mats = []
    for kind, w, info in raw:
        if kind == "linear":
            per = info.get("per_channel", 1)
            if per == 1:
                mats.append(np.abs(w).T)
            else:   # Linear after a conv: (out, C * P) -> (C, out)
                mats.append(_norm(w.reshape(w.shape[0], -1, per), (2,), conv_norm).T)
        else:       # conv (out, in / groups, *kernel) -> (in, out)
            g = info["groups"]
            per_out = _norm(w, tuple(range(2, w.ndim)), conv_norm)   # (out, in / g)
            out_c, in_g = per_out.shape
            m = np.zeros((in_g * g, out_c))
            step = out_c // g
            for k in range(g):
                m[k * in_g:(k + 1) * in_g, k * step:(k + 1) * step] = \
                    per_out[k * step:(k + 1) * step].T
            mats.append(m)
    return mats


def _layers(model: Any, layers: Sequence[str] | None) -> list[tuple[str, Any]]:
    import torch.nn as nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    named = dict(model.named_modules())
    if layers is None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
        if not found:
            raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer; "
                              "clusterability needs a network of weight layers.")
        return found
    out = []
    for name in layers:
        if name not in named:
            from polysdk.errors import closest_names

            close = closest_names(name, [n for n, m in named.items() if isinstance(m, kinds)])
            raise ConfigError(f"the model has no layer {name!r}; closest Linear/Conv "
                              f"layers: {close}.")
        if not isinstance(named[name], kinds):
            raise ConfigError(f"layer {name!r} is a {type(named[name]).__name__}; give "
                              "Linear or Conv layers.")
        out.append((name, named[name]))
    return out


def weight_graph(model: Any, layers: Sequence[str] | None = None, conv_norm: str = "l1"
                 ) -> WeightGraph:
    """The layered |W| graph of ``model``'s Linear/Conv layers (module docstring).

    ``layers``: module names in forward order (default: every Linear/Conv layer in
    registration order). Layers must form a chain (each one's input width is the
    previous one's output width); a model with branches raises :class:`ConfigError`.

    >>> import torch
    >>> g = weight_graph(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
    ...                                      torch.nn.Linear(3, 2)))
    >>> g.sizes, g.names
    ([4, 3, 2], ['input', '0', '2'])
    """
    import torch.nn as nn

    if conv_norm not in ("l1", "l2"):
        raise ConfigError(f"conv_norm={conv_norm!r} must be 'l1' or 'l2'.")
    raw: list[tuple[str, np.ndarray, dict[str, Any]]] = []
    names = ["input"]
    prev_out: int | None = None
    prev_conv = False
    for name, mod in _layers(model, layers):
        w = mod.weight.detach().cpu().double().numpy()
        if isinstance(mod, nn.Linear):
            info: dict[str, Any] = {}
            if prev_out is not None and w.shape[1] != prev_out:
                if prev_conv and w.shape[1] % prev_out == 0:
                    info["per_channel"] = w.shape[1] // prev_out
                else:
                    raise ConfigError(
                        f"layer {name!r} takes {w.shape[1]} inputs but the layer before it "
                        f"gives {prev_out}: the layers do not form a chain; pass layers=[...]"
                        " naming a chain in forward order.")
            raw.append(("linear", w, info))
            prev_out, prev_conv = w.shape[0], False
        else:
            in_c = w.shape[1] * mod.groups
            if prev_out is not None and in_c != prev_out:
                raise ConfigError(f"conv {name!r} takes {in_c} channels but the layer before "
                                  f"it gives {prev_out}: not a chain; pass layers=[...].")
            raw.append(("conv", w, {"groups": int(mod.groups)}))
            prev_out, prev_conv = w.shape[0], True
        names.append(name)
    return WeightGraph(_matrices(raw, conv_norm), names, raw)


def _as_graph(source: Any, layers: Sequence[str] | None, conv_norm: str) -> WeightGraph:
    if isinstance(source, WeightGraph):
        return source
    if isinstance(source, (list, tuple)):   # (in, out) weight matrices, as the original
        mats = [np.asarray(m, dtype=np.float64) for m in source]
        for a, b in zip(mats[:-1], mats[1:]):
            if a.ndim != 2 or a.shape[1] != b.shape[0]:
                raise ConfigError(f"weight matrices {a.shape} then {b.shape} do not chain; "
                                  "give (in, out) matrices in forward order.")
        raw = [("linear", m.T.copy(), {}) for m in mats]
        return WeightGraph([np.abs(m) for m in mats],
                           ["input"] + [f"layer{i}" for i in range(len(mats))], raw)
    if hasattr(source, "named_modules"):
        return weight_graph(source, layers, conv_norm)
    raise ConfigError(f"clusterability takes a torch.nn.Module, a WeightGraph or a list of "
                      f"(in, out) weight matrices, got {type(source).__name__}.")


def adjacency(graph: WeightGraph) -> Any:
    """The symmetric sparse adjacency matrix (CSR) over all nodes (original layout)."""
    import scipy.sparse as sp

    n = len(graph.mats)
    blocks: list[list[Any]] = [[None] * (n + 1) for _ in range(n + 1)]
    for i, m in enumerate(graph.mats):
        blocks[i][i + 1] = sp.coo_matrix(m)
    blocks[0][0] = sp.coo_matrix((graph.sizes[0], graph.sizes[0]))
    blocks[n][n] = sp.coo_matrix((graph.sizes[-1], graph.sizes[-1]))
    up = sp.bmat(blocks, "csr")
    return (up + up.T).tocsr()


# ----------------------------------------------------------------------------- clustering
def _bipartite(graph: WeightGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Degrees, even-side and odd-side node indices, and B = D^-1/2 A_eo D^-1/2."""
    sizes = graph.sizes
    off = np.concatenate([[0], np.cumsum(sizes)])
    deg = np.zeros(off[-1])
    for i, m in enumerate(graph.mats):
        deg[off[i]:off[i + 1]] += m.sum(1)
        deg[off[i + 1]:off[i + 2]] += m.sum(0)
    even = [i for i in range(len(sizes)) if i % 2 == 0]
    odd = [i for i in range(len(sizes)) if i % 2 == 1]
    pos = {}   # node layer -> offset within its side
    for side in (even, odd):
        acc = 0
        for i in side:
            pos[i] = acc
            acc += sizes[i]
    n_e, n_o = sum(sizes[i] for i in even), sum(sizes[i] for i in odd)
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    b = np.zeros((n_e, n_o))
    for i, m in enumerate(graph.mats):
        lo, hi = (i, i + 1) if i % 2 == 0 else (i + 1, i)   # (even layer, odd layer)
        blk = m if i % 2 == 0 else m.T
        r, c = pos[lo], pos[hi]
        b[r:r + sizes[lo], c:c + sizes[hi]] = (inv[off[lo]:off[lo + 1], None] * blk
                                                * inv[None, off[hi]:off[hi + 1]])
    e_idx = np.concatenate([np.arange(off[i], off[i + 1]) for i in even])
    o_idx = np.concatenate([np.arange(off[i], off[i + 1]) for i in odd]) if odd else \
        np.zeros(0, int)
    return deg, e_idx, o_idx, b


def _top_singular(b: np.ndarray, k: int, solver: str, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular values and vectors (u: rows, v: columns) of ``b``, ``k <= min(b.shape)``."""
    import scipy.linalg as sl

    if solver == "auto":
        solver = "dense" if min(b.shape) <= 4000 else "svds"
    if solver == "svds" and k < min(b.shape):
        from scipy.sparse.linalg import svds

        v0 = np.random.default_rng(seed).uniform(-1, 1, min(b.shape))
        u, s, vt = svds(b, k=k, v0=v0)
        order = np.argsort(-s)
        return s[order], u[:, order], vt[order].T
    # Gram matrix of the smaller side; its top eigenpairs are the top singular pairs
    tall = b.shape[0] >= b.shape[1]
    g = b.T @ b if tall else b @ b.T
    w, x = sl.eigh(g, subset_by_index=[g.shape[0] - k, g.shape[0] - 1])
    w, x = w[::-1], x[:, ::-1]
    s = np.sqrt(np.clip(w, 0, None))
    if s[-1] < 1e-6 * max(s[0], 1e-300):   # near-zero singular values: the SVD itself
        u, s_full, vt = sl.svd(b, full_matrices=False)
        return s_full[:k], u[:, :k], vt[:k].T
    other = (b @ x) / s if tall else (b.T @ x) / s
    return (s, other, x) if tall else (s, x, other)


def _all_pairs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every eigenpair of [[0, B], [B^T, 0]] (tiny graphs: more clusters than pairs)."""
    import scipy.linalg as sl

    n_e, n_o = b.shape
    u, s, vt = sl.svd(b, full_matrices=True)
    r = s.shape[0]
    r2 = math.sqrt(2)
    lam = [s, -s, np.zeros(n_e - r), np.zeros(n_o - r)]
    even = [u[:, :r] / r2, u[:, :r] / r2, u[:, r:], np.zeros((n_e, n_o - r))]
    odd = [vt[:r].T / r2, -vt[:r].T / r2, np.zeros((n_o, n_e - r)), vt[r:].T]
    lam_all = np.concatenate(lam)
    order = np.argsort(-lam_all, kind="stable")
    return lam_all[order], np.hstack(even)[:, order], np.hstack(odd)[:, order]


def spectral_embedding(graph: WeightGraph, n_components: int, solver: str = "auto",
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's spectral embedding of the graph (``n_components`` smallest
    normalized-Laplacian eigenvectors, ``/ sqrt(degree)``) and those eigenvalues."""
    deg, e_idx, o_idx, b = _bipartite(graph)
    n = deg.shape[0]
    if n_components > n:
        raise ConfigError(f"n_clusters={n_components} is more than the graph's {n} nodes.")
    if not np.any(b):
        raise DetectorInputError("the weight graph has no edges (all weights are 0).")
    if n_components <= min(b.shape):
        s, u, v = _top_singular(b, n_components, solver, seed)
        u, v = u / math.sqrt(2), v / math.sqrt(2)
    else:
        s, u, v = (x[..., :n_components] for x in _all_pairs(b))
    emb = np.zeros((n, n_components))
    emb[e_idx] = u
    emb[o_idx] = v
    dd = np.sqrt(np.where(deg > 0, deg, 1.0))
    return emb / dd[:, None], 1.0 - s


def spectral_labels(graph: WeightGraph, n_clusters: int = 12, n_init: int = 25,
                    seed: int = 0, solver: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels of every node (and the Laplacian eigenvalues used): the spectral
    embedding, then scikit-learn's k-means with ``n_init`` starts."""
    from sklearn.cluster import KMeans

    emb, eig = spectral_embedding(graph, n_clusters, solver, seed)
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(emb)
    return km.labels_.astype(np.int64), eig


def _cut_vol(graph: WeightGraph, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    off = np.concatenate([[0], np.cumsum(graph.sizes)])
    s = np.zeros((k, k))
    for i, m in enumerate(graph.mats):
        li, lo = labels[off[i]:off[i + 1]], labels[off[i + 1]:off[i + 2]]
        rows = np.zeros((k, m.shape[1]))
        np.add.at(rows, li, m)           # cluster-summed rows
        blk = np.zeros((k, k))
        np.add.at(blk.T, lo, rows.T)     # then columns
        s += blk + blk.T
    vol = s.sum(1)
    return vol - np.diag(s), vol


def n_cut(graph: WeightGraph, labels: np.ndarray, epsilon: float = 1e-8) -> float:
    """``sum_c cut(c) / (vol(c) + epsilon)`` over the clusters present in ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1
    cut, vol = _cut_vol(graph, labels, k)
    present = np.bincount(labels, minlength=k) > 0
    return float(np.sum(cut[present] / (vol[present] + epsilon)))


# ----------------------------------------------------------------------------- the measure
def _one(graph: WeightGraph, seq: np.random.SeedSequence, k: int, n_init: int, eps: float,
         solver: str, conv_norm: str, shuffle: bool) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(seq)
    g = graph.shuffled(rng, conv_norm) if shuffle else graph
    labels, _ = spectral_labels(g, k, n_init, int(rng.integers(2 ** 31 - 1)), solver)
    return n_cut(g, labels, eps), labels


def _shuffle_chunk(graph: WeightGraph, seqs: list[np.random.SeedSequence], k: int,
                   n_init: int, eps: float, solver: str, conv_norm: str) -> list[float]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return [_one(graph, s, k, n_init, eps, solver, conv_norm, True)[0] for s in seqs]


class Clusterability:
    """Clusterability of a network's weight graph (Filan et al. 2021; module docstring).

    Parameters
    ----------
    n_clusters : int
        Clusters of the spectral clustering (12 in seed 001's analysis).
    n_shuffles : int
        Shuffled networks of the null model (50 in the original).
    n_init : int
        k-means starts (25, scikit-learn's setting in the original for <= 2000 nodes).
    epsilon : float
        Added to each cluster's volume (1e-8 as the original).
    layers : list of str or None
        Linear/Conv module names in forward order (None: all of them).
    conv_norm : {"l1", "l2"}
        Norm of a kernel slice (filters as units).
    eigen_solver : {"auto", "dense", "svds"}
        How the top singular pairs are found ("auto": dense below 4000 nodes a side).
    n_jobs : int or None
        Shuffles computed at once on threads (None: one per CPU core).
    seed : int
        Seeds the shuffles and the k-means (results do not depend on ``n_jobs``).

    Attributes
    ----------
    result_ : xr.Dataset
        ``n_cut``, ``z_score``, ``left_p_value``, ``shuffled_mean``, ``shuffled_std``,
        ``shuffled_n_cut`` (shuffle), ``label`` (node; coords ``layer``, ``unit``),
        ``cut``, ``volume`` (cluster), ``eigenvalue`` (component).

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> res = Clusterability(n_clusters=3, n_shuffles=5, n_jobs=1).fit(net).result_
    >>> res.sizes["node"], res.sizes["shuffle"], 0 < float(res["left_p_value"]) <= 1
    (17, 5, True)
    """

    def __init__(self, n_clusters: int = 12, n_shuffles: int = 50, n_init: int = 25,
                 epsilon: float = 1e-8, layers: Sequence[str] | None = None,
                 conv_norm: str = "l1", eigen_solver: str = "auto",
                 n_jobs: int | None = None, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.n_shuffles = n_shuffles
        self.n_init = n_init
        self.epsilon = epsilon
        self.layers = layers
        self.conv_norm = conv_norm
        self.eigen_solver = eigen_solver
        self.n_jobs = n_jobs
        self.seed = seed

    def _validate(self) -> None:
        for name, lo in (("n_clusters", 2), ("n_shuffles", 0), ("n_init", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"{name}={v!r} must be an integer >= {lo}.")
        if self.eigen_solver not in ("auto", "dense", "svds"):
            raise ConfigError(f"eigen_solver={self.eigen_solver!r} must be 'auto', 'dense' "
                              "or 'svds'.")
        if self.n_jobs is not None and int(self.n_jobs) < 1:
            raise ConfigError(f"n_jobs={self.n_jobs!r} must be >= 1 or None.")

    def fit(self, model: Any, client: Any = None) -> Clusterability:
        """Cluster ``model`` (an ``nn.Module``, a :class:`WeightGraph` or a list of
        (in, out) weight matrices) and its shuffles; returns ``self``. ``client``: a
        ``dask.distributed.Client`` to run the shuffles on (default: local threads)."""
        import os

        from threadpoolctl import threadpool_limits

        self._validate()
        graph = _as_graph(model, self.layers, self.conv_norm)
        k, eps, solver = int(self.n_clusters), float(self.epsilon), self.eigen_solver
        seqs = np.random.SeedSequence(int(self.seed)).spawn(int(self.n_shuffles) + 1)
        with threadpool_limits(1):
            value, labels = _one(graph, seqs[0], k, self.n_init, eps, solver,
                                 self.conv_norm, False)
        rest = seqs[1:]
        jobs = int(self.n_jobs or os.cpu_count() or 1)
        if not rest:
            shuffled: list[float] = []
        elif client is not None:
            futs = client.map(_shuffle_chunk, [graph] * len(rest), [[s] for s in rest],
                              k=k, n_init=self.n_init, eps=eps, solver=solver,
                              conv_norm=self.conv_norm, pure=False)
            shuffled = [v for f in client.gather(futs) for v in f]
        elif jobs == 1:
            shuffled = _shuffle_chunk(graph, rest, k, self.n_init, eps, solver,
                                      self.conv_norm)
        else:
            parts = [rest[i::jobs] for i in range(min(jobs, len(rest)))]
            with ThreadPoolExecutor(len(parts)) as pool:
                outs = list(pool.map(lambda p: _shuffle_chunk(
                    graph, p, k, self.n_init, eps, solver, self.conv_norm), parts))
            order = [j for i in range(len(parts)) for j in range(i, len(rest), len(parts))]
            shuffled = [0.0] * len(rest)
            for pos, v in zip(order, [v for o in outs for v in o]):
                shuffled[pos] = v
        self.graph_ = graph
        self.result_ = self._result(graph, value, labels, np.asarray(shuffled, float))
        return self

    def _result(self, graph: WeightGraph, value: float, labels: np.ndarray,
                shuffled: np.ndarray) -> xr.Dataset:
        k = int(self.n_clusters)
        cut, vol = _cut_vol(graph, labels, k)
        if shuffled.size:
            mean, std = float(shuffled.mean()), float(shuffled.std())
            z = (value - mean) / std if std > 0 else float("nan")
            p = (float((shuffled < value).sum()) + 1.0) / (shuffled.size + 1.0)
        else:
            mean = std = z = p = float("nan")
        layer = np.concatenate([[n] * s for n, s in zip(graph.names, graph.sizes)])
        unit = np.concatenate([np.arange(s) for s in graph.sizes])
        ds = xr.Dataset(
            {"n_cut": ((), value), "z_score": ((), z), "left_p_value": ((), p),
             "shuffled_mean": ((), mean), "shuffled_std": ((), std),
             "shuffled_n_cut": (("shuffle",), shuffled),
             "label": (("node",), labels),
             "cut": (("cluster",), cut), "volume": (("cluster",), vol)},
            coords={"node": np.arange(graph.n_nodes), "layer": (("node",), layer.astype(str)),
                    "unit": (("node",), unit), "cluster": np.arange(k),
                    "shuffle": np.arange(shuffled.size)})
        ds.attrs.update(n_clusters=k, n_shuffles=int(self.n_shuffles), n_init=int(self.n_init),
                        epsilon=float(self.epsilon), conv_norm=self.conv_norm,
                        seed=int(self.seed), layers=list(graph.names[1:]),
                        layer_sizes=[int(s) for s in graph.sizes],
                        method="Filan et al. 2021 n-cut, within-layer shuffles")
        return ds

    def __repr__(self) -> str:
        return (f"Clusterability(n_clusters={self.n_clusters}, n_shuffles={self.n_shuffles},"
                f" n_init={self.n_init}, seed={self.seed})")


# ----------------------------------------------------------------------------- reference
def n_cut_naive(adj: Any, labels: np.ndarray, epsilon: float = 1e-8) -> float:
    """The original's ``compute_ncut``: a loop over clusters on the sparse adjacency."""
    total = 0.0
    for c in np.unique(labels[labels != -1]):
        inside = labels == c
        cut = adj[inside, :][:, ~inside].sum()
        vol = adj[inside, :].sum()
        total += cut / (vol + epsilon)
    return float(total)


def clusterability_naive(weights: Sequence[np.ndarray], n_clusters: int = 12,
                         n_shuffles: int = 50, n_init: int = 25, epsilon: float = 1e-8,
                         seed: int = 0, eigen_solver: str = "arpack") -> dict[str, Any]:
    """The original loop (seed 001's ``run_clusterability_analysis.py``): ``weights`` are
    (in, out) matrices; each graph is one ``SpectralClustering`` fit on the sparse
    adjacency, one after another; shuffles permute every entry of each matrix."""
    from sklearn.cluster import SpectralClustering

    rng = np.random.RandomState(seed)

    def score(ws: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        adj = adjacency(_as_graph(list(ws), None, "l1"))
        sc = SpectralClustering(n_clusters=n_clusters, eigen_solver=eigen_solver,
                                affinity="precomputed", assign_labels="kmeans",
                                n_init=n_init, random_state=rng.randint(2 ** 31 - 1))
        labels = sc.fit(adj).labels_
        return n_cut_naive(adj, labels, epsilon), labels

    value, labels = score(weights)
    shuffled = []
    for _ in range(n_shuffles):
        ws = [rng.permutation(w.ravel()).reshape(w.shape) for w in weights]
        shuffled.append(score(ws)[0])
    sh = np.asarray(shuffled)
    z = (value - sh.mean()) / sh.std() if n_shuffles else float("nan")
    p = ((sh < value).sum() + 1) / (n_shuffles + 1)
    return {"n_cut": value, "labels": labels, "shuffled_n_cut": sh, "z_score": float(z),
            "left_p_value": float(p)}
