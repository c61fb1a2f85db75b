"""The ``polysdk`` command line, end to end at a tiny scale."""

from __future__ import annotations

import json

import pytest

from polysdk.cli import main
from polysdk.store import ActivationStore


TINY_SETS = ["--set", "N=16", "--set", "m=4", "--set", "k=8", "--set", "log2_batch_size=4",
             "--set", "log2_training_steps=5"]


def test_run_report_and_list(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["run", "toy-models", "--batch", "LR1", "--quick", "--out", str(out),
               "--no-progress", *TINY_SETS, "--set", "seeds=2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    summary = ActivationStore(out / "results.zarr").read_result("toy_models/summary")
    assert summary.sizes["instance"] == 12                     # 6 rates x 2 seeds
    assert sorted(set(summary["learning_rate"].values.tolist())) == \
        [0.001, 0.003, 0.005, 0.007, 0.01, 0.03]
    assert int(summary["N"].values[0]) == 16
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for preset in ("LR1", "G3", "K0", "RP1", "LR5", "D1"):
        assert f"    {preset}" in listing


def test_custom_sweep(tmp_path) -> None:
    out = tmp_path / "sweep"
    rc = main(["run", "toy-models", "--quick", "--out", str(out), "--no-progress", *TINY_SETS,
               "--sweep", "k=4,8", "--sweep", "nonlinearity=ReLU,SoLU"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sweep"] == {"k": [4, 8], "nonlinearity": ["ReLU", "SoLU"]}
    summary = ActivationStore(out / "results.zarr").read_result("toy_models/summary")
    assert summary["k"].values.tolist() == [4, 4, 8, 8]


def test_errors_exit_2(tmp_path, capsys) -> None:
    assert main(["run", "toy-modles", "--out", str(tmp_path / "x")]) == 2
    assert "toy-models" in capsys.readouterr().err             # suggests the right name
    assert main(["run", "toy-models", "--batch", "LR9", "--out", str(tmp_path / "x")]) == 2
    assert main(["report", str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit):
        main(["run", "toy-models", "--set", "novalue"])


def test_console_script_declared() -> None:
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name="polysdk")
    assert ep.value == "polysdk.cli:main" and ep.load() is main
