"""The hook layer: resolution, value picking, and exact hook ownership on every path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polysdk.errors import SiteError, SiteNotFoundError
from polysdk.sites import HookedComponent, Hooks, get_tensor, list_sites, resolve_sites, set_tensor


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.ReLU()),
        nn.Sequential(nn.Linear(5, 3), nn.ReLU()),
        nn.Linear(3, 2),
    )


class Recorder(HookedComponent):
    def __init__(self, model, sites, **kw):
        super().__init__(model, sites, **kw)
        self.seen: dict[str, torch.Tensor] = {}

    def hook(self, site, tensor):
        self.seen[site] = tensor.detach().clone()


# ----------------------------------------------------------------- resolution


def test_exact_glob_and_module_specs():
    net = small_net()
    assert list(resolve_sites(net, "0.0")) == ["0.0"]
    assert list(resolve_sites(net, "*.0")) == ["0.0", "1.0"]  # * stays within a component
    assert list(resolve_sites(net, "*")) == ["0", "1", "2"]
    assert list(resolve_sites(net, "**")) == list_sites(net)
    assert list(resolve_sites(net, [net[1][0], "2"])) == ["1.0", "2"]
    # a module matched twice is listed once
    assert list(resolve_sites(net, ["0.0", "*.0"])) == ["0.0", "1.0"]


def test_unknown_name_names_closest_and_attaches_nothing():
    net = small_net()
    user_handle = net[0][0].register_forward_hook(lambda *a: None)
    before = hook_count(net)
    with pytest.raises(SiteNotFoundError) as err:
        Hooks(net, ["0.0", "1.1", "1.O"], lambda s, t: None).attach()
    assert "1.0" in str(err.value) and "'1.O'" in str(err.value)
    assert isinstance(err.value, KeyError)
    assert hook_count(net) == before
    user_handle.remove()


def test_foreign_module_and_bad_spec_type():
    net = small_net()
    with pytest.raises(SiteNotFoundError):
        resolve_sites(net, nn.Linear(1, 1))
    with pytest.raises(SiteError):
        resolve_sites(net, [3.5])  # type: ignore[list-item]
    with pytest.raises(SiteError):
        resolve_sites(net, [])


# ----------------------------------------------------------------- lifecycle


def test_hooks_removed_after_normal_exit_exception_and_detach():
    net = small_net()
    user = net[1][0].register_forward_hook(lambda *a: None)
    base = hook_count(net)
    rec = Recorder(net, ["0.1", "1.0"])
    assert hook_count(net) == base  # constructing attaches nothing
    with rec:
        assert hook_count(net) == base + 2
        net(torch.zeros(1, 4))
    assert hook_count(net) == base
    with pytest.raises(RuntimeError):
        with rec:
            raise RuntimeError("boom")
    assert hook_count(net) == base
    rec.attach()
    rec.attach()  # idempotent
    assert hook_count(net) == base + 2
    rec.detach()
    rec.detach()
    assert hook_count(net) == base
    assert user.id in net[1][0]._forward_hooks  # the user's hook survived every path
    user.remove()


def test_hook_registered_by_user_during_block_survives():
    net = small_net()
    with Recorder(net, "0.0"):
        during = net[0][0].register_forward_hook(lambda *a: None)
    assert during.id in net[0][0]._forward_hooks
    during.remove()


def test_nested_components_remove_only_their_own():
    net = small_net()
    outer, inner = Recorder(net, "0.0"), Recorder(net, "0.0")
    with outer:
        with inner:
            assert hook_count(net) == 2
        assert hook_count(net) == 1
        net(torch.ones(2, 4))
    assert "0.0" in outer.seen and "0.0" not in inner.seen
    assert hook_count(net) == 0


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(st.sampled_from(["0", "0.0", "0.1", "1", "1.0", "1.1", "2", "bad"]), min_size=1, max_size=5),
    user_sites=st.lists(st.sampled_from(["0.0", "1.0", "2"]), max_size=3),
    fail_inside=st.booleans(),
)
def test_property_hook_count_restored_on_every_path(picks, user_sites, fail_inside):
    net = small_net()
    user_handles = [
        (net.get_submodule(s), net.get_submodule(s).register_forward_hook(lambda *a: None)) for s in user_sites
    ]
    base = hook_count(net)
    try:
        with Recorder(net, picks) as rec:
            assert hook_count(net) == base + len(rec.site_names)
            net(torch.ones(1, 4))
            if fail_inside:
                raise ValueError("user code failed")
    except (SiteNotFoundError, ValueError) as err:
        assert ("bad" in picks) == isinstance(err, SiteNotFoundError) or fail_inside
    assert hook_count(net) == base
    for module, handle in user_handles:
        assert handle.id in module._forward_hooks  # the user's hooks survive
        handle.remove()
    assert hook_count(net) == 0


# ----------------------------------------------------------------- values


@dataclasses.dataclass
class Out:
    meta: str
    hidden: torch.Tensor
    other: torch.Tensor


def test_get_and_set_tensor_across_containers():
    a, b = torch.ones(2), torch.zeros(2)
    assert get_tensor((None, a, b)) is a
    assert get_tensor((a, b), 1) is b
    assert get_tensor({"x": 3, "h": a}) is a
    assert get_tensor(Out("m", a, b)) is a
    assert get_tensor(Out("m", a, b), "other") is b
    new = torch.full((2,), 7.0)
    assert set_tensor((a, b), new, 1)[1] is new
    assert set_tensor({"h": a}, new)["h"] is new
    assert set_tensor(Out("m", a, b), new).hidden is new
    with pytest.raises(SiteError):
        get_tensor(("no", "tensor"))
    with pytest.raises(SiteError):
        get_tensor((a,), 3)
    with pytest.raises(SiteError):
        get_tensor(Out("m", a, b), "meta")


def test_lstm_tuple_output_and_replacement():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)
    model = nn.Sequential()
    model.add_module("rnn", lstm)
    x = torch.randn(2, 5, 3)
    expected, _ = lstm(x)
    rec = Recorder(model, "rnn")
    with rec:
        lstm(x)
    torch.testing.assert_close(rec.seen["rnn"], expected)

    class Zero(HookedComponent):
        def hook(self, site, tensor):
            return torch.zeros_like(tensor)

    with Zero(model, "rnn"):
        out, (h, c) = lstm(x)
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(h) > 0


def test_input_capture_positional_and_replacement():
    net = small_net()
    x = torch.randn(3, 4)
    rec = Recorder(net, "1.0", capture="input")
    with rec:
        net(x)
    torch.testing.assert_close(rec.seen["1.0"], net[0](x))

    class DoubleInput(HookedComponent):
        def hook(self, site, tensor):
            return tensor * 2

    with DoubleInput(net, "0.0", capture="input"):
        doubled = net(x)
    torch.testing.assert_close(doubled, net(2 * x))


def test_transformer_lens_aliases_and_nnsight(tl_model, tl_tokens):
    sites = resolve_sites(tl_model, "blocks.*.mlp.hook_post")
    assert list(sites) == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    assert sites["blocks.0.mlp.hook_post"] is tl_model.hook_dict["blocks.0.mlp.hook_post"]
    with pytest.raises(SiteNotFoundError, match="blocks.0.mlp.hook_post"):
        resolve_sites(tl_model, "blocks.0.mlp.hook_pots")

    import nnsight

    net = small_net()
    wrapped = nnsight.NNsight(net)
    assert list(resolve_sites(wrapped, "*.0")) == ["0.0", "1.0"]
    rec = Recorder(wrapped, "1.0")
    with rec:
        wrapped(torch.ones(2, 4))
    torch.testing.assert_close(rec.seen["1.0"], net[1][0](net[0](torch.ones(2, 4))))
    assert hook_count(net) == 0
