"""The Study platform end to end with a user's study from an installed package
(``tests/plugin_package``: ``polysdk_example_study``, entry point ``example-noise``):
``polysdk run/list/index``, resume after SIGKILL, units on a dask LocalCluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from polysdk.cli import main
from polysdk.store import ActivationStore
from polysdk.studies import Study, UnitError, get_study

UNITS = ["noise/normal", "noise/uniform"]


def _starts(trace: Path) -> list[str]:
    if not trace.exists():
        return []
    return [line.split()[1] for line in trace.read_text().splitlines()]


def test_user_study_is_first_class(tmp_path, capsys) -> None:
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="polysdk.studies", name="example-noise")
    assert get_study("example-noise") is ep.load()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "example-noise: a user's study" in listing and "    small n=1000" in listing
    out = tmp_path / "runs" / "noise"
    assert main(["run", "example-noise", "--quick", "--out", str(out), "--set", "width=4"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    store = ActivationStore(out / "results.zarr")
    assert store.list_results() == UNITS
    assert store.read_result("noise/normal")["corr"].shape == (4, 4)
    page = (out / "report.html").read_text()
    assert "Headline findings" in page and "data:image/png;base64," in page
    # the report is re-made from the store, the run listed in the index
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()
    assert main(["index", str(tmp_path / "runs")]) == 0
    index = (tmp_path / "runs" / "index.html").read_text()
    assert "example-noise" in index and 'href="noise/report.html"' in index
    assert "<td>2/2</td>" in index
    # a typo in the study's own fields names the closest
    assert main(["run", "example-noise", "--set", "widht=3", "--out", str(out)]) == 2
    assert "'width'" in capsys.readouterr().err


def test_sigkill_then_same_command_redoes_only_the_cut_unit(tmp_path) -> None:
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    cmd = [sys.executable, "-m", "polysdk.cli", "run", "example-noise", "--quick", "--out",
           str(out), "--no-progress", "--set", "pause=2", "--set", f"trace={trace}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _starts(trace) != UNITS:   # the second unit has started: the first is stored
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run did not reach its second unit"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ActivationStore(out / "results.zarr").list_results() == ["noise/normal"]
    assert not (out / "report.html").exists()
    trace.unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _starts(trace) == ["noise/uniform"]                 # only the unit that was cut
    assert ActivationStore(out / "results.zarr").list_results() == UNITS
    assert (out / "report.html").exists()
    # the same numbers as a run never killed
    whole = get_study("example-noise")(quick=True, progress=False)
    whole.run(out=tmp_path / "whole", report=False)
    a, b = Study.load(out).results(out), whole.results(tmp_path / "whole")
    for name in UNITS:
        np.testing.assert_array_equal(a[name]["corr"].values, b[name]["corr"].values)


def test_units_on_a_thread_cluster_give_the_same_numbers(tmp_path) -> None:
    from distributed import Client, LocalCluster

    from polysdk.studies import ToyModelStudy

    kw = dict(quick=True, sweep={"initial_bias": [-1.0, 0.0]}, seeds=2, chunk_size=1,
              progress=False, N=16, m=4, k=8, log2_batch_size=4, log2_training_steps=5)
    ToyModelStudy("B3", **kw).run(out=tmp_path / "local", report=False)
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        ToyModelStudy("B3", **kw, client=client).run(out=tmp_path / "dask")
    a = ActivationStore(tmp_path / "local" / "results.zarr")
    b = ActivationStore(tmp_path / "dask" / "results.zarr")
    assert a.list_results() == b.list_results()
    assert len(b.list_results()) == 5                      # 4 chunks of one instance + summary
    for name in a.list_results():
        da, db = a.read_result(name), b.read_result(name)
        for var in ("W1", "b1", "loss", "final_loss", "mono_per_feature"):
            if var in da:
                np.testing.assert_array_equal(da[var].values, db[var].values)
    assert (tmp_path / "dask" / "report.html").exists()


def test_a_worker_that_dies_loses_only_its_unit(tmp_path) -> None:
    from distributed import Client, LocalCluster

    trace = tmp_path / "trace.txt"
    study = get_study("example-noise")(quick=True, progress=False, trace=str(trace),
                                       die_once="noise/uniform")
    with LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        study.run(out=tmp_path / "run", report=False, client=client)
    starts = _starts(trace)
    assert sorted(starts) == ["noise/normal", "noise/uniform", "noise/uniform"]
    pids = {line.split()[1]: [] for line in trace.read_text().splitlines()}
    for line in trace.read_text().splitlines():
        pids[line.split()[1]].append(line.split()[3])
    assert len(set(pids["noise/uniform"])) == 2           # rerun in another process
    assert str(os.getpid()) not in sum(pids.values(), [])  # nothing ran in this process
    assert ActivationStore(tmp_path / "run" / "results.zarr").list_results() == UNITS
    local = get_study("example-noise")(quick=True, progress=False)
    local.run(out=tmp_path / "local", report=False)
    a, b = study.results(tmp_path / "run"), local.results(tmp_path / "local")
    for name in UNITS:
        np.testing.assert_array_equal(a[name]["corr"].values, b[name]["corr"].values)


def test_a_failing_unit_keeps_the_others(tmp_path, monkeypatch) -> None:
    from distributed import Client, LocalCluster

    cls = get_study("example-noise")
    real = cls.run_unit

    def failing(self, unit):
        if unit.name == "noise/uniform" and fail["on"]:
            raise RuntimeError("boom")
        return real(self, unit)

    fail = {"on": True}
    monkeypatch.setattr(cls, "run_unit", failing)
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with pytest.raises(UnitError, match="noise/uniform.*Re-run"):
            cls(quick=True, progress=False).run(out=tmp_path / "run", client=client)
    assert ActivationStore(tmp_path / "run" / "results.zarr").list_results() == ["noise/normal"]
    fail["on"] = False
    cls(quick=True, progress=False).run(out=tmp_path / "run", report=False)
    assert ActivationStore(tmp_path / "run" / "results.zarr").list_results() == UNITS


def test_scheduler_option_runs_the_units_on_that_cluster(tmp_path, capsys) -> None:
    from distributed import LocalCluster

    trace = tmp_path / "trace.txt"
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                      dashboard_address=":0") as cluster:
        rc = main(["run", "example-noise", "--quick", "--out", str(tmp_path / "run"),
                   "--scheduler", cluster.scheduler_address, "--set", f"trace={trace}"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(_starts(trace)) == UNITS
    assert ActivationStore(tmp_path / "run" / "results.zarr").list_results() == UNITS
    assert main(["run", "example-noise", "--quick", "--out", str(tmp_path / "x"),
                 "--scheduler", "tcp://127.0.0.1:1", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polysdk: error: cannot reach the dask scheduler") and \
        err.count("\n") == 1
