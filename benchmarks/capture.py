"""Capture benchmark: what recording activations costs, side by side in one run.

Methods, each over the same batches, each in a fresh subprocess (clean peak RSS):

  (a) bare      forward only
  (b) polysdk   Probe -> ActivationStore (background writer, Zarr v3, default codec
                "auto": zstd:1 where it saves >= 1/8 of a site's bytes, else none;
                ``polysdk_nocomp``: codec="none"; ``polysdk_zstd``: codec="zstd:1")
  (c) list      plain forward hooks appending to a Python list
  (d) tl_cache  TransformerLens ``run_with_cache`` (transformer only)
  (e) nnsight   ``nnsight`` trace with ``.save()``
  (f) zarr_sync plain hooks writing Zarr synchronously (what one writes by hand)
  (g) polysdk_s3  (b) into ``s3://`` on a LOCAL moto S3 server (``moto[server]``, its own
                process on 127.0.0.1, started before the clock): the object-storage
                path's overhead (zarr's own write path, one PUT per chunk, the commit
                record), NOT a real network. Not in the default set: ``--methods
                polysdk,polysdk_s3``

Usage::

    python benchmarks/capture.py                      # both models, the default size
    python benchmarks/capture.py --model tl --batches 48
    python benchmarks/capture.py --model text --batches 8   # MiniLM, per-token store
    python benchmarks/capture.py --out-of-core 6      # polysdk at growing sizes up to 6 GB
    python benchmarks/capture.py --threads 1          # leave a core to the writer
    python benchmarks/capture.py --model cnn --warm 4 # one warm process, alternating
    python benchmarks/capture.py --model cnn --breakdown 6 --steady-malloc  # (b)'s parts

Prints time as a ratio to (a), MB/s of activations, the peak RSS of the process and
its growth during the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import peak_rss_mb, rss_mb  # shared helpers (benchmarks/_harness.py)

METHODS = ["bare", "polysdk", "polysdk_nocomp", "polysdk_zstd", "list", "tl_cache", "nnsight", "zarr_sync"]
EXTRA_METHODS = ["polysdk_s3"]  # run only when asked for (--methods)
TL_SITES = [f"blocks.{i}.mlp.hook_post" for i in range(4)]
CNN_SITES = ["features.3", "features.6", "features.8"]


def build(model_kind: str):
    import torch

    torch.manual_seed(0)
    if model_kind == "tl":
        from transformer_lens.model_bridge.sources.native import TransformerBridgeConfig, boot

        cfg = TransformerBridgeConfig(
            d_model=256, d_head=32, n_heads=8, n_layers=4, n_ctx=128, d_vocab=4096,
            act_fn="solu_ln", d_mlp=1024,
        )
        model = boot(cfg).eval()

        def batch(i: int):
            return torch.randint(0, 4096, (16, 128), generator=torch.Generator().manual_seed(i))

        return model, TL_SITES, batch
    from torch import nn

    model = nn.Sequential()
    model.add_module(
        "features",
        nn.Sequential(
            nn.Conv2d(3, 64, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 128, 3, padding=1), nn.ReLU(),
        ),
    )
    model.eval()

    def batch(i: int):
        return torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(i))

    return model, CNN_SITES, batch


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process on a free port of 127.0.0.1, and its URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the moto server did not start")


def run_one(method: str, model_kind: str, n_batches: int, workdir: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS") or max(1, os.cpu_count() or 1)))
    model, sites, batch = build(model_kind)
    modules = {name: (model.hook_dict[name] if model_kind == "tl" else model.get_submodule(name)) for name in sites}
    with torch.no_grad():
        for i in range(2):
            model(batch(i))  # warm-up (and the bridge's own lazy hooks)
    # import each method's library before the clock starts: import time is not capture
    # time (polysdk with xarray/zarr ~0.4 s, nnsight ~1.4 s on this machine; the
    # store's zarr import alone is 0.13-0.26 s)
    if method.startswith("polysdk"):
        import numcodecs  # noqa: F401  (the store imports zarr at its first use)
        import zarr  # noqa: F401

        import polysdk  # noqa: F401
    elif method == "zarr_sync":
        import zarr  # noqa: F401
    elif method == "nnsight":
        import nnsight  # noqa: F401
    kept: list = []
    nbytes = 0
    store_path: Path | str = Path(workdir) / f"{method}.zarr"
    storage_options = None
    moto = None
    if method == "polysdk_s3":  # server up, bucket made, s3fs imported: before the clock
        import s3fs

        moto, endpoint = start_moto()
        storage_options = {"endpoint_url": endpoint}
        s3fs.S3FileSystem(**storage_options).mkdir("bench")
        store_path = "s3://bench/polysdk_s3.zarr"
    rss_before = rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        if method == "bare":
            for i in range(n_batches):
                model(batch(i))
        elif method.startswith("polysdk"):
            from polysdk import ActivationStore, Probe

            codec = {"polysdk": "auto", "polysdk_nocomp": "none", "polysdk_zstd": "zstd:1",
                     "polysdk_s3": "auto"}[method]
            with ActivationStore(store_path, mode="w", codec=codec,
                                 storage_options=storage_options) as store:
                Probe(model, sites, store=store).run(
                    (batch(i) for i in range(n_batches)), progress=False
                )
            # closed: every batch is on disk and committed. Its size is read back after
            # the clock stops (opening the store with xarray imports dask: ~0.3 s)
        elif method in ("list", "zarr_sync"):
            handles = []
            arrays = {}
            if method == "zarr_sync":
                import zarr

                root = zarr.open_group(store_path, mode="w")

            def make_hook(name):
                def hook(mod, args, out):
                    a = out.detach().cpu()
                    if method == "list":
                        kept.append(a)
                        return
                    arr = a.numpy()
                    if name not in arrays:
                        arrays[name] = root.create_array(
                            name, shape=(0,) + arr.shape[1:], chunks=arr.shape, dtype=arr.dtype
                        )
                    z = arrays[name]
                    n = z.shape[0]
                    z.resize((n + arr.shape[0],) + arr.shape[1:])
                    z[n:] = arr

                return hook

            for name, mod in modules.items():
                handles.append(mod.register_forward_hook(make_hook(name)))
            for i in range(n_batches):
                model(batch(i))
            for h in handles:
                h.remove()
            if method == "zarr_sync":
                zarr.consolidate_metadata(store_path)
                nbytes = sum(int(a.nbytes) for a in arrays.values())
        elif method == "tl_cache":
            if model_kind != "tl":
                return {"skipped": "TransformerLens only"}
            for i in range(n_batches):
                _, cache = model.run_with_cache(batch(i), names_filter=lambda n: n in TL_SITES)
                kept.append({k: v for k, v in cache.items()})
        elif method == "nnsight":
            import nnsight

            wrapped = nnsight.NNsight(model)
            if model_kind == "tl":
                envoys = [wrapped.blocks[i].mlp.out.hook_in for i in range(4)]
            else:
                envoys = [wrapped.features[int(s.split(".")[1])] for s in sites]
            for i in range(n_batches):
                saved: list = []
                with wrapped.trace(batch(i)):
                    for envoy in envoys:
                        saved.append(envoy.output.save())
                kept.append(saved)
    elapsed = time.perf_counter() - start
    memory = {"peak_rss_mb": peak_rss_mb(), "rss_growth_mb": peak_rss_mb() - rss_before}
    if method.startswith("polysdk"):
        from polysdk import ActivationStore

        reopened = ActivationStore(store_path, storage_options=storage_options)
        nbytes = sum(reopened[s].nbytes for s in sites)
    if moto is not None:
        moto.kill()
        moto.wait()
    if not nbytes and kept:
        import torch as _t

        def size(obj):
            if isinstance(obj, _t.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(size(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(size(v) for v in obj)
            return 0

        nbytes = size(kept)
    return {"seconds": elapsed, "bytes": nbytes, **memory}


def spawn(method: str, model_kind: str, n_batches: int, workdir: str) -> dict:
    # start every run with no dirty pages left by the one before (their write-back
    # would otherwise be charged to whichever method runs next)
    shutil.rmtree(Path(workdir) / f"{method}.zarr", ignore_errors=True)
    os.sync()
    cmd = [sys.executable, __file__, "--one", method, "--model", model_kind,
           "--batches", str(n_batches), "--workdir", workdir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(model_kind: str, n_batches: int, workdir: str, repeats: int, methods: list[str] = METHODS) -> None:
    # round-robin repeats, best time of each: robust to other load on a shared machine
    rows: dict[str, dict] = {}
    paired: dict[str, list[float]] = {m: [] for m in methods}  # x this round's bare
    for round_ in range(repeats):
        order = methods[round_ % len(methods):] + methods[: round_ % len(methods)]
        this_round = {}
        for m in order:
            r = spawn(m, model_kind, n_batches, workdir)
            this_round[m] = r.get("seconds")
            if "seconds" not in r or "seconds" not in rows.get(m, {}) or r["seconds"] < rows[m]["seconds"]:
                if "seconds" in r and "seconds" in rows.get(m, {}):
                    r["peak_rss_mb"] = max(r["peak_rss_mb"], rows[m]["peak_rss_mb"])
                    r["rss_growth_mb"] = max(r["rss_growth_mb"], rows[m]["rss_growth_mb"])
                rows[m] = r
        if this_round.get("bare"):
            for m, seconds in this_round.items():
                if seconds:
                    paired[m].append(seconds / this_round["bare"])
    bare = rows["bare"]["seconds"]
    data_mb = max(r.get("bytes", 0) for r in rows.values()) / 2**20
    print(f"\n## {model_kind}: best of {repeats}, {n_batches} batches, {data_mb:.0f} MB of activations at {len(TL_SITES if model_kind == 'tl' else CNN_SITES)} sites")
    print("x bare: best time over best bare time; per round: median over rounds of the time "
          "over that round's bare time (robust to the host's slow drifts)")
    print("| method | time (s) | x bare | x bare, per round | MB/s | peak RSS (MB) | RSS growth (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, r in rows.items():
        if "seconds" not in r:
            print(f"| {method} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        mbps = r["bytes"] / 2**20 / r["seconds"] if r["bytes"] else 0
        per_round = statistics.median(paired[method]) if paired[method] else float("nan")
        print(f"| {method} | {r['seconds']:.2f} | {r['seconds'] / bare:.2f} | {per_round:.2f} "
              f"| {mbps:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} |")
    sys.stdout.flush()


def out_of_core(max_gb: float, workdir: str) -> None:
    # ~33.5 MB of activations per batch of the transformer (16 x 128 tokens x 1024 x 4 sites)
    per_batch_mb = 16 * 128 * 1024 * 4 * 4 / 2**20
    sizes = [max_gb / 16, max_gb / 4, max_gb]
    print("\n## out of core: polysdk on the transformer, growing data")
    print("| activations (GB) | time (s) | x bare-equivalent | peak RSS (MB) | RSS growth (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for gb in sizes:
        n = max(1, int(gb * 1024 / per_batch_mb))
        r = spawn("polysdk", "tl", n, workdir)
        b = spawn("bare", "tl", n, workdir)
        print(f"| {r['bytes'] / 2**30:.2f} | {r['seconds']:.1f} | {r['seconds'] / b['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} |")
        sys.stdout.flush()
        shutil.rmtree(Path(workdir) / "polysdk.zarr", ignore_errors=True)


def ratios(model_kind: str) -> None:
    """Print how much zstd level 1 shrinks each site's activations (what codec='auto' tests)."""
    import numpy as np
    import torch
    from numcodecs import Zstd

    from polysdk import Probe

    model, sites, batch = build(model_kind)
    with torch.no_grad():
        acts = Probe(model, sites).run([batch(i) for i in range(2)], progress=False)
    print(f"\n## {model_kind}: zstd on two batches (one thread; best of 3 for the speed)")
    print("| site | zeros | level | ratio | saving | compress MB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for site, a in acts.items():
        x = np.ascontiguousarray(a.values)
        for level in (1, -3):
            codec = Zstd(level=level)
            seconds = []
            for _ in range(3):
                t0 = time.perf_counter()
                encoded = codec.encode(x)
                seconds.append(time.perf_counter() - t0)
            ratio = x.nbytes / len(encoded)
            print(f"| {site} | {(x == 0).mean():.0%} | {level} | {ratio:.2f} | {1 - 1 / ratio:.0%} "
                  f"| {x.nbytes / 2**20 / min(seconds):.0f} |")


def warm_rounds(model_kind: str, n_batches: int, rounds: int, workdir: str) -> None:
    """bare, polysdk (auto) and polysdk (none) alternating in one warm process.

    The per-process tables compare fresh processes, where the first batches pay for
    the allocator's growth; here a warm-up round comes first and the median of the
    following rounds is reported (steady state, as in a long capture).
    """

    import torch

    from polysdk import ActivationStore, Probe

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS") or max(1, os.cpu_count() or 1)))
    model, sites, batch = build(model_kind)

    def bare() -> float:
        t = time.perf_counter()
        for i in range(n_batches):
            model(batch(i))
        return time.perf_counter() - t

    def capture(codec: str, k: int) -> float:
        path = Path(workdir) / f"warm-{codec}-{k}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        os.sync()
        t = time.perf_counter()
        with ActivationStore(path, mode="w", codec=codec) as store:
            Probe(model, sites, store=store).run((batch(i) for i in range(n_batches)),
                                                 progress=False)
        took = time.perf_counter() - t
        shutil.rmtree(path, ignore_errors=True)
        return took

    times: dict[str, list[float]] = {"bare": [], "polysdk": [], "polysdk_nocomp": []}
    with torch.no_grad():
        for k in range(rounds + 1):   # round 0 warms up and is not counted
            got = {"bare": bare(), "polysdk": capture("auto", k),
                   "polysdk_nocomp": capture("none", k)}
            if k:
                for name, t in got.items():
                    times[name].append(t)
    base = statistics.median(times["bare"])
    print(f"\n## {model_kind}: one warm process, {rounds} rounds of {n_batches} batches "
          "(median seconds; per round: median of each round's time over that round's bare)")
    print("| method | median (s) | x bare | x bare, per round | all rounds (s) |\n"
          "| --- | ---: | ---: | ---: | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        per_round = statistics.median(t / b for t, b in zip(ts, times["bare"]))
        print(f"| {name} | {med:.2f} | {med / base:.2f} | {per_round:.2f} "
              f"| {', '.join(f'{t:.2f}' for t in ts)} |")


def breakdown(model_kind: str, n_batches: int, rounds: int, workdir: str) -> None:
    """Where (b)'s time goes: its parts switched on one by one, alternating in one warm
    process (median of each round's time over that round's bare forward).

    ``hooks``: plain forward hooks that do nothing; ``probe_ignored``: ``Probe`` ->
    ``append`` with a writer thread that drops every batch; ``probe_no_files``: the
    writer's whole bookkeeping (chunk assembly, metadata, commits) with every chunk file
    write skipped; ``polysdk_nocomp``: all of (b), codec none. The parts are switched
    off with the writer's measurement seam, ``polysdk.store.testing.writer_work``.
    """
    import statistics

    import torch

    from polysdk import ActivationStore, Probe
    from polysdk.store.testing import writer_work

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS") or max(1, os.cpu_count() or 1)))
    model, sites, batch = build(model_kind)
    modules = [model.hook_dict[s] if model_kind == "tl" else model.get_submodule(s) for s in sites]

    def bare() -> None:
        for i in range(n_batches):
            model(batch(i))

    def hooks() -> None:
        handles = [m.register_forward_hook(lambda *_: None) for m in modules]
        try:
            bare()
        finally:
            for h in handles:
                h.remove()

    def probe(batches: bool = True, files: bool = True) -> Callable[[], None]:
        def run() -> None:
            path = Path(workdir) / "breakdown.zarr"
            with writer_work(batches=batches, files=files):
                with ActivationStore(path, mode="w", codec="none") as store:
                    Probe(model, sites, store=store).run(
                        (batch(i) for i in range(n_batches)), progress=False)
        return run

    variants = {
        "bare": bare,
        "hooks": hooks,
        "probe_ignored": probe(batches=False),
        "probe_no_files": probe(files=False),
        "polysdk_nocomp": probe(),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for k in range(rounds + 1):  # round 0 warms up and is not counted
            for name, run in variants.items():
                shutil.rmtree(Path(workdir) / "breakdown.zarr", ignore_errors=True)
                os.sync()
                started = time.perf_counter()
                run()
                if k:
                    times[name].append(time.perf_counter() - started)
    malloc = "heap trimming off" if os.environ.get("MALLOC_TRIM_THRESHOLD_") else "glibc defaults"
    print(f"\n## {model_kind}: breakdown of (b), one warm process, {rounds} rounds of "
          f"{n_batches} batches ({malloc})")
    print("| variant | median (s) | x bare, per round | all rounds (s) |\n| --- | ---: | ---: | --- |")
    for name, ts in times.items():
        per_round = statistics.median(t / b for t, b in zip(ts, times["bare"]))
        print(f"| {name} | {statistics.median(ts):.2f} | {per_round:.3f} "
              f"| {', '.join(f'{t:.2f}' for t in ts)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tl", "cnn", "both", "text"], default="both",
                        help="text: MiniLM with dynamic padding into a per-token store "
                        "(benchmarks/capture_text.py; --batches = batches of 32 texts)")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5,
                        help="round-robin repeats: the best time, and the median ratio per round")
    parser.add_argument("--out-of-core", type=float, default=0.0, metavar="GB")
    parser.add_argument("--threads", type=int, help="torch threads for every method (default: all cores)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (bare is always run)")
    parser.add_argument(
        "--steady-malloc", action="store_true",
        help="run every method with glibc's heap trimming off (MALLOC_TRIM_THRESHOLD_, "
             "MALLOC_TOP_PAD_): removes the page-fault noise of memory returned to the OS "
             "and faulted back in each batch, which hits the bare forward the hardest",
    )
    parser.add_argument("--ratios", action="store_true", help="only print zstd:1 ratios per site")
    parser.add_argument("--warm", type=int, default=0, metavar="ROUNDS",
                        help="instead of the tables: bare and polysdk alternating in one "
                             "warm process for ROUNDS rounds (steady state)")
    parser.add_argument("--breakdown", type=int, default=0, metavar="ROUNDS",
                        help="instead of the tables: (b)'s parts switched on one by one, "
                             "alternating in one warm process (with --steady-malloc: in a "
                             "child process with heap trimming off)")
    parser.add_argument("--one", choices=METHODS + EXTRA_METHODS)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.model == "text":  # the text row: its own methods (flat vs padded layout)
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [sys.executable, os.path.join(here, "capture_text.py"), "--texts", str(32 * args.batches),
               "--repeats", str(args.repeats)]
        raise SystemExit(subprocess.call(cmd))
    if args.threads:
        os.environ["CAPTURE_THREADS"] = str(args.threads)
    if args.steady_malloc:
        os.environ.update(MALLOC_TRIM_THRESHOLD_=str(2**40), MALLOC_TOP_PAD_=str(2**28))
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.batches, args.workdir)))
        return
    if args.ratios:
        for kind in (["tl", "cnn"] if args.model == "both" else [args.model]):
            ratios(kind)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="polysdk-bench-", dir=os.environ.get("BENCH_DIR"))
    try:
        if args.breakdown:
            if args.steady_malloc:  # glibc reads these at start: run in a child
                cmd = [sys.executable, __file__, "--model", args.model, "--batches",
                       str(args.batches), "--breakdown", str(args.breakdown), "--workdir", workdir]
                subprocess.run(cmd, check=True)
                return
            for kind in (["tl", "cnn"] if args.model == "both" else [args.model]):
                breakdown(kind, args.batches, args.breakdown, workdir)
            return
        if args.warm:
            for kind in (["tl", "cnn"] if args.model == "both" else [args.model]):
                warm_rounds(kind, args.batches, args.warm, workdir)
            return
        for kind in (["tl", "cnn"] if args.model == "both" else [args.model]):
            chosen = ["bare"] + [m for m in args.methods.split(",")
                                 if m in METHODS + EXTRA_METHODS and m != "bare"]
            table(kind, args.batches, workdir, args.repeats, chosen)
        if args.out_of_core:
            out_of_core(args.out_of_core, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
