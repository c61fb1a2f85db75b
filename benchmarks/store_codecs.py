"""Choose the store's default codec by measurement.

    python benchmarks/store_codecs.py [--samples 8192] [--units 512] [--repeats 2]

Writes realistic activations through ``ActivationStore`` (background writer, whole
chunks) with each codec, reads them back with plain xarray, and prints per data set:
write and read MB/s (of raw activation bytes), time ratios against no compression,
compression ratio (raw / on disk), process CPU milliseconds per raw MB (less sensitive
to a busy machine than wall time) and peak traced memory of the write. Repeats run
round-robin over the codecs and the best of each is kept.

Data sets (float32 and float16 each): ``relu`` = ReLU of a low-rank signal plus noise
(~60% zeros, like post-ReLU MLP/conv activations); ``sparse`` = the same with a
negative bias (~90% zeros, like deep conv layers); ``dense`` = the pre-activation
(no zeros, like residual-stream / GELU outputs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from polysdk.store import ActivationStore

CODECS = ["none", "zstd:1", "zstd:3", "zstd:7", "blosc-lz4", "blosc-zstd:1", "gzip:1"]


def make_data(kind: str, n: int, units: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 32)).astype("f4")
    w = rng.standard_normal((32, units)).astype("f4") / np.sqrt(32)
    x = z @ w + 0.3 * rng.standard_normal((n, units)).astype("f4")
    if kind == "relu":
        x = np.maximum(x - 0.25, 0)
    elif kind == "sparse":
        x = np.maximum(x - 1.3, 0)
    return x.astype(dtype)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench(data: np.ndarray, codec: str, root: Path, batch: int, chunk: int) -> dict[str, float]:
    path = root / "b.zarr"
    shutil.rmtree(path, ignore_errors=True)
    mb = data.nbytes / 1e6
    tracemalloc.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with ActivationStore(path, mode="w", chunk_samples=chunk, codec=codec, max_queue=4) as store:
        for i in range(0, len(data), batch):
            store.append({"site": data[i : i + batch]}, dims={"site": ("sample", "unit")})
    t_write = time.perf_counter() - t0
    cpu_write = time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    t0 = time.perf_counter()
    c0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = xr.open_zarr(path, group="site")["activation"].values
    t_read = time.perf_counter() - t0
    cpu_read = time.process_time() - c0
    if not np.array_equal(back, data):
        raise AssertionError(f"{codec}: data did not round-trip")
    on_disk = du(path / "site" / "activation")
    return {"write": mb / t_write, "read": mb / t_read, "ratio": data.nbytes / on_disk,
            "t_write": t_write, "t_read": t_read, "peak": peak,
            "c_write": cpu_write * 1e3 / mb, "c_read": cpu_read * 1e3 / mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        print(f"{args.samples} samples x {args.units} units, batch {args.batch}, "
              f"chunk {args.chunk}, best of {args.repeats}, cpus {os.cpu_count()}")
        for dtype in ("float32", "float16"):
            for kind in ("relu", "sparse", "dense"):
                data = make_data(kind, args.samples, args.units, dtype)
                zeros = float((data == 0).mean())
                print(f"\n{kind} {dtype} ({data.nbytes / 1e6:.0f} MB, {zeros:.0%} zeros)")
                print(f"{'codec':>13} {'write MB/s':>10} {'read MB/s':>9} {'ratio':>6} "
                      f"{'write t/none':>12} {'read t/none':>11} {'cpu ms/MB w':>11} "
                      f"{'cpu ms/MB r':>11} {'peak MB':>8}")
                runs: dict[str, list[dict[str, float]]] = {c: [] for c in CODECS}
                for _ in range(args.repeats):  # round-robin: load spikes hit all codecs
                    for codec in CODECS:
                        runs[codec].append(bench(data, codec, root, args.batch, args.chunk))
                best = {c: {k: (max if k in ("write", "read", "ratio") else min)(x[k] for x in rs)
                            for k in rs[0]} for c, rs in runs.items()}
                base = best["none"]
                for codec, r in best.items():
                    print(f"{codec:>13} {r['write']:10.0f} {r['read']:9.0f} {r['ratio']:6.2f} "
                          f"{r['t_write'] / base['t_write']:12.2f} "
                          f"{r['t_read'] / base['t_read']:11.2f} "
                          f"{r['c_write']:11.1f} {r['c_read']:11.1f} {r['peak']:8.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
