"""One lifecycle and one parameter API for every hook-owning component.

For each class: no hook left after a normal exit, after an exception, after a bad
name or a failing attach; a hook the user registered survives; ``inactive()`` turns
the effect off with the hooks left in place (gradient and optimizer-step hooks of
``UnitMask`` included). Then the parameter API (round trips, ``clone(model=...)``,
declared constraints raising ``ConfigError``), the ``Masker`` contract, ``Compose`` of
mixed components and the one ``Regularizer.loss(*, labels=None)`` signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from polysdk import Compose, Trace
from polysdk.errors import ConfigError, NotFittedError, SiteNotFoundError
from polysdk.intervene import Ablate, Clamp, Patch, Steer
from polysdk.mask import FORCE, SNIP, ActGrad, ContinuousSparsification, Masker, SiteReader, UnitMask, masked_call
from polysdk.regularize import ActivationL1, MaskL0, PolysemanticityPenalty, Regularizer


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3))


def n_hooks(net: nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    count = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    count += sum(len(p._backward_hooks or {}) for p in net.parameters())
    if opt is not None:
        count += len(opt._optimizer_step_post_hooks)
    return count


# name -> factory(model, site, optimizer)
FACTORIES: dict[str, Callable[..., Any]] = {
    "Ablate": lambda m, s, o: Ablate(m, s, units=[0, 2]),
    "Clamp": lambda m, s, o: Clamp(m, s, 3.0),
    "Steer": lambda m, s, o: Steer(m, s, torch.ones(6), scale=2.0),
    "Patch": lambda m, s, o: Patch(m, s, activations=torch.full((1, 6), 5.0)),
    "ActivationL1": lambda m, s, o: ActivationL1(m, s, lam=1.0),
    "PolysemanticityPenalty": lambda m, s, o: PolysemanticityPenalty(m, s),
    "UnitMask": lambda m, s, o: UnitMask(m, s, units=[1]),
    "UnitMask(parameter)": lambda m, s, o: UnitMask(m, s, units=[1], mode="parameter", optimizer=o),
    "Trace": lambda m, s, o: Trace(m, s),
    "SiteReader": lambda m, s, o: SiteReader(m, s, stop=False),
}
IDS = list(FACTORIES)


@pytest.mark.parametrize("name", IDS)
def test_no_hook_after_exit_exception_or_bad_name_and_user_hook_survives(name: str) -> None:
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    make = FACTORIES[name]
    seen: list[int] = []
    user = net[1].register_forward_hook(lambda mod, i, o: seen.append(1))
    base = n_hooks(net, opt)
    comp = make(net, "1", opt)
    assert n_hooks(net, opt) == base  # building has no side effect
    with comp as entered:
        assert entered is comp and comp.attached
        assert n_hooks(net, opt) > base
        net(torch.randn(2, 4))
    assert n_hooks(net, opt) == base and not comp.attached
    with pytest.raises(RuntimeError, match="inside"), make(net, "1", opt):
        net(torch.randn(2, 4))
        raise RuntimeError("inside")
    assert n_hooks(net, opt) == base
    with pytest.raises(SiteNotFoundError):
        make(net, "nope", opt)
    assert n_hooks(net, opt) == base
    comp.attach().attach()  # attach returns the component and is idempotent
    comp.detach()
    comp.detach()
    assert n_hooks(net, opt) == base
    assert seen and len(net[1]._forward_hooks) == 1  # the user's hook is still there
    user.remove()


class FailingPrepare(Clamp):
    def prepare(self) -> None:
        raise RuntimeError("prepare failed")


def test_a_failing_attach_rolls_back() -> None:
    net = mlp()
    bad = FailingPrepare(net, ["1", "3"], 1.0)
    with pytest.raises(RuntimeError, match="prepare failed"):
        bad.attach()
    assert n_hooks(net) == 0 and not bad.attached
    patch = Patch(net, "1", input=torch.randn(2, 4, 1))  # the model cannot run this input
    with pytest.raises(RuntimeError):
        patch.attach()
    assert n_hooks(net) == 0


@pytest.mark.parametrize("name", ["Ablate", "Clamp", "Steer", "Patch", "UnitMask"])
def test_inactive_edits_nothing_with_hooks_attached(name: str) -> None:
    net = mlp()
    x = torch.randn(3, 4)
    plain = net(x)
    comp = FACTORIES[name](net, "1", None)
    with comp:
        hooks = n_hooks(net)
        assert not torch.allclose(net(x), plain)
        with comp.inactive() as same:
            assert same is comp and not comp.active and n_hooks(net) == hooks
            assert torch.equal(net(x), plain)
        assert comp.active and not torch.allclose(net(x), plain)


def test_inactive_regularizers_give_zero() -> None:
    net = mlp()
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    for reg in (ActivationL1(net, "2"), PolysemanticityPenalty(net, "2")):
        with reg:
            net(x)
            assert float(reg.loss(labels=y).detach()) > 0
            with reg.inactive():
                net(x)
                assert float(reg.loss(labels=y)) == 0.0


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = ((net(torch.randn(8, 4, generator=g)) - 1.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_unit_mask_parameter_hooks_honour_inactive(with_optimizer: bool) -> None:
    net = mlp()
    # without the optimizer hook only the gradient mask holds them: no momentum then
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9 if with_optimizer else 0.0, weight_decay=0.01)
    ln = net[0]  # a Linear whose zeroed rows still get a gradient through the LayerNorm
    um = UnitMask(net, "0", units=[1, 4], mode="parameter", optimizer=opt if with_optimizer else None)
    with um:
        hooks = n_hooks(net, opt)
        train(net, opt)
        zero = torch.zeros(2, 4)
        assert torch.equal(ln.weight[[1, 4]], zero)  # held while active
        with um.inactive():
            assert n_hooks(net, opt) == hooks  # gradient and step hooks stay on
            train(net, opt)
            assert bool((ln.weight[[1, 4]] != 0).all())  # they train while inactive
        assert torch.equal(ln.weight[[1, 4]], zero)  # zeroed again on leaving
        train(net, opt)
        assert torch.equal(ln.weight[[1, 4]], zero) and torch.equal(ln.bias[[1, 4]], torch.zeros(2))
    assert n_hooks(net, opt) == 0


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize("name", IDS)
def test_params_round_trip_and_clone_on_another_model(name: str) -> None:
    net, other = mlp(0), mlp(1)
    comp = FACTORIES[name](net, "1", None)
    params = comp.get_params()
    assert params["model"] is net
    twin = comp.clone()
    assert type(twin) is type(comp) and twin is not comp and twin.get_params().keys() == params.keys()
    assert repr(twin) == repr(comp) and "\n" not in repr(comp)
    moved = comp.clone(model=other)
    assert moved.model is other and moved.modules["1"] is other[1]
    with moved:
        other(torch.randn(2, 4))
    assert n_hooks(net) == 0 and n_hooks(other) == 0


def test_set_params_rebuilds_checks_and_refuses_while_attached() -> None:
    net = mlp()
    steer = Steer(net, "1", torch.ones(6), scale=1.0)
    assert steer.set_params(scale=3.0, sites="3", direction=torch.ones(3)) is steer
    assert steer.site_names == ["3"] and steer.scale == 3.0
    with pytest.raises(ConfigError, match="did you mean 'scale'"):
        steer.set_params(scal=2.0)
    with pytest.raises(SiteNotFoundError):
        steer.set_params(sites="nope")
    assert steer.site_names == ["3"]  # a failed change leaves it as it was
    with steer, pytest.raises(ConfigError, match="Detach it"):
        steer.set_params(scale=2.0)
    assert steer.scale == 3.0


@pytest.mark.parametrize("build, match", [
    (lambda n: ContinuousSparsification(n, "3", 0, temperature=(0.0, 200.0)), "temperature"),
    (lambda n: ContinuousSparsification(n, "3", 0, lr=-0.1), "lr"),
    (lambda n: ContinuousSparsification(n, "3", 0, epochs=0), "epochs"),
    (lambda n: ContinuousSparsification(n, "3", 0, milestones=(1.5,)), "milestones"),
    (lambda n: ContinuousSparsification(n, "3", 0, granularity="filter"), "granularity"),
    (lambda n: SNIP(n, "3", 0, density=0.0), "density"),
    (lambda n: SNIP(n, "3", 0, structure="row"), "structure"),
    (lambda n: FORCE(n, "3", 0, density=1.5), "density"),
    (lambda n: FORCE(n, "3", 0, steps=0), "steps"),
    (lambda n: ActGrad(n, "3", 0, structure="weight"), "structure"),
    (lambda n: ActGrad(n, "3", 0, density=2), "density"),
    (lambda n: PolysemanticityPenalty(n, "1", mode="harsh"), "mode"),
    (lambda n: ActivationL1(n, "1", reduction="max"), "reduction"),
    (lambda n: MaskL0(torch.zeros(2), temperature=0.0), "temperature"),
    (lambda n: Ablate(n, "1", method="median"), "method"),
    (lambda n: Ablate(n, "1", method="mean"), "source"),
    (lambda n: UnitMask(n, "1", units=[0], mode="weights"), "mode"),
    (lambda n: Trace(n, "1", stop="yes"), "stop"),
])
def test_declared_constraints_raise_config_error(build: Callable[[nn.Module], Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(mlp())


def test_masker_params_clone_and_set_params() -> None:
    net, other = mlp(0), mlp(1)
    cs = ContinuousSparsification(net, "3", 0, epochs=3, lr=0.5)
    assert repr(cs) == "ContinuousSparsification(model=Sequential, target='3', unit=0, epochs=3, lr=0.5)"
    assert cs.clone(model=other).model is other and cs.clone(epochs=4).epochs == 4
    with pytest.raises(ConfigError, match="epochs"):
        cs.set_params(epochs=-1)
    snip = SNIP(net, "3", 0, density=0.2)
    assert snip.clone().get_params() == snip.get_params()


# ------------------------------------------------------------------ Masker


def test_masker_contract() -> None:
    net = mlp()
    x = torch.randn(16, 4)
    for masker in (SNIP(net, "3", 0, density=0.3), FORCE(net, "3", 0, density=0.3, steps=2),
                   ActGrad(net, "3", 0, density=0.3, params=["0", "3"])):
        assert isinstance(masker, Masker)
        with pytest.raises(NotFittedError):
            masker.density_
        assert masker.fit(x) is masker
        assert 0 < masker.density_ <= 0.35
        with masker.masked() as subnet:
            assert subnet is net
            inside = net(x)
        assert torch.allclose(inside, masked_call(net, masker.masks_, x))
        assert not torch.allclose(net(x), inside) and isinstance(net[0].weight, nn.Parameter)
    scores_only = SNIP(net, "3", 0).fit(x)
    with pytest.raises(NotFittedError, match="density=None"):
        scores_only.masks_  # noqa: B018
    with pytest.raises(AttributeError, match="maks_") as typo:
        scores_only.maks_  # noqa: B018
    assert not isinstance(typo.value, NotFittedError)  # a typo is not "not fitted"
    um = UnitMask(net, "1", units=[0, 1, 2])
    assert isinstance(um, Masker) and um.fit(x).density_ == 0.5
    with um.masked():
        assert torch.equal(net[:2](x)[:, :3], torch.zeros(16, 3))
    assert n_hooks(net) == 0


# ------------------------------------------------------------------ Compose, loss


def test_compose_of_mixed_components() -> None:
    net = mlp()
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    plain = net(x)
    um = UnitMask(net, "1", units=[0])
    steer = Steer(net, "1", torch.ones(6), scale=1.0)
    trace = Trace(net, ["1", "3"])
    reg = PolysemanticityPenalty(net, "2")
    with Compose(um, steer, trace, reg) as both:
        out = net(x)
        h = trace["1"]
        assert torch.allclose(h[:, 0], torch.ones(4))  # zeroed first, then steered by +1
        assert torch.equal(out, trace["3"]) and float(reg.loss(labels=y).detach()) > 0
        with both.inactive():
            assert torch.equal(net(x), plain) and float(reg.loss(labels=y)) == 0.0
    assert n_hooks(net) == 0 and not both.attached


@pytest.mark.parametrize("reg", [
    lambda n: ActivationL1(n, "1"), lambda n: PolysemanticityPenalty(n, "1"), lambda n: MaskL0(torch.zeros(3)),
])
def test_regularizer_loss_has_one_signature(reg: Callable[[nn.Module], Regularizer]) -> None:
    r = reg(mlp())
    params = inspect.signature(r.loss).parameters
    assert list(params) == ["labels"]
    assert params["labels"].kind is inspect.Parameter.KEYWORD_ONLY and params["labels"].default is None
    assert not hasattr(r, "set_labels")
