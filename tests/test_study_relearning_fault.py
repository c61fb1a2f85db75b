"""SIGKILL the relearning study mid-retraining: the same command resumes at the cut
round (the units before it are not redone) and ends with the numbers of a run never
interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from polysdk.store import ActivationStore
from polysdk.studies.relearning import RelearningStudy

SETTINGS = dict(model="tiny-bert", n_train=24, n_val=12, n_test=8, base_epochs=1, rounds=2,
                epochs_per_round=1, batch_size=8, learning_rate=1e-3, probe_max_iter=10,
                threads=1, arms="zero,regrow")
CUT = "relearning/zero/round_2"


def _cmd(out) -> list[str]:
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "polysdk.cli", "-v", "run", "relearning", "--out", str(out),
            "--no-progress", "--no-report", *sets]


def _starts(text: str) -> list[str]:
    return [line.split("unit ", 1)[1].split()[0] for line in text.splitlines()
            if "relearning: unit" in line and line.rstrip().endswith("start")]


@pytest.mark.slow
def test_sigkill_mid_study_resumes_at_the_cut_round(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen = []
    try:
        deadline = time.monotonic() + 600
        for line in proc.stderr:
            seen.append(line)
            if f"unit {CUT} start" in line:
                os.kill(proc.pid, signal.SIGKILL)   # no cleanup runs
                break
            assert time.monotonic() < deadline, "the run did not reach the cut round"
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    before = ["relearning/base", "relearning/zero/round_0", "relearning/zero/round_1"]
    assert _starts("".join(seen)) == [*before, CUT]
    assert ActivationStore(out / "results.zarr", mode="r").list_results() == before
    done = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _starts(done.stderr) == [CUT, "relearning/regrow/round_0",
                                    "relearning/regrow/round_1", "relearning/regrow/round_2"]
    # the same numbers as a run never killed
    whole = tmp_path / "whole"
    RelearningStudy(**SETTINGS, progress=False).run(out=whole, report=False)
    a = ActivationStore(out / "results.zarr", mode="r")
    b = ActivationStore(whole / "results.zarr", mode="r")
    assert a.list_results() == b.list_results()
    for name in a.list_results():
        da, db = a.read_result(name), b.read_result(name)
        for var in ("f1", "concept_rank", "top_word", "train_loss", "layer_saliency", "poly"):
            if var in da:
                np.testing.assert_array_equal(da[var].values, db[var].values, err_msg=name)
