"""Detector benchmark: accuracy on planted truth, time, peak memory, and scaling.

    .venv/bin/python benchmarks/detectors.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/detectors.py --quick    # small sizes, for a smoke test

Prints three tables, side by side in one run:

1. every built-in detector on the planted easy setting (and a weaker signal):
   precision, recall, wall time, peak traced memory;
2. time as the number of units grows (fixed samples), as ratios to the smallest size;
3. time and peak memory as the number of samples grows, reading a Zarr store on disk
   chunk by chunk, next to the naive path (load the whole site, then numpy): the
   streaming detectors' peak memory stays flat while the naive one grows with the data.

Peak memory is the peak of Python-traced allocations (``tracemalloc``; numpy and dask
buffers are traced) above the level before the call, measured in a second run so the
timings are not slowed by tracing.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import timed  # shared helpers (benchmarks/_harness.py)

import numpy as np

from polysdk.data import make_planted_classes, make_planted_concepts, precision_recall
from polysdk.detect import ClassSelectivity, ConceptRanking, ConceptSets, HDBSCANClusters
from polysdk.store import ActivationStore

warnings.simplefilter("ignore")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB) of ``fn()``; time and memory from separate runs."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    del out
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, (peak - base) / 2**20


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |")


# ------------------------------------------------------------------ 1. accuracy
def warm_up() -> None:
    """Import, JIT-compile (hdbscan / numba) and start dask once, outside the timings."""
    pl = make_planted_classes(n_samples=200, n_classes=2, units_per_class=2, n_poly=1,
                              background="O")
    ClassSelectivity().fit(pl.activations)
    HDBSCANClusters(top_k=40, min_cluster_size=10).fit(pl.activations)
    ConceptRanking(top_n=2).fit(pl.activations)
    ConceptRanking(method="probe", max_iter=20).fit(pl.activations)
    ConceptSets(top_n=4).fit(make_planted_concepts(texts_per_set=2).activations)


def accuracy(quick: bool) -> None:
    warm_up()
    n = 2000 if quick else 8000
    rows = []
    for signal in (1.0, 0.3):
        pl = make_planted_classes(n_samples=n, n_classes=8, units_per_class=4, n_poly=8,
                                  signal=signal, seed=0)
        rk = make_planted_classes(n_samples=n, n_classes=4, units_per_class=3, n_poly=4,
                                  balanced=True, background="O", signal=signal, seed=0)
        pc = make_planted_concepts(texts_per_set=10 if quick else 40, signal=signal, seed=0)
        concepts = rk.class_names[:4]
        runs = [
            ("class_selectivity", lambda: ClassSelectivity().fit(pl.activations), pl.polysemantic),
            ("hdbscan (top_k=200, mcs=40)", lambda: HDBSCANClusters(
                top_k=200, min_cluster_size=40).fit(pl.activations), pl.polysemantic),
            ("concept_ranking mean_diff (top_n=5)", lambda: ConceptRanking(
                top_n=5, concepts=concepts).fit(rk.activations), rk.polysemantic),
            ("concept_ranking probe saga (mass=0.99, C=0.1)", lambda: ConceptRanking(
                method="probe", mass=0.99, C=0.1, concepts=concepts).fit(rk.activations),
             rk.polysemantic),
            ("concept_ranking probe sgd (mass=0.99, C=0.01)", lambda: ConceptRanking(
                method="probe", probe_solver="sgd", mass=0.99, C=0.01, l1_ratio=0.5,
                concepts=concepts).fit(rk.activations), rk.polysemantic),
            ("concept_sets (top_n=8, exclude_shallow)", lambda: ConceptSets(
                top_n=8, exclude_shallow=True).fit(pc.activations), pc.polysemantic),
        ]
        for name, fn, truth in runs:
            det, sec, mib = measure(fn)
            p, r = precision_recall(det.result_["polysemantic"], truth)
            rows.append([name, signal, p, r, sec, mib])
    table(f"Planted truth ({n} samples / 40 units; concept sets: 4 x "
          f"{10 if quick else 40} texts)", ["detector", "signal", "precision", "recall",
                                            "time s", "peak MiB"], rows)


# ------------------------------------------------------------------ 2. units
def planted_units(n_samples: int, n_units: int, seed: int = 0):
    n_classes = 16
    n_poly = n_units // 8
    per = (n_units - n_poly) // n_classes
    n_poly = n_units - per * n_classes
    return make_planted_classes(n_samples=n_samples, n_classes=n_classes, units_per_class=per,
                                n_poly=n_poly, input_dim=32, seed=seed)


def token_acts(n_texts: int, n_units: int, length: int = 32, seed: int = 0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_texts, length, n_units), dtype=np.float32)
    sets = np.array(["a", "b", "c", "d"])[np.arange(n_texts) % 4]
    tok = rng.integers(0, 200, size=(n_texts, length)).astype(str)
    return xr.DataArray(a, dims=("sample", "position", "unit"),
                        coords={"concept": ("sample", sets),
                                "token": (("sample", "position"), tok)})


def units_scaling(quick: bool) -> None:
    sizes = (64, 256) if quick else (64, 256, 1024)
    n = 4000 if quick else 20000
    rows: dict[str, list[float]] = {}
    for u in sizes:
        pl = planted_units(n, u)
        acts = pl.activations.chunk({"sample": 4096})
        tk = token_acts(400, u).chunk({"sample": 100})
        for name, fn in [
            ("class_selectivity", lambda: ClassSelectivity().fit(acts)),
            ("hdbscan (top_k=200)", lambda: HDBSCANClusters(top_k=200,
                                                            min_cluster_size=40).fit(acts)),
            ("concept_ranking", lambda: ConceptRanking(top_n=8).fit(acts)),
            ("concept_sets (400 texts x 32 tokens)", lambda: ConceptSets(top_n=16).fit(tk)),
        ]:
            sec = _time(fn)
            rows.setdefault(name, []).append(sec)
    out = []
    for name, secs in rows.items():
        out.append([name] + [f"{s:.3g} s ({s / secs[0]:.2g}x)" for s in secs])
    table(f"Time as units grow ({n} samples)", ["detector"] + [f"{u} units" for u in sizes], out)


_time = timed   # the shared helper (benchmarks/_harness.py)


# ------------------------------------------------------------------ 3. samples
def samples_scaling(quick: bool) -> None:
    sizes = (10_000, 40_000) if quick else (20_000, 80_000, 320_000)
    units = 256
    tmp = Path(tempfile.mkdtemp(prefix="polysdk-bench-"))
    rows: dict[str, list[str]] = {}
    try:
        for n in sizes:
            path = tmp / f"acts_{n}.zarr"
            with ActivationStore(path, mode="w", chunk_samples=4096) as store:
                step = 20_000
                for s in range(0, n, step):
                    pl = planted_units(min(step, n - s), units, seed=s)
                    store.append({"act": pl.activations.values},
                                 dims={"act": ("sample", "unit")},
                                 coords={"label": pl.activations["label"].values.astype(str)})
            site = ActivationStore(path, mode="r")["act"]
            gib = n * units * 4 / 2**20
            rows.setdefault("site size (MiB, float32)", []).append(f"{gib:.0f}")
            for name, fn in [
                ("class_selectivity (streaming)", lambda: ClassSelectivity().fit(site)),
                ("hdbscan top-k (streaming, top_k=200)", lambda: HDBSCANClusters(
                    top_k=200, min_cluster_size=40).fit(site)),
                ("concept_ranking (streaming)", lambda: ConceptRanking(top_n=8).fit(site)),
                ("naive: load site + numpy firing rates", lambda: _naive(site)),
            ]:
                _, sec, mib = measure(fn)
                rows.setdefault(name, []).append(f"{sec:.3g} s / {mib:.0f} MiB")
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table(f"Time / peak memory as samples grow ({units} units, Zarr store on disk, "
          "4096-sample chunks)", ["path"] + [f"{n:,} samples" for n in sizes],
          [[k] + v for k, v in rows.items()])


def _naive(site: Any) -> np.ndarray:
    a = site.values  # the whole site in memory
    lab = site["label"].values
    return np.stack([(a[lab == c] > 0).mean(0) for c in np.unique(lab)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--only", choices=["accuracy", "units", "samples"], default=None)
    args = ap.parse_args()
    import os

    print(f"# polysdk detector benchmark ({os.cpu_count()} CPUs, quick={args.quick})")
    if args.only in (None, "accuracy"):
        accuracy(args.quick)
    if args.only in (None, "units"):
        units_scaling(args.quick)
    if args.only in (None, "samples"):
        samples_scaling(args.quick)


if __name__ == "__main__":
    main()
