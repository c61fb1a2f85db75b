"""polysdk.mask plumbing: parameter selection, masked forward, site reading, objectives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polysdk.errors import ConfigError, SiteError, SiteNotFoundError
from polysdk.mask import (
    Contrastive,
    ContinuousSparsification,
    Preserve,
    SiteReader,
    expand_mask,
    masked_call,
    select_parameters,
    select_unit,
    temperature_schedule,
)


class Boom(nn.Module):
    """A layer that must never run (proves the forward pass stopped before it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Boom ran")


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_select_parameters_by_site_and_kind():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)))
    assert list(select_parameters(net, "*")) == [
        "0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias"
    ]
    assert list(select_parameters(net, "2.*", kinds=("weight",), min_ndim=2)) == ["2.0.weight"]
    assert list(select_parameters(net, ["0", "2.1"], kinds=("bias",))) == ["0.bias", "2.1.bias"]
    with pytest.raises(ConfigError, match="selects no parameter"):
        select_parameters(net, "1")
    with pytest.raises(SiteNotFoundError):
        select_parameters(net, "fc9")


def test_expand_mask_broadcasts_kernel_masks():
    m = torch.tensor([[True, False], [False, True]])
    full = expand_mask(m, (2, 2, 3, 3))
    assert full.shape == (2, 2, 3, 3)
    assert bool(full[0, 0].all()) and not bool(full[0, 1].any()) and bool(full[1, 1].all())
    with pytest.raises(ConfigError, match="does not fit"):
        expand_mask(torch.ones(3), (2, 2))


def test_masked_call_hand_computed_and_leaves_model_untouched():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    masks = {"weight": torch.tensor([[True, False], [False, True]]), "bias": torch.tensor([0.5, 0.0])}
    out = masked_call(lin, masks, x)
    # y0 = 1*x0 + 0.5*1 ; y1 = 4*x1 + 0
    assert torch.allclose(out, torch.tensor([[1.5, 4.0], [2.5, -4.0]]))
    assert torch.equal(lin.weight, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # gradient reaches a float mask; detach=True keeps it off the weights
    m = torch.ones(2, 2, requires_grad=True)
    masked_call(lin, {"weight": m}, x, detach=True).sum().backward()
    assert lin.weight.grad is None
    assert torch.allclose(m.grad, lin.weight.detach() * x.sum(0))  # d/dm_oi = w_oi * sum_b x_bi
    with pytest.raises(ConfigError, match="names no parameter"):
        masked_call(lin, {"weights": torch.ones(2, 2)}, x)


def test_masked_call_restores_parameters_after_an_exception():
    net = nn.Sequential(nn.Linear(2, 2), Boom())
    before = net[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match="Boom"):
        masked_call(net, {"0.weight": torch.zeros(2, 2)}, torch.ones(1, 2))
    assert isinstance(net[0].weight, nn.Parameter) and torch.equal(net[0].weight, before)


def test_site_reader_stops_at_the_target_and_cleans_up():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), Boom())
    x = torch.tensor([[1.0, -2.0]])
    with SiteReader(net, "0") as reader:
        h = reader.run(lambda: net(x))
    assert torch.allclose(h, net[0](x))
    assert no_hooks(net)
    reader = SiteReader(net, "0", stop=False)
    with pytest.raises(RuntimeError, match="Boom"), reader:
        reader.run(lambda: net(x))
    assert no_hooks(net)


def test_site_reader_without_stop_keeps_the_pre_inplace_value():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
    x = torch.tensor([[2.0, -3.0]])
    with SiteReader(net, "0", stop=False) as reader:
        h = reader.run(lambda: net(x))
    assert h.tolist() == [[2.0, -2.0, -3.0]]  # not clipped by the in-place ReLU after it


def test_site_reader_errors():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(ConfigError, match="one site"):
        SiteReader(net, "*")
    with SiteReader(net, "1") as reader, pytest.raises(SiteError, match="did not run"):
        reader.run(lambda: net[0](torch.ones(1, 2)))


CONV, SEQ = ("sample", "unit", "y", "x"), ("sample", "position", "unit")


def test_select_unit_axes_and_positions():
    # polysdk.mask.select_unit is polysdk.dims.select_unit: named dims, not axis numbers
    conv = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(select_unit(conv, CONV, 2, (1, 3)), conv[:, 2, 1, 3])
    assert torch.equal(select_unit(conv, CONV, 1, "center"), conv[:, 1, 2, 2])
    assert torch.equal(select_unit(conv, CONV, 1, "centre"), conv[:, 1, 2, 2])
    assert torch.equal(select_unit(conv, CONV, 0, {"y": 3, "x": 0}), conv[:, 0, 3, 0])
    assert torch.equal(select_unit(conv, CONV, 0), conv[:, 0])
    seq = torch.randn(2, 7, 4)  # [batch, position, unit]
    assert torch.equal(select_unit(seq, SEQ, 3), seq[..., 3])
    assert torch.equal(select_unit(seq, SEQ, 3, (5,)), seq[:, 5, 3])
    assert torch.equal(select_unit(seq, ("sample", "unit", "feature"), 1), seq[:, 1])
    with pytest.raises(SiteError, match="has 1 indices"):
        select_unit(conv, CONV, 0, (1,))


def test_temperature_schedule_hand_computed():
    temps = temperature_schedule(5, 1.0, 200.0)
    assert temps == pytest.approx([200 ** (e / 4) for e in range(5)])
    assert temps[0] == 1.0 and temps[-1] == pytest.approx(200.0)
    assert temperature_schedule(1) == [1.0]
    with pytest.raises(ConfigError):
        temperature_schedule(0)


def test_contrastive_hand_computed_and_gradcheck():
    act = torch.tensor([2.0, -1.0])
    labels = torch.tensor([1, 0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert float(Contrastive()(act, labels, None)) == pytest.approx(expected, rel=1e-6)
    maps = torch.tensor([[1.0, 3.0], [0.0, -4.0]])
    assert torch.equal(Contrastive("mean").logits(maps), torch.tensor([2.0, -2.0]))
    assert torch.equal(Contrastive("max").logits(maps), torch.tensor([3.0, 0.0]))
    x = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    y = torch.tensor([1, 0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda a: Contrastive()(a, y, None), (x,))
    with pytest.raises(ConfigError, match="needs labels"):
        Contrastive()(act, None, None)


def test_preserve_hand_computed_and_gradcheck():
    act, ref = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    assert float(Preserve(normalize=False)(act, None, ref)) == pytest.approx(2.0)  # (0 + 4) / 2
    assert float(Preserve()(act, None, ref)) == pytest.approx(4.0)  # / mean(ref^2) = 0.5
    a = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    r = torch.randn(4, 3, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda t: Preserve()(t, None, r), (a,))


def test_soft_masked_forward_gradcheck():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2)).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.double)
    s1 = torch.randn(3, 2, dtype=torch.double, requires_grad=True)  # kernel logits
    s2 = torch.randn(2, 3, 2, 2, dtype=torch.double, requires_grad=True)  # weight logits

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        soft = {"0.weight": torch.sigmoid(3.0 * a), "2.weight": torch.sigmoid(3.0 * b)}
        with SiteReader(net, "2") as reader:
            act = reader.run(lambda: masked_call(net, soft, x, detach=True))
        return select_unit(act, CONV, 1, "center")

    assert torch.autograd.gradcheck(f, (s1, s2))


def test_penalty_is_lam_times_sum_of_soft_weight_masks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3))
    x = torch.randn(8, 1, 7, 7)
    y = torch.tensor([0, 1] * 4)
    n_weights = 2 * 1 * 9 + 3 * 2 * 9  # biases are not penalised by default
    for granularity in ("weight", "kernel"):
        cs = ContinuousSparsification(
            net, "2", unit=0, position="center", lam=0.1, s0=0.3, temperature=(2.0, 2.0),
            epochs=1, lr=0.0, batch_size=4, granularity=granularity, progress=False,
        ).fit(x, y)
        expected = 0.1 * n_weights / (1 + math.exp(-0.6))
        assert cs.history_[0]["penalty"] == pytest.approx(expected, rel=1e-5)
    cs_all = ContinuousSparsification(
        net, "2", unit=0, position="center", lam=0.1, s0=0.3, temperature=(2.0, 2.0),
        epochs=1, lr=0.0, batch_size=4, penalize="all", progress=False,
    ).fit(x, y)
    assert cs_all.history_[0]["penalty"] == pytest.approx(0.1 * (n_weights + 5) / (1 + math.exp(-0.6)), rel=1e-5)


class Aliased(nn.Module):
    """One Linear registered under two names, and a weight tied into a second Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a
        self.c = nn.Linear(2, 2, bias=False)
        self.c.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(x))


def test_masked_call_is_safe_with_aliased_modules_and_tied_weights():
    torch.manual_seed(0)
    net = Aliased()
    w, x = net.a.weight, torch.randn(3, 2)
    before = net(x).detach()
    zero = masked_call(net, {"a.weight": torch.zeros(2, 2)}, x)
    # the tied weight is masked in both places: c(a(x)) = 0 @ (0 @ x + b) = 0
    assert torch.equal(zero, torch.zeros(3, 2))
    # torch.func.functional_call (torch 2.14) would leave the zeros in one slot here
    assert net.a.weight is w and net.b.weight is w and net.c.weight is w
    assert torch.equal(net(x), before)
    with pytest.raises(RuntimeError):
        masked_call(net, {"a.weight": torch.zeros(2, 2)}, torch.randn(3, 5))
    assert net.a.weight is w and torch.equal(net(x), before)


def test_maskers_on_a_transformer_lens_bridge(tl_model, tl_tokens):
    from polysdk.mask import SNIP, UnitMask

    tokens = torch.randint(0, 20, (32, 8), generator=torch.Generator().manual_seed(3))
    before = tl_model(tokens).detach()
    labels = (tokens[:, 3] < 10).long()
    cs = ContinuousSparsification(
        tl_model, "blocks.1.mlp.hook_post", unit=5, position=(3,), epochs=2, lam=1e-5,
        batch_size=16, progress=False,
    ).fit(tokens, labels)
    assert any("head" in n for n in cs.unused_)  # the unembedding cannot reach the MLP of block 1
    snip = SNIP(tl_model, "blocks.1.mlp.hook_post", unit=5, position=(3,)).fit(tokens)
    assert snip.n_reachable_ > 0
    with UnitMask(tl_model, "blocks.0.hook_resid_post", units=[1, 2]):
        changed = tl_model(tokens)
    assert not torch.allclose(changed, before)
    assert torch.equal(tl_model(tokens), before)  # nothing left behind on the bridge


def test_maskers_through_an_nnsight_wrapper():
    import nnsight

    from polysdk.mask import SNIP

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    wrapped = nnsight.NNsight(net)
    x = torch.randn(32, 4)
    cs = ContinuousSparsification(wrapped, "2", unit=0, epochs=2, progress=False).fit(x, (x[:, 0] > 0).long())
    assert sorted(cs.masks_) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.allclose(cs.activations(x[:3], masked=False), net(x[:3])[:, 0].detach())
    net.zero_grad()
    net[2](torch.relu(net[0](x)))[:, 0].abs().sum().backward()
    ref = (net[2].weight * net[2].weight.grad).abs()
    snip = SNIP(wrapped, "2", unit=0).fit(x)
    total = sum(float((p * p.grad).abs().sum().detach()) for p in (net[0].weight, net[2].weight))
    assert torch.allclose(snip.scores_["2.weight"], ref.detach() / total, rtol=1e-4)
    assert no_hooks(net)
