"""SIGKILL a Probe run at random moments; the same command resumes and loses nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from polysdk import ActivationStore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import probe_fault_worker as worker  # noqa: E402


def _committed(path: Path) -> int:
    try:
        return len(ActivationStore(path).batches)
    except Exception:  # not created yet
        return 0


def test_probe_resumes_after_sigkill_with_every_token_once(tmp_path):
    path = tmp_path / "tokens.zarr"
    cmd = [sys.executable, str(HERE / "probe_fault_worker.py"), str(path)]
    rng = random.Random(0)
    seen = []
    for target in (5, 15, 28):
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists() and _committed(path) >= target:
                time.sleep(rng.uniform(0.0, 0.05))  # land anywhere inside a batch
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
        seen.append(_committed(path))
    assert all(0 < n < worker.N_BATCHES for n in seen), seen  # every kill cut the run
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    store = ActivationStore(path)
    acts = store["1"]
    data = worker.batches()
    net = worker.model()
    with torch.no_grad():
        ref = torch.cat([net(b["input"])[b["attention_mask"].bool()] for b in data])
    np.testing.assert_allclose(acts.values, ref.numpy(), rtol=1e-6)
    labels = torch.cat([b["label"].repeat_interleave(b["attention_mask"].sum(1)) for b in data])
    np.testing.assert_array_equal(acts["label"].values, labels.numpy())
    np.testing.assert_array_equal(acts["sample"].values,
                                  np.repeat(np.arange(3 * len(data)), torch.cat([b["attention_mask"].sum(1) for b in data]).numpy()))
    assert store.n_samples == 3 * len(data) and len(store.batches) == len(data)
