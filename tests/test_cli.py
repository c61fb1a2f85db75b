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
    (out / "config.json").unlink()                  # the report is re-made from the store
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for preset in ("LR1", "G3", "K0", "RP1", "LR5", "D1"):
        assert f"    {preset}" in listing
    assert main(["index", str(tmp_path)]) == 0
    index = (tmp_path / "index.html").read_text()
    assert "toy-models" in index and 'href="demo/report.html"' in index
    assert main(["report", "--index", str(tmp_path)]) == 0


def test_custom_sweep(tmp_path) -> None:
    out = tmp_path / "sweep"
    rc = main(["run", "toy-models", "--quick", "--out", str(out), "--no-progress", *TINY_SETS,
               "--sweep", "k=4,8", "--sweep", "nonlinearity=ReLU,SoLU"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["sweep"] == {"k": [4, 8], "nonlinearity": ["ReLU", "SoLU"]}
    summary = ActivationStore(out / "results.zarr").read_result("toy_models/summary")
    assert summary["k"].values.tolist() == [4, 4, 8, 8]


def test_list_shows_the_values_a_run_uses(capsys) -> None:
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    lr1 = listing.split("    LR1", 1)[1].split("\n")
    assert "k=1024" in lr1[0] and "--quick:" in lr1[1] and "k=128" in lr1[1]
    assert main(["list", "toy-models", "--batch", "LR1", "--quick", "--set", "seeds=2"]) == 0
    resolved = capsys.readouterr().out
    assert "    k = 128\n" in resolved and "    seeds = 2\n" in resolved
    assert "    learning_rate = 0.003\n" in resolved


@pytest.mark.parametrize("argv, says", [
    (["run", "toy-modles"], "'toy-models'"),                      # closest study
    (["run", "toy-models", "--batch", "LR9"], "'LR5'"),           # closest preset
    (["run", "toy-models", "--quick", "--sweep", "learning_rate=a,b"], "'a' is not a float"),
    (["run", "toy-models", "--quick", "--sweep", "lerning_rate=1,2"], "'learning_rate'"),
    (["run", "toy-models", "--quick", "--sweep", "k="], "gives no values"),
    (["run", "toy-models", "--quick", "--set", "lerning_rate=0.1"], "'learning_rate'"),
    (["run", "toy-models", "--quick", "--set", "N=abc"], "'abc' is not an int"),
    (["run", "toy-models", "--quick", "--set", "N=0"], "positive integer"),
    (["run", "toy-models", "--quick", "--set", "task=foo"], "decoder"),
    (["run", "toy-models", "--quick", "--set", "seeds=1.5"], "not an int"),
    (["run", "toy-models", "--quick", "--set", "eps=2"], "(0, 1]"),
    (["run", "toy-models", "--quick", "--set", "threads=x"], "threads"),
    (["run", "toy-models", "--quick", "--device", "xyz"], "not a torch device"),
    (["list", "toy-models", "--set", "bogus=1"], "unknown setting 'bogus'"),
    (["list", "--quick"], "need a study"),
    (["report", "nothing-here"], "not a study run folder"),
    (["index", "nothing-here"], "not a folder"),
])
def test_bad_values_give_one_line_errors(tmp_path, capsys, argv, says) -> None:
    argv = [a.replace("nothing-here", str(tmp_path / "nothing")) for a in argv]
    if argv[0] == "run":
        argv += ["--out", str(tmp_path / "x"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("polysdk: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not (tmp_path / "x" / "results.zarr").exists()       # nothing was started


def test_argparse_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "toy-models", "--set", "novalue"])
    assert exc.value.code == 2
    assert "polysdk run: error: argument --set: expected KEY=VALUE" in capsys.readouterr().err


def test_console_script_declared() -> None:
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name="polysdk")
    assert ep.value == "polysdk.cli:main" and ep.load() is main
