"""Trace: read several sites, stop after the last one, clean up on every path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polysdk import Trace
from polysdk.errors import SiteError, SiteNotFoundError
from polysdk.trace import StopForward


class Boom(nn.Module):
    """A layer that must not run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Boom: the forward should have stopped")


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def net3() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


def test_reads_several_sites_as_the_model_computes_them() -> None:
    net = net3()
    x = torch.randn(6, 3)
    with Trace(net, ["0", "2", "4"]) as tr:
        out = net(x)
    h0 = net[0](x)
    assert list(tr) == ["0", "2", "4"] and len(tr) == 3
    assert torch.allclose(tr["0"], h0)  # the value before the in-place ReLU
    assert torch.allclose(tr["2"], net[2](torch.relu(h0)))
    assert torch.equal(tr["4"], out)
    assert no_hooks(net)
    tr["0"].sum().backward()  # live tensors: they carry the gradient
    assert net[0].weight.grad is not None
    with Trace(net, "2", keep_grad=False) as tr:
        net(x)
    assert not tr["2"].requires_grad


def test_stop_does_not_run_later_layers() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), Boom())
    x = torch.randn(2, 3)
    values = Trace(net, ["2", "0"], stop=True).run(net, x)
    assert list(values) == ["2", "0"] and tuple(values["2"].shape) == (2, 4)
    assert no_hooks(net)
    with Trace(net, "0", stop=True) as tr:  # a plain call inside the block: the stop is caught
        net(x)
        raise AssertionError("not reached: the forward stopped")  # pragma: no cover
    assert torch.allclose(tr["0"], net[0](x)) and tr.output is None
    with pytest.raises(RuntimeError, match="Boom"):
        Trace(net, "0").run(net, x)  # without stop the forward goes on
    assert no_hooks(net)


def test_nested_traces_stop_only_their_own() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), Boom())
    reached = []
    with Trace(net, "0", stop=True) as outer:
        with Trace(net, "2") as inner:
            net(torch.randn(2, 3))
        reached.append("inner block")  # pragma: no cover - the outer stop passes through
    assert not reached and "0" in outer.values and len(inner) == 0
    assert no_hooks(net)
    with pytest.raises(StopForward):
        Trace(net, "0", stop=True).attach()
        net(torch.randn(2, 3))  # attached without with/run: the stop reaches the caller


def test_each_forward_starts_afresh_and_missing_sites_are_named() -> None:
    net = net3()
    with Trace(net, ["0", "4"]) as tr:
        net(torch.randn(2, 3))
        net[:2](torch.randn(2, 3))  # a forward of a submodule: only "0" runs
        assert tuple(tr["0"].shape) == (2, 4)
    with pytest.raises(SiteError, match="did not run"):
        Trace(net, ["0", "4"]).run(net[:2], torch.randn(2, 3))
    with pytest.raises(SiteError, match="not traced"):
        tr["2"]
    with pytest.raises(SiteNotFoundError):
        Trace(net, ["0", "nope"])
    assert no_hooks(net)


def test_inactive_reads_nothing_and_run_keeps_the_output() -> None:
    net = net3()
    tr = Trace(net, "2")
    with tr:
        with tr.inactive():
            net(torch.randn(2, 3))
        assert len(tr) == 0
    values = tr.run(net, torch.randn(2, 3))
    assert set(values) == {"2"} and tuple(tr.output.shape) == (2, 2) and not tr.attached
    assert repr(tr) == "Trace(model=Sequential, sites='2')"
