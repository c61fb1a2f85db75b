"""Clusterability of one network (the graph + N shuffles): polysdk against the original loop.

    .venv/bin/python benchmarks/clusterability.py                 # MNIST-size MLP, 50 shuffles
    .venv/bin/python benchmarks/clusterability.py --sizes 64,256,256,256,256,10 --shuffles 50

The original (seed 001's ``run_clusterability_analysis.py`` with Filan et al.'s
``spectral_cluster_model``) runs one ``SpectralClustering(n_clusters=12,
eigen_solver="arpack", affinity="precomputed", assign_labels="kmeans", n_init=25)`` fit
after another on the sparse adjacency: :func:`clusterability_naive` here. It is timed
with one BLAS/OpenMP thread (its fastest form on a shared 2-core machine) and, on a few
fits, with the library defaults. polysdk's :class:`Clusterability` is timed on one
thread and on ``--jobs`` threads, and split into its parts (graph and shuffle, the
eigensolver, k-means, n-cut). ``--seeds`` repeats the real graph's clustering with other
k-means seeds in both, to show the spread that is the clustering's own randomness.
The network is the MLP of seed 001 at its PyTorch initialisation (weights drawn once
from ``--seed``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from polysdk.detect.clusterability import (
    Clusterability, adjacency, clusterability_naive, n_cut, n_cut_naive, spectral_embedding,
    weight_graph,
)


def mlp(sizes: list[int], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def naive_fit(adj, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    return SpectralClustering(n_clusters=k, eigen_solver="arpack", affinity="precomputed",
                              assign_labels="kmeans", n_init=25, random_state=seed
                              ).fit(adj).labels_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="784,256,256,256,256,10")
    ap.add_argument("--shuffles", type=int, default=50)
    ap.add_argument("--clusters", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--default-thread-fits", type=int, default=3,
                    help="original fits timed with the libraries' default threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    k, n_sh = args.clusters, args.shuffles
    net = mlp(sizes, args.seed)
    g = weight_graph(net)
    weights = [m.weight.detach().double().numpy().T for m in net if isinstance(m, torch.nn.Linear)]
    adj = adjacency(g)
    print(f"graph: layers {sizes}, {g.n_nodes} nodes, {adj.nnz // 2} edges; k={k}, "
          f"{n_sh} shuffles, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")

    rows = []
    with threadpool_limits(1):
        t = time.perf_counter()
        ref = clusterability_naive(weights, n_clusters=k, n_shuffles=n_sh, seed=args.seed)
        t_naive1 = time.perf_counter() - t
    rows.append(("original loop, 1 thread", t_naive1, ref["n_cut"], ref["shuffled_n_cut"],
                 ref["z_score"], ref["left_p_value"]))
    t = time.perf_counter()
    for i in range(args.default_thread_fits):
        naive_fit(adj, k, i)
    per_default = (time.perf_counter() - t) / max(args.default_thread_fits, 1)
    for jobs in (1, args.jobs):
        t = time.perf_counter()
        res = Clusterability(n_clusters=k, n_shuffles=n_sh, n_jobs=jobs, seed=args.seed
                             ).fit(net).result_
        rows.append((f"polysdk, {jobs} thread{'s' if jobs > 1 else ''}",
                     time.perf_counter() - t, float(res["n_cut"]),
                     res["shuffled_n_cut"].values, float(res["z_score"]),
                     float(res["left_p_value"])))

    print(f"\n{'':28s} {'seconds':>9s} {'x orig':>7s} {'n-cut':>8s} {'null mean':>10s} "
          f"{'null std':>9s} {'Z':>7s} {'p':>6s}")
    for name, sec, nc, sh, z, p in rows:
        print(f"{name:28s} {sec:9.2f} {t_naive1 / sec:7.2f} {nc:8.4f} {np.mean(sh):10.4f} "
              f"{np.std(sh):9.4f} {z:7.2f} {p:6.3f}")
    est = per_default * (n_sh + 1)
    print(f"{'original, default threads':28s} {est:9.2f} {t_naive1 / est:7.2f}   "
          f"(estimated: {per_default:.2f} s per fit x {n_sh + 1}, "
          f"{args.default_thread_fits} fits timed)")

    # where polysdk's time goes (one thread, one shuffled graph, averaged)
    from sklearn.cluster import KMeans

    reps = 5
    parts = dict(shuffle_and_graph=0.0, eigensolver=0.0, kmeans=0.0, n_cut=0.0)
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for _ in range(reps):
            t0 = time.perf_counter()
            gs = g.shuffled(rng)
            t1 = time.perf_counter()
            emb, _ = spectral_embedding(gs, k)
            t2 = time.perf_counter()
            lab = KMeans(k, n_init=25, random_state=0).fit(emb).labels_
            t3 = time.perf_counter()
            n_cut(gs, lab)
            t4 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += dt / reps
        t = time.perf_counter()
        for _ in range(reps):
            from sklearn.manifold import spectral_embedding as ske

            ske(adj, n_components=k, eigen_solver="arpack", random_state=0, drop_first=False)
        arpack = (time.perf_counter() - t) / reps
    print("\npolysdk per graph, 1 thread: " + ", ".join(f"{a} {b * 1e3:.0f} ms"
                                                        for a, b in parts.items()))
    print(f"original's eigensolver (ARPACK shift-invert on the Laplacian), 1 thread: "
          f"{arpack * 1e3:.0f} ms per graph")

    # the clustering's own randomness on the real graph: other k-means seeds
    if args.seeds:
        with threadpool_limits(1):
            ours = [float(Clusterability(n_clusters=k, n_shuffles=0, seed=s).fit(net)
                          .result_["n_cut"]) for s in range(args.seeds)]
            theirs = [n_cut_naive(adj, naive_fit(adj, k, s)) for s in range(args.seeds)]
        print(f"\nreal graph over {args.seeds} seeds: polysdk n-cut {np.mean(ours):.4f} +- "
              f"{np.std(ours):.4f} (min {min(ours):.4f}); original {np.mean(theirs):.4f} +- "
              f"{np.std(theirs):.4f} (min {min(theirs):.4f})")


if __name__ == "__main__":
    main()
