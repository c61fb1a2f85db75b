"""Interventions and regularizers on a TransformerLens 4 bridge and an nnsight wrapper,
against references written with raw hooks on the same hook points."""

from __future__ import annotations

import nnsight
import pytest
import torch
from torch import nn

from polysdk.intervene import Ablate, Compose, Patch, Steer
from polysdk.probe import Probe
from polysdk.regularize import PolysemanticityPenalty, polysemanticity_penalty_naive


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def raw_hook(module: nn.Module, fn):
    """The reference: a hand-written forward hook replacing the output with fn(output)."""
    return module.register_forward_hook(lambda m, i, o: fn(o))


SITE = "blocks.0.mlp.hook_post"


def baseline(model: nn.Module, tokens: torch.Tensor) -> int:
    """Hook count after a warm-up pass (the bridge adds its own pre-hooks on the first)."""
    with torch.no_grad():
        model(tokens)
    return n_hooks(model)


# ------------------------------------------------------------------ TransformerLens 4


def test_tl_zero_ablation_matches_raw_hook(tl_model, tl_tokens) -> None:
    hp = tl_model.hook_dict[SITE]
    before = baseline(tl_model, tl_tokens)
    with torch.no_grad():
        with Ablate(tl_model, SITE, units=[1, 5]):
            assert n_hooks(tl_model) == before + 1
            got = tl_model(tl_tokens)
        assert n_hooks(tl_model) == before

        def zero(o):
            o = o.clone()
            o[..., [1, 5]] = 0.0
            return o

        handle = raw_hook(hp, zero)
        try:
            expected = tl_model(tl_tokens)
        finally:
            handle.remove()
        clean = tl_model(tl_tokens)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, clean, atol=1e-5)


def test_tl_patch_and_steer_match_raw_hooks(tl_model, tl_tokens) -> None:
    site = "blocks.1.mlp.hook_post"
    hp = tl_model.hook_dict[site]
    resid = tl_model.hook_dict["blocks.0.hook_out"]
    source = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(9))
    direction = torch.linspace(-1, 1, 16)
    before = baseline(tl_model, tl_tokens)
    with torch.no_grad():
        with Compose(Patch(tl_model, site, input=source, units=[0, 2, 4]),
                     Steer(tl_model, "blocks.0.hook_out", direction, scale=0.7)):
            got = tl_model(tl_tokens)
        # reference: capture the source run by hand, then patch and steer by hand
        cache = {}
        h = raw_hook(hp, lambda o: cache.setdefault("src", o.clone()))
        tl_model(source)
        h.remove()

        def patch(o):
            o = o.clone()
            o[..., [0, 2, 4]] = cache["src"][..., [0, 2, 4]]
            return o

        handles = [raw_hook(hp, patch), raw_hook(resid, lambda o: o + 0.7 * direction)]
        try:
            expected = tl_model(tl_tokens)
        finally:
            for handle in handles:
                handle.remove()
    assert torch.allclose(got, expected, atol=1e-5)
    assert n_hooks(tl_model) == before


def test_tl_mean_ablation_from_probe_recording(tl_model, tl_tokens) -> None:
    batches = [torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    acts = Probe(tl_model, SITE).run(batches, progress=False)
    data = acts[SITE]
    assert data.dims == ("sample", "position", "unit")
    mean = torch.as_tensor(data.values.mean(axis=(0, 1)))  # one value per unit
    with torch.no_grad():
        with Ablate(tl_model, SITE, units=[3], method="mean", source=acts, mean_over=("sample", "position")):
            got = tl_model(tl_tokens)

        def fill(o):
            o = o.clone()
            o[..., 3] = mean[3]
            return o

        handle = raw_hook(tl_model.hook_dict[SITE], fill)
        try:
            expected = tl_model(tl_tokens)
        finally:
            handle.remove()
    assert torch.allclose(got, expected, atol=1e-5)


def test_tl_penalty_on_hook_points(tl_model, tl_tokens) -> None:
    labels = torch.tensor([0, 1, 1])
    sites = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    before = baseline(tl_model, tl_tokens)
    with PolysemanticityPenalty(tl_model, "blocks.*.mlp.hook_post") as reg:
        assert reg.site_names == sites
        tl_model(tl_tokens)
        loss = reg.loss(labels=labels)
    cache = {}
    handles = [raw_hook(tl_model.hook_dict[s], lambda o, s=s: cache.setdefault(s, o)) for s in sites]
    try:
        tl_model(tl_tokens)
    finally:
        for handle in handles:
            handle.remove()
    expected = polysemanticity_penalty_naive([cache[s] for s in sites], labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in tl_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    tl_model.zero_grad(set_to_none=True)
    assert n_hooks(tl_model) == before


# --------------------------------------------------------------------------- nnsight


@pytest.fixture()
def wrapped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    return net, nnsight.NNsight(net)


def test_nnsight_ablation_plain_call_and_trace(wrapped) -> None:
    net, model = wrapped
    x = torch.randn(3, 4)
    h = net[1](net[0](x)).clone()
    h[:, [0, 3]] = 0.0
    expected = net[2](h)
    with Ablate(model, "1", units=[0, 3]):
        plain = model(x)
        with model.trace(x):
            traced = model.output.save()
    assert torch.allclose(plain, expected) and torch.allclose(traced, expected)
    assert n_hooks(net) == 0


def test_nnsight_patch_and_penalty(wrapped) -> None:
    net, model = wrapped
    clean, corrupt = torch.randn(2, 4), torch.randn(2, 4)
    with Patch(model, "1", input=clean):
        assert torch.allclose(model(corrupt), net(clean))
    y = torch.tensor([0, 1])
    with PolysemanticityPenalty(model, "1") as reg:
        model(clean)
        loss = reg.loss(labels=y)
    assert loss.item() == pytest.approx(polysemanticity_penalty_naive(net[1](net[0](clean)), y).item(), rel=1e-6)
    assert n_hooks(net) == 0
