"""ToyModelStudy: presets, instances, store layout, resume after a kill, report, and the
numbers of the code before the Study platform (a reference)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polysdk.errors import ConfigError
from polysdk.store import ActivationStore
from polysdk.studies import ToyModelStudy, available_studies
from polysdk.studies.toy_models import PRESETS, ToyModelsConfig


def preset_config(batch: str, quick: bool = False) -> tuple[dict, dict]:
    """(fixed ToyConfig fields, sweep) of a preset, as the old ``preset_config`` gave."""
    cfg = PRESETS[batch]
    cfg = cfg.quick() if quick else cfg
    return cfg.fixed(), cfg.sweep

TINY = dict(N=16, m=4, k=8, log2_batch_size=4, log2_training_steps=5)


def test_table1_presets() -> None:
    assert list(PRESETS) == ["LR1", "LR2", "LR3", "B1", "B2", "B3", "B4", "B5", "LR4", "G3",
                             "E1", "E2", "E3", "E4", "K0", "K1", "K2", "RG1", "RP1", "LR5",
                             "D1"]
    lrs = [0.001, 0.003, 0.005, 0.007, 0.01, 0.03]
    f, s = preset_config("LR1")
    assert (f["N"], f["m"], f["k"], f["eps"], f["log2_batch_size"],
            f["log2_training_steps"]) == (512, 64, 1024, 1 / 64, 13, 17)
    assert s == {"learning_rate": lrs} and f["decay"] == 0 and f["initial_bias"] == 0
    f, s = preset_config("LR3")
    assert (f["decay"], f["initial_bias"], f["sample_kind"]) == (0.03, -1.0, "equal")
    f, s = preset_config("B1")
    assert (f["eps"], f["learning_rate"], f["decay"]) == (1 / 16, 0.003, 0.03)
    np.testing.assert_allclose(s["initial_bias"], np.linspace(-2, 1, 11))
    assert preset_config("B5")[0]["eps"] == 1 / 256 and preset_config("B5")[0]["decay"] == 0.003
    f, s = preset_config("G3")
    assert f["nonlinearity"] == "GeLU" and set(s) == {"learning_rate", "initial_bias"}
    f, s = preset_config("E2")
    np.testing.assert_allclose(s["eps"], 2.0 ** -np.linspace(1, 5, 11))
    assert f["decay"] == 0.01
    assert preset_config("K0")[1]["k"] == [16, 32, 64, 128, 256, 512, 1024]
    assert preset_config("K2")[1]["k"][-1] == 2048 and preset_config("K2")[0]["sample_kind"] \
        == "power_law"
    assert preset_config("RG1")[1]["reg"] == [10.0 ** -i for i in range(1, 8)]
    f, _ = preset_config("RP1")
    assert (f["task"], f["sample_kind"]) == ("re-projector", "equal")
    f, s = preset_config("D1")
    assert (f["task"], f["k"], f["learning_rate"]) == ("abs", 2048, 0.007) and "decay" in s
    assert preset_config("LR5")[0]["k"] == 2048
    f, s = preset_config("K1", quick=True)
    assert (f["N"], f["m"], f["log2_batch_size"], f["log2_training_steps"]) == (64, 16, 7, 12)
    assert f["decay"] == pytest.approx(0.03 * 32)          # total decay kept over 2**12 steps
    assert preset_config("D1", quick=True)[1]["decay"][0] == pytest.approx(0.1 * 32)
    assert s["k"] == [2, 4, 8, 16, 32, 64, 128, 256]
    with pytest.raises(ConfigError, match="LR1"):
        ToyModelStudy("LR9")
    assert all(isinstance(c, ToyModelsConfig) for c in PRESETS.values())
    assert ToyModelStudy("lr3").preset == "LR3"             # any case


def test_instances_grid_and_seeds() -> None:
    st = ToyModelStudy("G3", quick=True, seeds=2, seed=5)
    insts = st.config.instances()
    assert len(insts) == 6 * 11 * 2
    assert {s for _, s in insts} == {5, 6}
    assert insts[0][0].nonlinearity == "GeLU"
    custom = ToyModelStudy(None, sweep={"k": [8, 16]}, **TINY)
    assert [c.k for c, _ in custom.config.instances()] == [8, 16]
    with pytest.raises(ConfigError, match="bogus"):
        ToyModelStudy("LR1", bogus=1)
    with pytest.raises(ConfigError, match="'learning_rate'"):   # the closest field
        ToyModelStudy("LR1", lerning_rate=0.1)
    with pytest.raises(ConfigError, match="sweep"):
        ToyModelStudy("LR1", sweep={"bogus": [1]})
    assert "toy-models" in available_studies()


def _run(out, report=False, **kw):
    study = ToyModelStudy("B3", quick=True, sweep={"initial_bias": [-1.0, -0.5, 0.0]},
                          seeds=2, chunk_size=2, progress=False, **TINY, **kw)
    return study, study.run(out=out, report=report)


def test_run_store_layout_and_report(tmp_path) -> None:
    study, report = _run(tmp_path / "run", report=True)
    assert report == tmp_path / "run" / "report.html"
    text = report.read_text()
    assert "initial_bias" in text and "data:image/png;base64," in text   # offline page
    assert text.index("Headline findings") < text.index("<figure>")
    for fig in ("training", "vs_swept", "activations", "biases"):
        assert (tmp_path / "run" / "figures" / f"{fig}.png").stat().st_size > 1000
    store = ActivationStore(tmp_path / "run" / "results.zarr")
    names = store.list_results()
    assert names == ["toy_models/chunk_000", "toy_models/chunk_001", "toy_models/chunk_002",
                     "toy_models/summary"]
    chunk = store.read_result("toy_models/chunk_001")
    assert chunk["instance"].values.tolist() == [2, 3]
    assert chunk.sizes["checkpoint"] == 6 and chunk.sizes["log_step"] == 2
    assert chunk["checkpoint_activation"].dims == ("instance", "checkpoint", "unit", "feature")
    summary = store.read_result("toy_models/summary")
    assert summary.sizes["instance"] == 6
    assert summary["initial_bias"].values.tolist() == [-1, -1, -0.5, -0.5, 0, 0]
    assert summary["seed"].values.tolist() == [0, 1] * 3
    # the stored metrics are the metric of the stored final model
    from polysdk.detect.capacity import FeatureCapacity
    det = FeatureCapacity().fit(chunk["checkpoint_activation"].values[0, -1])
    assert det.mono_per_feature_ == pytest.approx(float(chunk["mono_per_feature"][0]))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "B3"


def test_resume_after_kill_trains_nothing_twice(tmp_path, monkeypatch) -> None:
    import polysdk.train as train

    real = train.train_toy_models
    calls: list[list[int]] = []

    def counting(cfgs, seeds, **kw):
        calls.append([c.initial_bias for c in cfgs])
        if len(calls) == 2 and fail["on"]:
            raise KeyboardInterrupt("simulated kill during chunk 1")
        return real(cfgs, seeds, **kw)

    fail = {"on": True}
    monkeypatch.setattr(train, "train_toy_models", counting)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed")
    store = ActivationStore(tmp_path / "killed" / "results.zarr")
    assert store.list_results() == ["toy_models/chunk_000"]
    fail["on"] = False
    calls.clear()
    _run(tmp_path / "killed")
    assert calls == [[-0.5, -0.5], [0.0, 0.0]]          # chunk 0 was not trained again
    calls.clear()
    _run(tmp_path / "whole")
    assert len(calls) == 3
    a = ActivationStore(tmp_path / "killed" / "results.zarr")
    b = ActivationStore(tmp_path / "whole" / "results.zarr")
    for name in b.list_results():
        da, db = a.read_result(name), b.read_result(name)
        for var in ("W1", "b1", "loss", "mono_per_feature", "final_loss"):
            if var in db:
                np.testing.assert_allclose(da[var].values, db[var].values, rtol=1e-6)
    # a finished run re-run: nothing is trained
    calls.clear()
    _run(tmp_path / "whole")
    assert calls == []


def test_other_config_in_same_folder_is_refused(tmp_path) -> None:
    _run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "B3"
    with pytest.raises(ConfigError, match="another config"):
        ToyModelStudy("LR1", quick=True, progress=False, **TINY).run(out=tmp_path / "run")
    # the refused run left the folder's config unchanged
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "B3"
    # resume=False starts over
    ToyModelStudy("LR1", quick=True, progress=False, chunk_size=6, **TINY).run(
        out=tmp_path / "run", resume=False, report=False)
    store = ActivationStore(tmp_path / "run" / "results.zarr")
    assert "learning_rate" in json.loads(store.read_result("toy_models/summary").attrs["swept"])


def test_record_round_trip() -> None:
    st = ToyModelStudy("K1", quick=True, seeds=3)
    again = ToyModelStudy.from_record(json.loads(json.dumps(st.record())))
    assert again.config == st.config and again.record() == st.record()
    assert [c for c, _ in again.config.instances()] == [c for c, _ in st.config.instances()]
    # quick() then settings: the settings are not scaled
    assert ToyModelStudy("K1", quick=True, k=64).config.k == 64
    assert ToyModelStudy("K1", quick=True).config.k == 128


# Reference numbers of the old code path (before the Study platform: commit d932435,
# ``ToyModelStudy.run`` with the toy loop inside ``_run``), obtained by running that
# commit's code on exactly the config of ``test_same_numbers_as_before_the_platform``
# with one torch thread and printing the stored summary and chunks (float32 values
# printed as Python floats). The platform must give the same numbers.
REFERENCE = {
    "final_loss": [0.08723277971148491, 0.04019282013177872, 0.4300444424152374,
                   0.0903545692563057],
    "mono_per_feature": [0.0, 0.0, 0.0625, 0.125],
    "final_mean_bias": [-0.8406484127044678, -1.0750030279159546, 0.12901411950588226,
                        -0.08802653104066849],
    "n_mono": [0.0, 0.0, 1.0, 2.0],
    "W1_sum": [1.5371792316436768, 1.2603559494018555, 1.40159273147583,
               1.1823389530181885],
    "b1_0": [-0.5412269830703735, -1.1477407217025757, 0.41046902537345886,
             -0.1622484177350998],
    "loss_0": [0.11875838041305542, 0.046985916793346405, 0.5034053921699524,
               0.1000119000673294],
}


def test_same_numbers_as_before_the_platform(tmp_path) -> None:
    study = ToyModelStudy("B3", quick=True, sweep={"initial_bias": [-1.0, 0.0]}, seeds=2,
                          chunk_size=2, progress=False, **TINY)
    study.run(out=tmp_path / "ref", report=False)
    store = ActivationStore(tmp_path / "ref" / "results.zarr")
    summary = store.read_result("toy_models/summary")
    chunks = [store.read_result(f"toy_models/chunk_{j:03d}") for j in range(2)]
    got = {v: summary[v].values.astype(float).tolist()
           for v in ("final_loss", "mono_per_feature", "final_mean_bias", "n_mono")}
    got["W1_sum"] = [float(x) for ds in chunks for x in ds["W1"].values.sum((1, 2))]
    got["b1_0"] = [float(x) for ds in chunks for x in ds["b1"].values[:, 0]]
    got["loss_0"] = [float(x) for ds in chunks for x in ds["loss"].values[:, 0]]
    for key, want in REFERENCE.items():
        np.testing.assert_allclose(got[key], want, rtol=1e-6, atol=1e-9, err_msg=key)
