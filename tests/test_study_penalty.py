"""The penalty study (seed 001) at tiny sizes: run, report, errors, MNIST files, resume."""

from __future__ import annotations

import gzip  # noqa: F401  (the real files are plain idx; .gz only in the error hint)
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from polysdk.errors import ConfigError, PolysdkError
from polysdk.studies import get_study
from polysdk.studies.penalty import PenaltyConfig, PenaltyStudy
from polysdk.studies.penalty_trial import elementwise_accuracy

TINY = dict(trials=1, epochs=2, hidden=[8, 8, 8, 8], n_shuffles=2, n_init=1, n_clusters=3,
            progress=False, jobs=1)
NO_ATLAS = dict(atlas=False)   # the report's atlas has its own test (it costs seconds a site)


@pytest.mark.slow   # ~20 s on a loaded 2-core machine (five trials and a report)
def test_tiny_run_both_modes_report(tmp_path):
    study = PenaltyStudy("both", **TINY, **NO_ATLAS)
    assert [u.name for u in study.units()] == [
        "penalty/alpha_0/trial_1", "penalty/soft_alpha_+1/trial_1",
        "penalty/hard_alpha_+1/trial_1", "penalty/soft_alpha_-1/trial_1",
        "penalty/hard_alpha_-1/trial_1"]
    report = study.run(out=tmp_path / "run")
    html = report.read_text()
    assert "Headline table" in html and "soft vs hard" in html and "seed n-cut" in html
    for name in ("firing.png", "ncut_z.png", "accuracy.png", "null.png"):
        assert (tmp_path / "run" / "figures" / name).stat().st_size > 1000
    res = study.results(tmp_path / "run")
    ds = res["penalty/soft_alpha_+1/trial_1"]
    assert ds["firing_rate"].dims == ("layer", "class", "unit")
    assert ds.sizes["layer"] == 4 and ds.sizes["class"] == 10 and ds.sizes["unit"] == 8
    fr = ds["firing_rate"].values
    assert np.nanmin(fr) >= 0 and np.nanmax(fr) <= 1
    assert 0 <= float(ds["top1_accuracy"]) <= 1 and 0 <= float(ds["elementwise_accuracy"]) <= 1
    assert ds.sizes["shuffle"] == 2 and ds.sizes["node"] == 64 + 32 + 10
    assert int(ds["n_polysemantic"].sel(layer="relu1")) == int(ds["polysemantic"]
                                                                .sel(layer="relu1").sum())
    from polysdk.store import ActivationStore

    summary = ActivationStore(tmp_path / "run" / "results.zarr", mode="r").read_result(
        "penalty/summary")
    assert summary.sizes["run"] == 5
    assert sorted(set(summary["mode"].values)) == ["hard", "none", "soft"]


def test_trials_are_paired_across_alphas():
    """Trial t starts from the same weights for every alpha (and at alpha 0 no penalty)."""
    s = PenaltyStudy("soft", **{**TINY, "epochs": 0})
    a = s.run_unit(s.units()[0])
    b = s.run_unit(s.units()[1])
    assert float(a["top1_accuracy"]) == float(b["top1_accuracy"])
    assert float(a["n_cut"]) == float(b["n_cut"])


def test_elementwise_accuracy_of_a_collapsed_network_is_082():
    labels = torch.arange(10).repeat(20)
    probs = torch.zeros(200, 10)
    probs[:, 3] = 1.0
    assert elementwise_accuracy(probs, labels) == pytest.approx(0.82)


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        PenaltyStudy("soft", dataset="cifar")
    with pytest.raises(ConfigError, match="alphas"):
        PenaltyStudy("soft", alphas="0,x")          # --set alphas=0,x
    with pytest.raises(ConfigError, match="not a number"):
        PenaltyStudy(PenaltyConfig(alphas=[0.0, "one"]))
    with pytest.raises(ConfigError, match="no layer 'relu9'.*fc1"):
        PenaltyStudy("soft", layers="relu1,relu9")
    with pytest.raises(ConfigError, match="mode"):
        PenaltyStudy(PenaltyConfig(modes=["medium"]))
    with pytest.raises(ConfigError, match="root=PATH"):
        PenaltyStudy("soft", dataset="mnist").data()
    study = PenaltyStudy("soft", dataset="fashion-mnist", root=str(tmp_path), **TINY)
    with pytest.raises(ConfigError) as err:
        study.run(out=tmp_path / "run")
    msg = str(err.value)
    assert "4 raw file(s) missing" in msg and "FashionMNIST/raw/t10k-labels-idx1-ubyte" in msg
    assert "download=True" in msg


def _write_idx(folder: Path, n_train: int = 40, n_test: int = 20) -> None:
    """The four raw MNIST files in torchvision's on-disk format (big-endian idx-ubyte)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels, :] = 255            # a learnable stripe per class
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], ">u4").tobytes() + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, n], ">u4").tobytes() + labels.tobytes())


def test_mnist_from_raw_idx_files(tmp_path):
    _write_idx(tmp_path / "MNIST" / "raw")
    study = PenaltyStudy("soft", dataset="mnist", root=str(tmp_path),
                         **{**TINY, "alphas": [0, 1]})
    data = study.data()
    assert tuple(data.x_train.shape) == (40, 784) and tuple(data.x_test.shape) == (20, 784)
    assert float(data.x_train.max()) == 1.0 and data.y_test.tolist()[:3] == [0, 1, 2]
    study.run(out=tmp_path / "run", report=False)
    ds = study.results(tmp_path / "run")["penalty/soft_alpha_+1/trial_1"]
    assert ds.sizes["node"] == 784 + 32 + 10 and ds.attrs["dataset"] == "mnist"


def test_cli_run_and_registry(tmp_path):
    from polysdk.cli import main

    assert get_study("penalty") is PenaltyStudy
    rc = main(["run", "penalty", "--preset", "hard", "--quick", "--no-progress",
               "--out", str(tmp_path / "cli"), "--set", "trials=1", "--set", "epochs=1",
               "--set", "hidden=4,4,4,4", "--set", "n_shuffles=1", "--set", "n_init=1",
               "--set", "n_clusters=2", "--set", "alphas=0,1", "--set", "atlas=false"])
    assert rc == 0
    rec = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert rec["preset"] == "hard" and rec["quick"] and rec["config"]["modes"] == ["hard"]
    assert (tmp_path / "cli" / "report.html").exists()


WORKER = """
import sys, time
from pathlib import Path
from polysdk.studies.penalty import PenaltyStudy
out, marker = sys.argv[1], Path(sys.argv[2])
class Slow(PenaltyStudy):
    def run_unit(self, unit):
        if unit.name.endswith("alpha_+1/trial_1"):   # the third unit: cut here
            marker.write_text(unit.name)
            time.sleep(600)
        return super().run_unit(unit)
Slow("soft", trials=2, epochs=1, hidden=[4, 4, 4, 4], n_shuffles=1, n_init=1, n_clusters=2,
     alphas=[0, 1], jobs=1, progress=False).run(out=out, report=False)
"""


def test_sigkill_mid_study_resumes_at_the_cut_trial(tmp_path):
    settings = dict(trials=2, epochs=1, hidden=[4, 4, 4, 4], n_shuffles=1, n_init=1,
                    n_clusters=2, alphas=[0, 1], jobs=1, progress=False)
    out, marker = tmp_path / "run", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(out), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        if time.time() - t0 > 120:
            proc.kill()
            raise AssertionError("the worker never reached the third unit")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    ran = []

    class Counting(PenaltyStudy):
        def run_unit(self, unit):
            ran.append(unit.name)
            return super().run_unit(unit)

    Counting("soft", **settings).run(out=out, report=False)
    assert ran == ["penalty/soft_alpha_+1/trial_1", "penalty/soft_alpha_+1/trial_2"]
    resumed = PenaltyStudy("soft", **settings).results(out)
    fresh = PenaltyStudy("soft", **settings)
    fresh.run(out=tmp_path / "fresh", report=False)
    for name, ds in fresh.results(tmp_path / "fresh").items():
        assert float(resumed[name]["top1_accuracy"]) == float(ds["top1_accuracy"]), name
        assert float(resumed[name]["n_cut"]) == float(ds["n_cut"]), name


def test_bad_config_is_a_polysdk_error():
    with pytest.raises(PolysdkError):
        PenaltyStudy("soft", trials=0)


def test_example_runs_tiny(tmp_path, capsys, monkeypatch):
    import dataclasses
    import runpy

    from polysdk.studies.penalty import PRESETS

    monkeypatch.setitem(PRESETS, "soft", dataclasses.replace(PRESETS["soft"], atlas=False))

    mod = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "penalty.py"))
    mod["main"](str(tmp_path / "ex"), tiny=True)
    out = capsys.readouterr().out
    assert "relu4:" in out and "n-cut" in out and "report:" in out


def test_atlas_sites_are_the_trials_test_activations(tmp_path):
    """finish records trial 1 of each group at every hidden layer through Probe (sites
    <group>.<layer>, with labels): the very activations the trial measured, again."""
    from polysdk.store import ActivationStore
    from polysdk.studies.penalty_trial import firing_summary

    study = PenaltyStudy("soft", **{**TINY, "trials": 2, "hidden": [4, 4, 4, 4],
                                    "alphas": [0, 1]})
    study.run(out=tmp_path / "run", report=False)
    store = ActivationStore(tmp_path / "run" / "results.zarr", mode="a")
    groups = ["alpha_0", "soft_alpha_+1"]
    assert store.sites == [f"{g}.relu{i}" for g in groups for i in range(1, 5)]
    data = study.data()
    assert store.n_samples == data.x_test.shape[0]
    for g in groups:
        ds = store.read_result(f"penalty/{g}/trial_1")
        assert ds["weights"].sizes["param"] == sum(
            p.numel() for p in study.build_model(64).parameters())
        acts = store[f"{g}.relu2"]
        assert acts.dims == ("sample", "unit") and acts.sizes["unit"] == 4
        assert acts["label"].values.tolist() == data.y_test.tolist()
        fs = firing_summary(acts.values, acts["label"].values, 10)
        np.testing.assert_allclose(fs["firing_rate"],
                                   ds["firing_rate"].sel(layer="relu2").values)
        net = study.trained_model(ds)
        top1 = float((net(data.x_test).argmax(1) == data.y_test).double().mean())
        assert top1 == pytest.approx(float(ds["top1_accuracy"]))
    # a resumed finish leaves a complete recording as it is
    assert study.record_atlas_sites(store, study.stored_units(store)) == store.sites
    assert store.n_samples == data.x_test.shape[0] and len(store.batches) == 1
    store.close()


def test_report_has_the_atlas_page(tmp_path, capsys):
    """The report links the atlas page (agreement heat maps and tables in the report);
    its numbers are in atlas_summary.json and print_atlas prints them."""
    from polysdk.studies.penalty_report import print_atlas

    study = PenaltyStudy("soft", **{**TINY, "hidden": [4, 4, 4, 4], "alphas": [0, 1],
                                    "layers": ["relu4"], "atlas_pages": 1})
    report = study.run(out=tmp_path / "run")
    html = report.read_text()
    assert "Detector agreement atlas" in html
    assert '<a href="atlas.html">open the atlas page</a>' in html
    assert "alpha_0.relu4: agreement between detectors" in html
    assert "Atlas: agreement per detector pair and group" in html
    page = (tmp_path / "run" / "atlas.html").read_text()
    assert "Site alpha_0.relu4" in page and "Site soft_alpha_+1.relu4" in page
    assert "feature_capacity" in page and "skipped" in page   # weight-based: for toy models
    assert list((tmp_path / "run" / "neurons").glob("*/unit-*.html"))
    summary = json.loads((tmp_path / "run" / "atlas_summary.json").read_text())
    assert list(summary) == ["alpha_0.relu4", "soft_alpha_+1.relu4"]
    s = summary["soft_alpha_+1.relu4"]
    assert s["group"] == "soft_alpha_+1" and s["layer"] == "relu4" and s["units"] == 4
    assert "class_selectivity" in s["flagged"] and "feature_capacity" in s["skipped"]
    assert "class_selectivity & hdbscan" in s["pairs"]
    print_atlas(tmp_path / "run")
    out = capsys.readouterr().out
    assert "soft_alpha_+1.relu4" in out and "alpha_0 J:" in out
    # atlas=false: the report says so and writes no atlas page (the sites stay recorded)
    off = PenaltyStudy("soft", **{**TINY, "hidden": [4, 4, 4, 4], "alphas": [0, 1],
                                  "layers": ["relu4"], "atlas": False})
    (tmp_path / "run" / "atlas.html").unlink()
    html = off.run(out=tmp_path / "run").read_text()     # resumed: same identity
    assert "atlas=false" in html and not (tmp_path / "run" / "atlas.html").exists()
