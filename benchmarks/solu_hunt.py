"""SoLU neuron-hunt benchmarks: MiniLM recording + ranking as the corpus grows; the quick
preset end to end.

    .venv/bin/python benchmarks/solu_hunt.py record [--scales 1,10]
    .venv/bin/python benchmarks/solu_hunt.py quick  [--out runs/bench-solu-quick]

``record``: every MLP neuron of all-MiniLM-L6-v2 (6 x 1536 at
``encoder.layer.*.intermediate``) over the seed-run-2 sets at 1x and 10x the texts
(10 and 100 per set), each method in its own process (peak RSS is that process's):

* ``polysdk``: :func:`polysdk.studies.solu_hunt_pipeline.record` (one pass, dynamically
  padded batches, the attention mask, real tokens streamed to a per-token store) then
  :func:`~polysdk.studies.solu_hunt_pipeline.analyse` (per-text means streamed from the
  store, ranks, candidates, token types, verdicts);
* ``list``: what one writes by hand: hooks keeping ``h[mask]`` of every site in a
  Python list, then the per-text means and ranks in numpy (everything in RAM).

``quick``: ``polysdk run solu-hunt --quick`` (tokenizer, both twins trained, three
models recorded and analysed, planted check, report) in a subprocess: wall seconds,
CPU seconds (user + sys) and peak RSS, and the seconds of each unit.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import peak_rss_mb  # shared helpers (benchmarks/_harness.py)

HERE = Path(__file__).resolve()


def _one(method: str, scale: int, folder: str) -> dict:
    import numpy as np
    import torch

    from polysdk.data.corpora import concept_sets
    from polysdk.models.text import load_minilm, mlp_sites

    torch.set_num_threads(1)
    corpus = concept_sets("seed-run-2", n_texts=10 * scale)
    model, tok = load_minilm()
    sites = mlp_sites("bert", 6)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if method == "polysdk":
        import warnings

        from polysdk.studies.solu_hunt_pipeline import analyse, record, scaled_top_k

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = record(model, tok, corpus, sites, Path(folder) / "tokens.zarr", max_len=512,
                         kind="hf", batch_size=8)
        t1 = time.perf_counter()
        res = analyse(rec, top_k=scaled_top_k(100, rec.sizes["neuron"]))
        n_cand = int(res["candidate"].sum())
        written = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    else:
        texts, labels = corpus.flat()
        kept: list = []
        hooks = [dict(model.named_modules())[s].register_forward_hook(
            lambda m, i, o, k=k: kept[-1].__setitem__(k, o)) for k, s in enumerate(sites)]
        parts = []
        with torch.no_grad():
            for s in range(0, len(texts), 8):
                enc = tok(texts[s:s + 8], padding=True, return_tensors="pt")
                kept.append({})
                model(**enc)
                m = enc["attention_mask"].bool()
                m[:, 0] = False                     # [CLS] and [SEP] do not count
                m[torch.arange(m.shape[0]), enc["attention_mask"].sum(1) - 1] = False
                parts.append((torch.cat([kept[-1][k][m] for k in range(6)], 1),
                              m.sum(1)))
                kept[-1] = None
        for h in hooks:
            h.remove()
        t1 = time.perf_counter()
        acts = torch.cat([p for p, _ in parts]).numpy()
        lengths = torch.cat([n for _, n in parts]).numpy()
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        text_mean = np.add.reduceat(acts, starts, axis=0) / lengths[:, None]
        lab = np.asarray(labels)
        set_mean = np.stack([text_mean[lab == s].mean(0) for s in corpus.names], 1)
        k = round(100 * acts.shape[1] / 8192)
        active = np.argsort(np.argsort(-set_mean, 0), 0) < k
        n_cand = int((active.sum(1) == 2).sum())
        written = 0
    t2 = time.perf_counter()
    return {"method": method, "scale": scale, "texts": len(corpus.flat()[0]),
            "record_s": t1 - t0, "rank_s": t2 - t1, "total_s": t2 - t0,
            "peak_rss_mb": peak_rss_mb(), "growth_mb": peak_rss_mb() - base,
            "written_mb": written / 2 ** 20, "candidates": n_cand}


def bench_record(scales: list[int]) -> None:
    rows = []
    for scale in scales:
        for method in ("polysdk", "list"):
            folder = tempfile.mkdtemp(prefix="solu-bench-")
            try:
                out = subprocess.run([sys.executable, str(HERE), "_one", method, str(scale),
                                      folder], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(rows[-1], flush=True)
    print(f"\n{'method':8s} {'scale':>5s} {'texts':>5s} {'record s':>9s} {'rank s':>7s} "
          f"{'peak RSS MB':>11s} {'growth MB':>9s} {'written MB':>10s} {'cand':>4s}")
    for r in rows:
        print(f"{r['method']:8s} {r['scale']:5d} {r['texts']:5d} {r['record_s']:9.1f} "
              f"{r['rank_s']:7.1f} {r['peak_rss_mb']:11.0f} {r['growth_mb']:9.0f} "
              f"{r['written_mb']:10.0f} {r['candidates']:4d}")


def bench_quick(out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "polysdk.cli", "run", "solu-hunt", "--quick",
                    "--out", out, "--no-progress"], check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    from polysdk.store import ActivationStore

    store = ActivationStore(Path(out) / "results.zarr", mode="r")
    print(f"quick preset end to end: wall {wall:.0f} s, CPU (user+sys) {cpu:.0f} s, "
          f"peak RSS {after.ru_maxrss / 1024:.0f} MB")
    for name in store.list_results():
        s = store.read_result(name).attrs.get("seconds")
        if s is not None:
            print(f"  {name:22s} {s:7.1f} s")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        print(json.dumps(_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["record", "quick"])
    p.add_argument("--scales", default="1,10")
    p.add_argument("--out", default="runs/bench-solu-quick")
    a = p.parse_args()
    if a.what == "record":
        bench_record([int(s) for s in a.scales.split(",")])
    else:
        bench_quick(a.out)


if __name__ == "__main__":
    main()
