"""Probe: captured values equal a manual forward computation, for every model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from polysdk.errors import ConfigError, SiteError, SiteNotFoundError
from polysdk.probe import Probe


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def test_linear_values_labels_and_no_hooks_left():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(10, 6), torch.arange(10) % 3
    acts = Probe(net, ["0", "1"]).run(batches(x, y, 4), progress=False)
    expected = net[0](x)
    np.testing.assert_allclose(acts["0"].values, expected.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(acts["1"].values, expected.clamp(min=0).detach().numpy(), rtol=1e-6)
    assert acts["0"].dims == ("sample", "unit")
    assert acts["0"].label.values.tolist() == y.tolist()
    assert acts["0"].sample.values.tolist() == list(range(10))
    assert hook_count(net) == 0


@pytest.mark.parametrize("reduce", ["none", "mean", "max", "center", (1, 2)])
def test_conv_reductions(reduce):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    net = nn.Sequential(conv)
    x = torch.randn(4, 2, 5, 6)
    out = conv(x).detach()
    acts = Probe(net, "0", reduce=reduce).run([x], progress=False)["0"]
    expected = {
        "none": out,
        "mean": out.mean((2, 3)),
        "max": out.amax((2, 3)),
        "center": out[:, :, 2, 3],
        (1, 2): out[:, :, 1, 2],
    }[reduce]
    np.testing.assert_allclose(acts.values, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert acts.dims == (("sample", "unit", "y", "x") if reduce == "none" else ("sample", "unit"))


def test_lstm_tuple_output_sequence_positions():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", nn.LSTM(3, 4, batch_first=True))
    x = torch.randn(2, 5, 3)
    expected, _ = model.rnn(x)
    full = Probe(model, "rnn").run([x], progress=False)["rnn"]
    assert full.dims == ("sample", "position", "unit")
    np.testing.assert_allclose(full.values, expected.detach().numpy(), rtol=1e-6)
    last = Probe(model, "rnn", reduce=-1).run([x], progress=False)["rnn"]
    np.testing.assert_allclose(last.values, expected[:, -1].detach().numpy(), rtol=1e-6)
    chosen = Probe(model, "rnn", reduce=[0, -1]).run([x], progress=False)["rnn"]
    assert chosen.position.values.tolist() == [0, 4]
    np.testing.assert_allclose(chosen.values, expected[:, [0, 4]].detach().numpy(), rtol=1e-6)


def test_transformer_lens_hook_post_and_tokens(tl_model, tl_tokens):
    tl_model(tl_tokens)  # the bridge adds hooks of its own on its first forward
    base = hook_count(tl_model)
    acts = Probe(tl_model, "blocks.*.mlp.hook_post").run([tl_tokens], progress=False)
    cache = {}
    handle = tl_model.hook_dict["blocks.1.mlp.hook_post"].register_forward_hook(
        lambda m, i, o: cache.setdefault("post", o.detach())
    )
    tl_model(tl_tokens)
    handle.remove()
    got = acts["blocks.1.mlp.hook_post"]
    assert got.dims == ("sample", "position", "unit") and got.sizes["unit"] == 64
    np.testing.assert_allclose(got.values, cache["post"].numpy(), rtol=1e-5, atol=1e-6)
    assert got.token_id.values.tolist() == tl_tokens.tolist()
    assert hook_count(tl_model) == base


def test_nnsight_wrapped_model():
    import nnsight

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    x = torch.randn(5, 4)
    acts = Probe(nnsight.NNsight(net), "1").run([x], progress=False)
    np.testing.assert_allclose(acts["1"].values, torch.tanh(net[0](x)).detach().numpy(), rtol=1e-6)


def test_torchvision_alexnet_random_weights_center_unit():
    from torchvision.models import alexnet

    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    x = torch.randn(2, 3, 127, 127)
    acts = Probe(model, ["features.6", "features.10"], reduce="center").run([x], progress=False)
    with torch.no_grad():
        conv5 = model.features[:11](x)
    h, w = conv5.shape[-2:]
    np.testing.assert_allclose(acts["features.10"].values, conv5[:, :, h // 2, w // 2].numpy(), rtol=1e-4, atol=1e-5)
    assert acts["features.6"].sizes["unit"] == 384


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_dtypes(dtype):
    net = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    acts = Probe(net, "0", dtype=dtype).run([x], progress=False)["0"]
    expected = net[0](x).detach().to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_allclose(acts.values.astype(np.float32), expected)


def test_mapping_batches_pass_kwargs_and_record_labels():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, inputs, scale=1.0):
            return self.lin(inputs) * scale

    model = Kw()
    x = torch.randn(3, 2)
    acts = Probe(model, "lin").run([{"inputs": x, "scale": 2.0, "labels": torch.tensor([5, 6, 7])}], progress=False)
    assert acts["lin"].label.values.tolist() == [5, 6, 7]
    np.testing.assert_allclose(acts["lin"].values, model.lin(x).detach().numpy(), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(SiteNotFoundError):
        Probe(net, "9")
    with pytest.raises(ConfigError, match="dtype"):
        Probe(net, "0", dtype="int8")
    with pytest.raises(ConfigError, match="reduce"):
        Probe(net, "0", reduce="median")
    with pytest.raises(SiteError, match="do not fit a tensor"):
        Probe(net, "0", dims={"0": ("sample", "unit", "x")}).run([torch.ones(1, 3)], progress=False)
    with pytest.raises(SiteError, match="does not apply"):
        Probe(net, "0", reduce="center").run([torch.ones(1, 3)], progress=False)
    assert hook_count(net) == 0


def test_with_block_and_take():
    net = nn.Sequential(nn.Linear(3, 2))
    probe = Probe(net, "0")
    with probe:
        net(torch.ones(2, 3))
        net(torch.ones(1, 3))
    taken = probe.take()
    assert taken["0"].shape == (3, 2)
    assert isinstance(Probe(net, "0").run([torch.ones(1, 3)], progress=False)["0"], xr.DataArray)


# ----------------------------------------------------------------- into a store


def test_probe_into_store_reads_back_with_plain_xarray(tmp_path):
    from polysdk import ActivationStore

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    x, y = torch.randn(22, 6), torch.arange(22) % 4
    path = tmp_path / "acts.zarr"
    with ActivationStore(path, mode="w", chunk_samples=8) as store:
        Probe(net, ["0", "1"], store=store).run(batches(x, y, 5), progress=False)
    plain = xr.open_zarr(path, group="1")
    np.testing.assert_allclose(plain["activation"].values, net(x).detach().numpy(), rtol=1e-6)
    assert plain["label"].values.tolist() == y.tolist()
    tree = xr.open_datatree(path, engine="zarr")
    assert {"0", "1"} <= set(tree.children)


def test_interrupted_probe_resumes_without_loss_or_duplicates(tmp_path):
    from polysdk import ActivationStore

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    x, y = torch.randn(30, 6), torch.arange(30)
    data = batches(x, y, 4)
    calls = {"n": 0}

    def flaky_forward(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("interrupted")
        return model(batch[0])

    path = tmp_path / "acts.zarr"
    store = ActivationStore(path, mode="w", chunk_samples=8)
    with pytest.raises(RuntimeError, match="interrupted"):
        Probe(net, "1", store=store).run(data, forward=flaky_forward, progress=False)
    store.close()
    assert hook_count(net) == 0
    assert ActivationStore(path, mode="r").n_samples == 16  # 4 whole batches committed

    with ActivationStore(path, mode="a") as resumed:
        Probe(net, "1", store=resumed).run(data, progress=False)
    final = ActivationStore(path, mode="r")["1"]
    assert final.label.values.tolist() == list(range(30))  # nothing lost, nothing twice
    np.testing.assert_allclose(final.values, net(x).detach().numpy(), rtol=1e-6)


def test_sequence_tokens_recorded_in_store(tmp_path, tl_model, tl_tokens):
    from polysdk import ActivationStore

    path = tmp_path / "tl.zarr"
    with ActivationStore(path, mode="w") as store:
        Probe(tl_model, "blocks.0.mlp.hook_post", store=store).run([tl_tokens], progress=False)
    site = xr.open_zarr(path, group="blocks.0.mlp.hook_post")
    assert site["activation"].dims == ("sample", "position", "unit")
    assert site["token_id"].values.tolist() == tl_tokens.tolist()


@pytest.mark.gpu
def test_cuda_reduces_on_device_and_copies_to_pinned_host():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    probe = Probe(net, "0", reduce="mean")
    with probe:
        net(x)
    taken = probe.take()["0"]
    assert taken.device.type == "cpu" and taken.is_pinned()
    torch.testing.assert_close(taken, net(x).mean((2, 3)).cpu())


def test_probe_has_the_parameter_api_of_every_component():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    probe = Probe(net, "1", reduce="mean", dtype="float16")
    assert probe.get_params()["reduce"] == "mean"
    other = probe.clone(dtype="float32")
    assert other.dtype == "float32" and other.site_names == ["1"] and other.reduce == "mean"
    with pytest.raises(ConfigError, match="dtype must be one of"):
        probe.set_params(dtype="int8")
    assert probe.dtype == "float16"
    with probe, probe.inactive():   # hooks stay, nothing is recorded
        net(torch.ones(2, 3))
    with pytest.raises(SiteError, match="nothing was captured"):
        probe.take()
