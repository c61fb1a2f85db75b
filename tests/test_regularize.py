"""Regularizers: hand-computed losses, the penalty against the naive double loop,
gradient checks, and the hook lifecycle of the hooked regularizers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polysdk.errors import ConfigError, SiteNotFoundError
from polysdk.regularize import (
    ActivationL1,
    MaskL0,
    PolysemanticityPenalty,
    activation_l1,
    polysemanticity_penalty,
    polysemanticity_penalty_naive,
)


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


# ----------------------------------------------------------------- penalty: hand cases


def test_penalty_soft_hand_computed() -> None:
    # rows / own max: [1, 0], [1, 1] (max 1), [0, 1] (max 2)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # different-label pairs: (0,1) dot 1, (0,2) dot 0; (1,2) share label 1
    assert polysemanticity_penalty(x, [0, 1, 1], alpha=2.0).item() == pytest.approx(2 * 1 / 3)


def test_penalty_sums_sites_and_divides_once() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 2.0], [4.0, 0.0], [1.0, 1.0]])  # -> [1,1], [1,0], [1,1]
    # site b: (0,1) 1, (0,2) 2 -> 3; site a -> 1; total 4 over C(3,2) = 3
    got = polysemanticity_penalty([a, b], torch.tensor([0, 1, 1]))
    assert got.item() == pytest.approx(4 / 3)


def test_penalty_hard_hand_computed() -> None:
    x = torch.tensor([[0.5, 0.0, 0.2], [0.1, 0.3, 0.0], [0.0, 0.0, 0.7]])
    # binarised: [1,0,1], [1,1,0], [0,0,1]; all labels differ: 1 + 1 + 0
    got = polysemanticity_penalty(x, [0, 1, 2], mode="hard")
    assert got.item() == pytest.approx(2 / 3)
    # binarised at 0.25: [1,0,0], [0,1,0], [0,0,1]: no overlap at all
    assert polysemanticity_penalty(x, [0, 1, 2], mode="hard", threshold=0.25).item() == 0.0


def test_penalty_hard_threshold() -> None:
    x = torch.tensor([[0.5, 0.0, 0.3], [0.1, 0.3, 0.4], [0.0, 0.0, 0.7]])
    # > 0.25: [1,0,1], [0,1,1], [0,0,1]: dots (0,1) 1, (0,2) 1, (1,2) 1
    got = polysemanticity_penalty(x, [0, 1, 2], mode="hard", threshold=0.25)
    assert got.item() == pytest.approx(3 / 3)


def test_penalty_uses_own_max_not_min_max() -> None:
    x = torch.tensor([[2.0, 4.0], [3.0, 6.0]])  # / max: [0.5, 1], [0.5, 1]; min-max would give [0, 1]
    got = polysemanticity_penalty(x, [0, 1])
    assert got.item() == pytest.approx(1.25)


def test_penalty_signed_sites_divide_by_max_abs() -> None:
    # the original divides by K.max(K.abs(x)) + 1e-9: rows -> [-1, -2] / 2, [-1, -3] / 3
    x = torch.tensor([[-1.0, -2.0], [-1.0, -3.0]], dtype=torch.float64)
    expected = (1 * 1 + 2 * 3) / ((2 + 1e-9) * (3 + 1e-9))  # 7/6 = 1.1667 (by max: 7.0)
    for fn in (polysemanticity_penalty, polysemanticity_penalty_naive):
        assert fn(x, [0, 1]).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7 / 6, rel=1e-8)


def test_penalty_near_zero_max_and_all_zero_rows_stay_finite() -> None:
    # max(row 0) = -1e-9 cancels eps: dividing by the max gave -inf
    x = torch.tensor([[-1e-9, -5.0], [1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    expected = (-1e-9 * 1 + -5 * 2) / ((5 + 1e-9) * (2 + 1e-9))
    got = polysemanticity_penalty(x, [0, 1])
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert polysemanticity_penalty_naive(x, [0, 1]).item() == pytest.approx(expected, rel=1e-12)
    # an all-zero example (a dead layer on that input) is 0 / eps = 0, not NaN
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = polysemanticity_penalty(z, [0, 1])
    out.backward()
    assert out.item() == 0.0 and bool(torch.isfinite(z.grad).all())


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(2, 7), width=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_penalty_signed_matches_explicit_formula(batch: int, width: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=g, dtype=torch.float64)  # GELU-like: signed
    y = torch.randint(3, (batch,), generator=g).tolist()
    z = [row / (row.abs().max() + 1e-9) for row in x]
    total = sum(float(z[i] @ z[j]) for i, j in itertools.combinations(range(batch), 2)
                if y[i] != y[j])
    expected = total / math.comb(batch, 2)
    assert polysemanticity_penalty(x, y).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert polysemanticity_penalty_naive(x, y).item() == pytest.approx(expected, rel=1e-10,
                                                                        abs=1e-12)


def test_penalty_same_labels_and_small_batches_are_zero() -> None:
    x = torch.rand(4, 3, requires_grad=True)
    assert polysemanticity_penalty(x, [1, 1, 1, 1]).item() == 0.0
    one = torch.rand(1, 3, requires_grad=True)
    out = polysemanticity_penalty(one, [0])
    out.backward()
    assert out.item() == 0.0 and one.grad is not None


def test_negative_alpha_flips_sign_and_one_hot_labels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pos = polysemanticity_penalty(x, y, alpha=1.0)
    assert polysemanticity_penalty(x, y, alpha=-1.0).item() == pytest.approx(-pos.item())
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert polysemanticity_penalty(x, onehot).item() == pytest.approx(pos.item())


def test_penalty_rejects_bad_labels_and_mode() -> None:
    with pytest.raises(ConfigError, match="one entry per example"):
        polysemanticity_penalty(torch.rand(4, 2), [0, 1])
    with pytest.raises(ConfigError, match="mode"):
        polysemanticity_penalty(torch.rand(4, 2), [0, 1, 0, 1], mode="medium")  # type: ignore[arg-type]


# ------------------------------------------------------- penalty: against the naive loop


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(2, 9),
    width=st.integers(1, 6),
    n_classes=st.integers(1, 4),
    mode=st.sampled_from(["soft", "hard"]),
    seed=st.integers(0, 10_000),
)
def test_penalty_matches_naive_loop(batch: int, width: int, n_classes: int, mode: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sites = [
        torch.relu(torch.randn(batch, width, generator=g, dtype=torch.float64)),
        torch.relu(torch.randn(batch, 2, width, generator=g, dtype=torch.float64)),  # flattened
    ]
    y = torch.randint(n_classes, (batch,), generator=g)
    fast = polysemanticity_penalty(sites, y, alpha=0.7, mode=mode)  # type: ignore[arg-type]
    slow = polysemanticity_penalty_naive(sites, y, alpha=0.7, mode=mode)  # type: ignore[arg-type]
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10, abs=1e-12)


def test_naive_loop_matches_explicit_formula() -> None:
    # the reference itself, against the formula written with itertools
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64)
    y = [0, 1, 0, 2, 1]
    z = [row / (row.max() + 1e-9) for row in x]
    total = sum(float(z[i] @ z[j]) for i, j in itertools.combinations(range(5), 2) if y[i] != y[j])
    expected = total / math.comb(5, 2)
    assert polysemanticity_penalty_naive(x, y).item() == pytest.approx(expected)


# ----------------------------------------------------------------- penalty: gradients


def test_penalty_soft_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    y = torch.tensor([0, 1, 1, 2, 0, 2])
    assert torch.autograd.gradcheck(lambda t: polysemanticity_penalty(t, y, alpha=0.5), (x,))


def test_penalty_hard_is_straight_through() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.relu(torch.randn(7, 5, generator=g, dtype=torch.float64))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    x_hard = base.clone().requires_grad_()
    hard = polysemanticity_penalty(x_hard, y, mode="hard")
    hard.backward()
    # forward: the binarised penalty (computed independently)
    b = (base > 0).double()
    diff = (y[:, None] != y[None, :]).double()
    assert hard.item() == pytest.approx(float((b @ b.T * diff).sum() / 2 / math.comb(7, 2)))
    # backward: the gradient of the soft penalty evaluated at the binarised point
    # (straight-through: d hard / d z = d soft / d z at z = b, chained through z(x))
    x_soft = base.clone().requires_grad_()
    z = x_soft / (x_soft.max(dim=1, keepdim=True).values + 1e-9)
    zb = z + (b - z).detach()
    ((zb @ zb.T * diff).sum() / 2 / math.comb(7, 2)).backward()
    assert torch.allclose(x_hard.grad, x_soft.grad)
    assert x_hard.grad.abs().sum() > 0


# ------------------------------------------------------------ penalty: hooked on a model


def test_hooked_penalty_equals_function_and_backprops() -> None:
    net = mlp()
    x = torch.randn(8, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with PolysemanticityPenalty(net, ["1", "3"], alpha=1.0) as reg:
        logits = net(x)
        loss = reg.loss(labels=y)
        loss.backward()
    grad_hooked = net[0].weight.grad.clone()
    net.zero_grad()
    h1 = net[1](net[0](x))
    h2 = net[3](net[2](h1))
    manual = polysemanticity_penalty_naive([h1, h2], y)
    manual.backward()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert torch.allclose(grad_hooked, net[0].weight.grad, atol=1e-6)
    with PolysemanticityPenalty(net, ["1", "3"]) as reg:  # labels by keyword, as fit() passes them
        net(x)
        assert reg.loss(labels=y).item() == pytest.approx(manual.item(), rel=1e-5)
        with pytest.raises(TypeError):
            reg.loss(y)  # one signature: labels only by keyword
    assert not hasattr(reg, "set_labels")
    assert torch.allclose(logits, net(x))  # the penalty never edits activations


def test_hooked_penalty_training_lowers_it() -> None:
    net = mlp(1)
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 3
    with PolysemanticityPenalty(net, "3", alpha=1.0) as reg:
        net(x)
        start = reg.loss(labels=y).item()
        for _ in range(40):  # sign-gradient descent on the layers before the site
            net.zero_grad()
            net(x)
            reg.loss(labels=y).backward()
            with torch.no_grad():
                for p in net[:4].parameters():
                    p -= 0.04 * p.grad.sign()
        net(x)
        end = reg.loss(labels=y).item()
    assert end < 0.6 * start


def test_hooked_penalty_errors_and_lifecycle() -> None:
    net = mlp()
    user = net[1].register_forward_hook(lambda m, i, o: None)
    reg = PolysemanticityPenalty(net, "1")
    assert n_hooks(net) == 1  # building attaches nothing
    with pytest.raises(ConfigError, match="forward pass"):
        reg.loss(labels=[0, 1])
    with pytest.raises(ConfigError, match="labels"):
        with reg:
            net(torch.randn(2, 5))
            reg.loss()
    assert n_hooks(net) == 1 and not reg.attached
    with pytest.raises(RuntimeError, match="boom"):
        with reg:
            assert n_hooks(net) == 2
            raise RuntimeError("boom")
    assert n_hooks(net) == 1
    with pytest.raises(SiteNotFoundError):
        PolysemanticityPenalty(net, ["1", "nope"])
    assert n_hooks(net) == 1
    user.remove()
    assert n_hooks(net) == 0
    with pytest.raises(ConfigError):
        PolysemanticityPenalty(net, "1", mode="soft-ish")  # type: ignore[arg-type]


def test_hooked_penalty_attach_detach_clears_state() -> None:
    net = mlp()
    reg = PolysemanticityPenalty(net, "1").attach()
    reg.attach()  # idempotent
    assert n_hooks(net) == 1
    net(torch.randn(3, 5))
    assert reg.loss(labels=[0, 1, 2]).item() >= 0
    reg.detach()
    reg.detach()
    assert n_hooks(net) == 0
    with pytest.raises(ConfigError):
        reg.loss(labels=[0, 1, 2])  # the activations (and their graph) were dropped


# ----------------------------------------------------------------------- ActivationL1


def test_activation_l1_hand_computed() -> None:
    a = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    b = torch.tensor([[3.0], [-1.0]])
    # sum |a| = 3.5, sum |b| = 4; mean over batch of 2: 3.75; lam 2 -> 7.5
    assert activation_l1([a, b], lam=2.0).item() == pytest.approx(7.5)
    assert activation_l1([a, b], lam=2.0, reduction="sum").item() == pytest.approx(15.0)
    with pytest.raises(ConfigError):
        activation_l1(a, reduction="max")  # type: ignore[arg-type]


def test_activation_l1_hooked_and_gradcheck() -> None:
    net = mlp()
    x = torch.randn(4, 5)
    with ActivationL1(net, ["0", "2"], lam=0.1) as reg:
        net(x)
        got = reg.loss()
    h0 = net[0](x)
    h2 = net[2](net[1](h0))
    expected = 0.1 * (h0.abs().sum() + h2.abs().sum()) / 4
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert n_hooks(net) == 0
    t = torch.randn(3, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: activation_l1(v, lam=0.3), (t,))


# ----------------------------------------------------------------------------- MaskL0


def test_mask_l0_hand_computed() -> None:
    s1 = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    s2 = torch.tensor([[-math.log(3.0)]])  # sigmoid: 0.25
    assert MaskL0([s1, s2], lam=2.0).loss().item() == pytest.approx(2 * 1.5)
    # temperature 2: sigmoid(0)=0.5, sigmoid(2 log 3)=0.9, sigmoid(-2 log 3)=0.1
    assert MaskL0({"a": s1, "b": s2}, temperature=2.0).loss().item() == pytest.approx(1.5)


def test_soft_mask_l0_weights_count_a_tensor_several_times() -> None:
    from polysdk.regularize import soft_mask_l0

    s1 = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    s2 = torch.tensor([[-math.log(3.0)]])  # sigmoid: 0.25; a kernel logit covering 9 weights
    got = soft_mask_l0([s1, s2], lam=0.5, weights=[1.0, 9.0])
    assert got.item() == pytest.approx(0.5 * (1.25 + 9 * 0.25))
    with pytest.raises(ConfigError, match="2 logit tensors but 1 weights"):
        soft_mask_l0([s1, s2], weights=[1.0])


def test_mask_l0_reads_objects_and_live_temperature() -> None:
    class Masker:
        def __init__(self) -> None:
            self.temperature = 1.0
            self.logits = [torch.zeros(4)]

        def mask_logits(self) -> list[torch.Tensor]:
            return self.logits

    m = Masker()
    l0 = MaskL0(m, lam=1.0)
    assert l0.loss().item() == pytest.approx(2.0)
    m.logits.append(torch.full((2,), 10.0))
    m.temperature = 0.1  # sigmoid(1) for the new ones
    assert l0.loss().item() == pytest.approx(2.0 + 2 / (1 + math.exp(-1.0)))
    l0.temperature = 1000.0  # an explicit value wins
    assert l0.loss().item() == pytest.approx(2.0 + 2.0)
    with pytest.raises(ConfigError, match="mask-logit"):
        MaskL0(["not a tensor"]).loss()
    with MaskL0(torch.zeros(2)) as reg:  # a context manager like every component
        assert reg.loss().item() == pytest.approx(1.0)


def test_mask_l0_gradcheck() -> None:
    s = torch.randn(5, dtype=torch.float64).requires_grad_()
    t = torch.randn(2, 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: MaskL0([a, b], lam=0.7, temperature=3.0).loss(), (s, t)
    )
