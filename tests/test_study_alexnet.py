"""The AlexNet-subnetworks study (seed 000) at tiny sizes: receptive fields against the
input gradient, one recording pass for every channel, clear errors, the run end to end
and through the CLI, the real path (torchvision AlexNet, an ImageFolder)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from polysdk.cli import main
from polysdk.errors import ConfigError
from polysdk.models.alexnet import (check_unit, receptive_field, rf_inputs, small_alexnet,
                                    torchvision_alexnet)
from polysdk.store import ActivationStore
from polysdk.studies import get_study
from polysdk.studies.alexnet import AlexNetStudy
from polysdk.studies.alexnet_pipeline import StudyData, record_centres

LAYERS = ["features.0", "features.3", "features.6", "features.8", "features.10"]
#: a run of a few seconds of compute: 6 classes x 30 images of 64 px, a tiny network
TINY = dict(n_per_class=30, n_test_per_class=6, image_size=64, epochs=2,
            widths=(8, 16, 24, 16, 16), hidden=32, top_k=30, min_cluster_size=5,
            cs_epochs=3, milestones=(2,), ladder=(0.5, 0.05), ladder_images=24,
            n_candidates=1, progress=False, threads=1)


def gradient_box(model: nn.Module, site: str, size: int) -> tuple[int, int, int, int]:
    """Rows and columns of the input that the centre unit's gradient reaches, with max
    pools made average pools (same geometry) and every weight and input positive, so no
    path cancels or is cut by a max."""
    m = copy.deepcopy(model).eval()
    for i, mod in enumerate(m.features):
        if isinstance(mod, nn.MaxPool2d):
            m.features[i] = nn.AvgPool2d(mod.kernel_size, mod.stride, mod.padding)
    with torch.no_grad():
        for p in m.parameters():
            p.abs_().add_(1e-3)
    x = (torch.rand(1, 3, size, size) + 0.1).requires_grad_(True)
    seen = {}
    handle = dict(m.named_modules())[site].register_forward_hook(
        lambda mod, i, o: seen.setdefault("o", o))
    m.features(x)
    handle.remove()
    out = seen["o"]
    c = out.shape[-1] // 2
    out[0, :, c, c].sum().backward()
    nz = (x.grad[0].abs().sum(0) > 0).nonzero()
    return (int(nz[:, 0].min()), int(nz[:, 0].max()), int(nz[:, 1].min()),
            int(nz[:, 1].max()))


@pytest.mark.parametrize("size", [64, 128])
def test_receptive_field_matches_the_gradient_small(size) -> None:
    model = small_alexnet(3)
    for site in LAYERS:
        box = receptive_field(model, site, size)
        assert (box.y0, box.y1, box.x0, box.x1) == gradient_box(model, site, size), site


def test_receptive_field_matches_the_gradient_torchvision() -> None:
    model = torchvision_alexnet(None)
    sizes = {}
    for site in LAYERS:
        box = receptive_field(model, site, 224)
        assert (box.y0, box.y1, box.x0, box.x1) == gradient_box(model, site, 224), site
        sizes[site] = (box.size, box.grid)
    # the textbook AlexNet figures; conv5's centre is [6, 6] of 13 x 13 as in the seed
    assert sizes["features.6"] == (99, 13) and sizes["features.10"] == (163, 13)


def test_rf_inputs_shrink_into_the_box_on_a_mean_canvas() -> None:
    model = small_alexnet(3)
    x = torch.rand(2, 3, 128, 128) + 1.0
    box = receptive_field(model, "features.6", 128)
    assert not box.whole_image and box.height == 99
    out = rf_inputs(x, box)
    assert out.shape == x.shape
    assert float(out[:, :, : box.y0].abs().max()) == 0.0          # the canvas: mean colour
    assert float(out[:, :, box.y0: box.y1 + 1, box.x0: box.x1 + 1].min()) > 0.9
    whole = receptive_field(model, "features.10", 128)
    assert whole.whole_image and rf_inputs(x, whole) is x


def test_one_pass_records_every_channel_pre_relu_per_box(tmp_path) -> None:
    """Layers whose centre boxes differ get their own pass; each stored value is the
    pre-ReLU conv output at the centre for that layer's RF input."""
    torch.manual_seed(0)
    model = small_alexnet(3, widths=(8, 16, 24, 16, 12)).eval()
    x = torch.randn(10, 3, 128, 128)
    data = StudyData(x, np.arange(10) % 3)
    groups = record_centres(model, data, ["features.6", "features.8", "features.10"],
                            tmp_path, batch_size=4)
    assert [g["layers"] for g in groups] == [["features.6"], ["features.8", "features.10"]]
    for g in groups:
        store = ActivationStore(g["store"], mode="r")
        assert store.n_samples == 10
        for layer in g["layers"]:
            idx = LAYERS.index(layer)
            box = receptive_field(model, layer, 128)
            with torch.no_grad():
                ref = model.features[: [0, 3, 6, 8, 10][idx] + 1](rf_inputs(x, box))
            c = ref.shape[-1] // 2
            got = store[layer].values
            assert got.shape == (10, ref.shape[1])
            np.testing.assert_allclose(got, ref[:, :, c, c].numpy(), rtol=1e-4, atol=1e-5)
            assert (got < 0).any()   # pre-ReLU


def test_clear_errors_for_layers_units_and_sizes(tmp_path) -> None:
    model = small_alexnet(3)
    with pytest.raises(ConfigError, match="'features.7' is ReLU, not a Conv2d"):
        check_unit(model, "features.7", 0)
    with pytest.raises(ConfigError, match="out of range for 'features.10', which has 64 "
                                          "channels"):
        AlexNetStudy(quick=True, units=("features.10:64",)).units()
    with pytest.raises(ConfigError, match="not LAYER:UNIT"):
        AlexNetStudy(units=("features.10",))
    with pytest.raises(ConfigError, match="too few images for top_k=400"):
        AlexNetStudy(n_per_class=50)
    with pytest.raises(ConfigError, match="cannot hold two clusters of min_cluster_size=30"):
        AlexNetStudy(top_k=50, min_cluster_size=30)
    (tmp_path / "flat").mkdir()
    for i in range(3):
        (tmp_path / "flat" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="not an ImageFolder.*3 loose images"):
        AlexNetStudy(root=str(tmp_path / "flat")).units()
    with pytest.raises(ConfigError, match="is not a folder"):
        AlexNetStudy(root=str(tmp_path / "nothing")).units()


def test_cli_names_the_study_and_refuses_bad_units(capsys) -> None:
    assert main(["list"]) == 0
    assert "alexnet-subnetworks: AlexNet subnetworks (seed 000)" in capsys.readouterr().out
    assert get_study("alexnet-subnetworks") is AlexNetStudy
    assert main(["run", "alexnet-subnetworks", "--quick", "--set", "units=features.7:1",
                 "--out", "/tmp/never-used"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polysdk: error: layer 'features.7' is ReLU") and "\n" not in err


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path) -> None:
    out = tmp_path / "run"
    report = AlexNetStudy(quick=True, **TINY).run(out=out)
    assert report.exists() and (out / "model.pt").exists()
    study = AlexNetStudy.load(out, progress=False)
    res = study.results(out)
    names = list(res)
    assert names[:5] == ["alexnet/model", "alexnet/record", "alexnet/clusters/features.6",
                         "alexnet/clusters/features.8", "alexnet/clusters/features.10"]
    cl = res["alexnet/clusters/features.10"]
    assert set(cl["factor"].values) >= {"look", "colour", "background"}
    assert cl["top_index"].shape == (16, 30)
    page = report.read_text()
    assert "Headline findings" in page
    cmp = res["alexnet/cand0/compare"]
    if "empty" in cmp:   # no unit with two clusters at this size: nothing more to check
        return
    assert list(cmp["circuit"].values) == ["original", "subnet_a", "subnet_b", "actgrad_a",
                                           "actgrad_b", "snip_a", "snip_b", "force_a",
                                           "force_b"]
    # baselines keep at most the subnetwork's weight count (the same density)
    kept = cmp["layer_kept"].sum("layer").values
    assert kept[3] <= cmp.attrs["kept_a"] and kept[5] == cmp.attrs["kept_a"]
    assert kept[7] <= cmp.attrs["kept_a"] + 1
    assert np.isfinite(cmp["ab_log_p_value"].values).all()
    assert str(cmp["param"].values[-1]) == "overall"
    assert "Mask overlap" in page and "top images per cluster" in page
    # the unit's filter is what the target layer's overlap row counts
    layer = cmp.attrs["layer"]
    row = [str(p) for p in cmp["param"].values].index(f"{layer}.weight")
    conv = dict(study.model().named_modules())[layer]
    assert int(cmp["ab_size"].values[row]) == conv.weight[0].numel()


@pytest.mark.slow
def test_a_unit_with_one_cluster_is_refused_with_candidates(tmp_path) -> None:
    out = tmp_path / "run"
    AlexNetStudy(quick=True, **{**TINY, "n_candidates": 0}).run(out=out, report=False)
    res = AlexNetStudy.load(out).results(out)
    cl = res["alexnet/clusters/features.10"]
    single = int(np.flatnonzero(cl["n_clusters"].values < 2)[0])
    other = AlexNetStudy(quick=True, **{**TINY, "units": (f"features.10:{single}",)})
    other._out = out   # read the stored clusters
    with pytest.raises(ConfigError, match=f"unit features.10:{single} has [01] cluster"):
        other.candidates()


@pytest.mark.slow
def test_real_path_torchvision_and_an_image_folder(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30)]):
        folder = tmp_path / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(colour) + rng.normal(0, 40, (48, 64, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(folder / f"{i}.png")
    study = AlexNetStudy(root=str(tmp_path / "images"), weights="none", top_k=12,
                         min_cluster_size=3, layers=("features.10",), n_candidates=1,
                         cs_epochs=1, milestones=(1,), methods=("snip",), ladder=(0.5,),
                         ladder_images=8, control=False, progress=False, threads=1)
    out = tmp_path / "run"
    report = study.run(out=out)
    res = study.results(out)
    model = res["alexnet/model"]
    assert model.attrs["source"] == "torchvision" and model.attrs["weights"] == "none"
    groups = json.loads(res["alexnet/record"].attrs["groups"])
    assert groups[0]["box"] == [30, 192, 30, 192] and groups[0]["grid"] == 13
    cl = res["alexnet/clusters/features.10"]
    assert cl["top_index"].shape == (256, 12) and list(cl["factor"].values) == ["label"]
    assert report.exists()
    with pytest.raises(ConfigError, match="AlexNet_Weights name"):
        AlexNetStudy(root=str(tmp_path / "images"), weights="m.pt").new_model()


def _starts(trace) -> list[str]:
    return [ln.split()[1] for ln in trace.read_text().splitlines()] if trace.exists() else []


def _cli(out, trace) -> list[str]:
    sets = []
    # 80 mask epochs: the cut subnetwork takes seconds, so the kill lands inside it
    for key, value in {**TINY, "n_candidates": 2, "cs_epochs": 80, "milestones": (60,)}.items():
        if key == "progress":
            continue
        value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        sets += ["--set", f"{key}={value}"]
    return [sys.executable, "-m", "polysdk.cli", "run", "alexnet-subnetworks", "--quick",
            "--out", str(out), "--no-progress", "--no-report", *sets, "--set",
            f"trace={trace}"]


@pytest.mark.slow
def test_sigkill_mid_study_resumes_at_the_cut_subnetwork(tmp_path) -> None:
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    cut = "alexnet/cand0/b"
    proc = subprocess.Popen(_cli(out, trace), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while cut not in _starts(trace):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before {cut}: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, f"the run did not reach {cut}"
            time.sleep(0.05)
        # killed as soon as the unit has started: it trains 80 mask epochs, so the kill
        # lands inside it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = ActivationStore(out / "results.zarr").list_results()
    assert cut not in stored, "the kill came after the cut unit ended"
    assert cut not in stored and "alexnet/cand0/a" in stored
    trace.unlink()
    done = subprocess.run(_cli(out, trace), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    again = _starts(trace)
    assert again[0] == cut                   # nothing before the cut unit is redone
    assert not {"alexnet/model", "alexnet/record", "alexnet/cand0/a"} & set(again)
    # the resumed subnetwork is the one an uninterrupted run trains
    res = AlexNetStudy.load(out).results(out)
    whole = AlexNetStudy.load(out, progress=False)   # the same config, a fresh folder
    fresh = tmp_path / "whole"
    whole.run(out=fresh, report=False)
    other = whole.results(fresh)
    for name in ("alexnet/cand0/a", cut, "alexnet/cand1/compare"):
        for var in res[name].data_vars:
            if "seconds" in var:   # wall clock
                continue
            np.testing.assert_array_equal(res[name][var].values, other[name][var].values,
                                          err_msg=f"{name} {var}")


@pytest.mark.slow
def test_example_script_runs_tiny(tmp_path, capsys) -> None:
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "alexnet_subnetworks.py"
    module = runpy.run_path(str(path))
    module["main"](out=str(tmp_path / "example"), tiny=True)
    printed = capsys.readouterr().out
    assert "features.10:" in printed and "report:" in printed


@pytest.mark.slow
def test_tiny_run_report_links_the_atlas_with_image_montages(tmp_path) -> None:
    """The report maps the atlas on the recorded conv3-5 centres: a linked page with
    every layer, precision / recall against the merged-class units, neuron pages whose
    top examples are a montage of the images, and atlas=false leaves it out."""
    import re

    from polysdk.studies.alexnet_report import ATLAS_SUMMARY, print_atlas

    out = tmp_path / "run"
    report = AlexNetStudy(quick=True, **{**TINY, "n_candidates": 0, "atlas_pages": 2}).run(
        out=out)
    page = report.read_text()
    assert '<a href="atlas.html">open the atlas page</a>' in page
    assert "Detector agreement atlas" in page and "units flagged polysemantic" in page
    atlas = (out / "atlas.html").read_text()
    for layer in ("features.6", "features.8", "features.10"):
        assert f"Site {layer}" in atlas
    summary = json.loads((out / ATLAS_SUMMARY).read_text())
    res = AlexNetStudy.load(out).results(out)
    for layer, v in summary.items():
        cl = res[f"alexnet/clusters/{layer}"]
        assert v["truth"] == int(cl["two_looks"].values.sum())     # the merged-class units
        # the atlas's HDBSCAN is the study's: it flags exactly the candidates
        assert v["flagged"]["hdbscan"] == int((cl["n_clusters"].values >= 2).sum())
        assert set(v["precision"]) == set(v["flagged"]) >= {"class_selectivity", "hdbscan"}
    links = re.findall(r'href="(neurons/[^"]+\.html)"', atlas)
    if links:   # the detectors disagree on some unit: its page shows the images
        neuron = (out / links[0]).read_text()
        assert "top-activating images" in neuron and "data:image/png;base64," in neuron
        assert '<a href="../../atlas.html">' in neuron
    import io

    buf = io.StringIO()
    print_atlas(out, file=buf)
    assert "features.10" in buf.getvalue() and "hdbscan" in buf.getvalue()
    off = AlexNetStudy.load(out, progress=False, atlas=False)
    (out / "atlas.html").unlink()
    assert "Left out of this report (atlas=false)" in off.make_report(out).read_text()
    assert not (out / "atlas.html").exists()


def test_atlas_on_several_recording_passes_has_one_page_per_pass(tmp_path) -> None:
    """At 128 px conv3's centre box differs from conv4-5's: two recording stores, so the
    report maps two atlases (atlas-box0.html, atlas-box1.html), each on its own layers,
    each linked from the report, and the summary covers every layer once."""
    from polysdk.studies.alexnet_report import ATLAS_SUMMARY

    out = tmp_path / "run"
    study = AlexNetStudy(quick=True, **{**TINY, "image_size": 128, "n_per_class": 12,
                                        "n_candidates": 0, "atlas_pages": 1})
    report = study.run(out=out)
    groups = json.loads(study.results(out)["alexnet/record"].attrs["groups"])
    assert [g["layers"] for g in groups] == [["features.6"], ["features.8", "features.10"]]
    page = report.read_text()
    assert not (out / "atlas.html").exists()
    for i, layers in enumerate(g["layers"] for g in groups):
        atlas = (out / f"atlas-box{i}.html").read_text()
        assert f'href="atlas-box{i}.html"' in page
        for layer in ("features.6", "features.8", "features.10"):
            assert (f"Site {layer}" in atlas) == (layer in layers), (i, layer)
    summary = json.loads((out / ATLAS_SUMMARY).read_text())
    assert sorted(summary) == ["features.10", "features.6", "features.8"]
    assert {v["page"] for v in summary.values()} == {"atlas-box0.html", "atlas-box1.html"}
