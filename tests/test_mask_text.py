"""Maskers on text: dict batches of model keyword arguments, dynamic padding, and
targets that never count a padded position.

The model is a tiny Hugging Face BERT with random weights (built here, float64, eager
attention). Each masker's result on dynamically padded batches, padded on the right
and on the left, is checked against an independent reference computed text by text
without any padding (plain forward hooks and ``torch.autograd``).
"""

from __future__ import annotations

import math

import pytest
import torch

from polysdk.errors import ConfigError
from polysdk.mask import SNIP, ActGrad, ContinuousSparsification, feature_preservation, select_parameters

import transformers

SITE, UNIT = "encoder.layer.1.intermediate", 5
TEXTS = [[5, 9, 11], [7, 3, 21, 8, 30, 2, 14], [4, 4, 17, 23, 6], [12, 40, 3, 3, 9, 1, 28, 19, 2],
         [33, 8], [6, 15, 22, 41, 10, 2]]
LABELS = [1, 0, 1, 0, 0, 1]
GROUPS = [[0, 1, 2], [3, 4], [5]]  # texts per batch: each batch padded to its own longest


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg).double().eval()


def pad(texts: list[list[int]], side: str, labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """One batch, padded (id 0) to its longest text, with position ids that count real
    tokens (what a left-padded BERT needs to see the same positions)."""
    longest = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), longest, dtype=torch.long)
    mask = torch.zeros(len(texts), longest, dtype=torch.long)
    for i, t in enumerate(texts):
        where = slice(0, len(t)) if side == "right" else slice(longest - len(t), longest)
        ids[i, where] = torch.tensor(t)
        mask[i, where] = 1
    batch = {"input_ids": ids, "attention_mask": mask,
             "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    if labels is not None:
        batch["labels"] = torch.tensor(labels)
    return batch


def batches(side: str, with_labels: bool = False) -> list[dict[str, torch.Tensor]]:
    return [pad([TEXTS[i] for i in g], side, [LABELS[i] for i in g] if with_labels else None) for g in GROUPS]


def one_by_one(with_labels: bool = False) -> list:
    """Text by text, no padding and no attention mask."""
    if with_labels:
        return [(torch.tensor([t]), torch.tensor([y])) for t, y in zip(TEXTS, LABELS)]
    return [torch.tensor([t]) for t in TEXTS]


def site_values(model: torch.nn.Module, text: list[int], masks: dict | None = None) -> dict[str, torch.Tensor]:
    """Inputs and outputs of every Linear and the target of one unpadded text (plain hooks)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or name == SITE:
            def hook(m, args, out, name=name):
                seen[name + ":in"] = args[0]
                seen[name] = out
            handles.append(mod.register_forward_hook(hook))
    try:
        if masks is None:
            model(input_ids=torch.tensor([text]))
        else:
            from polysdk.mask import masked_call
            masked_call(model, masks, input_ids=torch.tensor([text]))
    finally:
        for h in handles:
            h.remove()
    return seen


def reduce_text(values: torch.Tensor, position, reduce: str) -> torch.Tensor:
    """One text's target from its unit's values at its real positions ``[L]``."""
    if position == "mean":
        return values.mean()
    if position == -1:
        return values[-1]
    return values.abs().sum() if reduce == "sum_abs" else values.max()


def reference_snip(model, params: str, position, reduce: str) -> dict[str, torch.Tensor]:
    weights = select_parameters(model, params, kinds=("weight",), min_ndim=2)
    total = sum(reduce_text(site_values(model, t)[SITE][0, :, UNIT], position, reduce) for t in TEXTS)
    grads = torch.autograd.grad(total, list(weights.values()), allow_unused=True)
    raw = {n: (w * g).abs().detach() for (n, w), g in zip(weights.items(), grads) if g is not None}
    raw = {n: s for n, s in raw.items() if bool((s > 0).any())}
    norm = sum(float(s.sum()) for s in raw.values())
    return {n: s / norm for n, s in raw.items()}


def assert_scores_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(("position", "reduce"), [("mean", "sum_abs"), (-1, "sum_abs"), (None, "sum_abs"),
                                                  (None, "max")])
def test_snip_on_padded_text_equals_text_by_text(bert, position, reduce):
    want = reference_snip(bert, "encoder.layer.*", position, reduce)
    kw = dict(unit=UNIT, position=position, reduce=reduce, params="encoder.layer.*")
    right = SNIP(bert, SITE, **kw).fit(batches("right")).scores_
    left = SNIP(bert, SITE, **kw).fit(batches("left")).scores_
    alone = SNIP(bert, SITE, **kw).fit(one_by_one()).scores_
    assert_scores_equal(right, want)
    assert_scores_equal(left, want)
    assert_scores_equal(alone, want)


def test_snip_on_one_dict_of_all_texts_split_by_batch_size(bert):
    """All texts at once (one dict padded to the longest text), split into batches."""
    want = reference_snip(bert, "encoder.layer.0.*", "mean", "sum_abs")
    whole = pad(TEXTS, "right", LABELS)
    got = SNIP(bert, SITE, UNIT, position="mean", params="encoder.layer.0.*", batch_size=4).fit(whole)
    assert_scores_equal(got.scores_, want)


def test_the_padding_really_matters(bert):
    """The padded batches' unmasked mean differs from the real-token mean (so the
    tests above would fail if padding counted)."""
    batch = batches("right")[0]
    from polysdk.mask import SiteReader

    with SiteReader(bert, SITE) as reader:
        act = reader.run(lambda: bert(**batch))[:, :, UNIT]
    real = torch.stack([site_values(bert, TEXTS[i])[SITE][0, :, UNIT].mean() for i in GROUPS[0]])
    assert not torch.allclose(act.mean(1), real, rtol=1e-3)


LINEARS = ["encoder.layer.0.intermediate.dense", "encoder.layer.1.attention.self.value",
           "encoder.layer.1.intermediate.dense"]


def reference_actgrad(model, structure: str) -> dict[str, torch.Tensor]:
    """``sum_texts mean_positions |x_pi w_oi g_po|`` (kernel) or ``|z_po g_po|`` (filter)."""
    raw: dict[str, torch.Tensor] = {}
    for t in TEXTS:
        seen = site_values(model, t)
        target = seen[SITE][0, :, UNIT].mean()
        grads = torch.autograd.grad(target, [seen[n] for n in LINEARS])
        for n, g in zip(LINEARS, grads):
            x, z, g = seen[n + ":in"][0], seen[n][0], g[0]  # [L, in], [L, out], [L, out]
            w = dict(model.named_modules())[n].weight
            if structure == "kernel":
                s = (x[:, None, :] * w[None] * g[:, :, None]).abs().mean(0)
            else:
                s = (z * g).abs().mean(0)
            raw[n + ".weight"] = raw.get(n + ".weight", 0) + s.detach()
    norm = sum(float(s.sum()) for s in raw.values())
    return {n: s / norm for n, s in raw.items()}


@pytest.mark.parametrize("structure", ["kernel", "filter"])
def test_actgrad_on_padded_text_equals_text_by_text(bert, structure):
    want = reference_actgrad(bert, structure)
    kw = dict(unit=UNIT, position="mean", params=LINEARS, structure=structure)
    for data in (batches("right"), batches("left"), one_by_one()):
        assert_scores_equal(ActGrad(bert, SITE, **kw).fit(data).scores_, want)


def per_text_unit(model, masks=None) -> list[torch.Tensor]:
    return [site_values(model, t, masks)[SITE][0, :, UNIT].detach() for t in TEXTS]


def test_continuous_sparsification_on_padded_text(bert):
    kw = dict(unit=UNIT, position="mean", params="encoder.layer.*", epochs=3, lr=0.5, lam=1e-3,
              s0=0.5, batch_size=3, progress=False)
    right = ContinuousSparsification(bert, SITE, **kw).fit(batches("right", with_labels=True))
    left = ContinuousSparsification(bert, SITE, **kw).fit(batches("left", with_labels=True))
    for n in right.logits_:
        torch.testing.assert_close(right.logits_[n], left.logits_[n], rtol=1e-9, atol=1e-9)
    assert right.unused_ == left.unused_ and any("layer.1.output" in n for n in right.unused_)
    # independent reference: the trained binary mask, text by text without padding
    logits = torch.stack([v.mean() for v in per_text_unit(bert, right.masks_)])
    y = torch.tensor(LABELS, dtype=torch.float64)
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
    assert right.objective_train_ == pytest.approx(bce, rel=1e-6)
    assert right.accuracy_train_ == pytest.approx(float(((logits > 0).double() == y).double().mean()))
    torch.testing.assert_close(right.activations(batches("left")), logits, check_dtype=False)
    assert right.score(one_by_one(with_labels=True)) == pytest.approx(bce, rel=1e-6)
    # the unmasked unit on its real tokens, flattened in text order (positions kept)
    full = ContinuousSparsification(bert, SITE, UNIT, params="encoder.layer.*", objective="preserve",
                                    epochs=1, lr=0.0, s0=1.0, progress=False).fit(batches("right"))
    torch.testing.assert_close(full.activations(batches("left"), masked=False), torch.cat(per_text_unit(bert)))


def test_preserve_with_positions_kept_skips_padding(bert):
    cs = ContinuousSparsification(bert, SITE, UNIT, position=None, params="encoder.layer.0.*",
                                  objective="preserve", epochs=2, lr=0.5, lam=1e-3, s0=0.2,
                                  progress=False).fit(batches("left"), x_val=batches("right"))
    circuit = torch.cat(per_text_unit(bert, cs.masks_))
    full = torch.cat(per_text_unit(bert))
    want = float(((circuit - full) ** 2).mean() / ((full**2).mean() + 1e-12))
    assert cs.objective_train_ == pytest.approx(want, rel=1e-9)
    assert cs.objective_val_ == pytest.approx(want, rel=1e-9)


def test_an_objective_that_cannot_skip_padding_is_refused(bert):
    def mse(act, labels, reference):
        return (act - reference).pow(2).mean()

    mse.needs_reference = True
    cs = ContinuousSparsification(bert, SITE, UNIT, params="encoder.layer.0.*", objective=mse, epochs=1,
                                  progress=False)
    with pytest.raises(ConfigError, match="padded positions"):
        cs.fit(batches("right"))
    with pytest.raises(ConfigError, match="each batch its labels"):
        ContinuousSparsification(bert, SITE, UNIT, position="mean", epochs=1, progress=False).fit(
            batches("right"), LABELS)


def test_feature_preservation_on_padded_text(bert):
    snip = SNIP(bert, SITE, UNIT, position="mean", params="encoder.layer.*").fit(batches("right"))
    masks = snip.masks_for(0.3)
    circuit = torch.cat(per_text_unit(bert, masks))
    full = torch.cat(per_text_unit(bert))
    r = float(torch.corrcoef(torch.stack([circuit, full]))[0, 1])
    df = float((circuit - full).abs().mean() / full.abs().mean())
    for data in (batches("right"), batches("left"), one_by_one()):
        got = feature_preservation(bert, SITE, UNIT, data, masks)
        assert got["pearson_r"] == pytest.approx(r, rel=1e-9)
        assert got["dF_norm"] == pytest.approx(df, rel=1e-9)
    mean = feature_preservation(bert, SITE, UNIT, batches("left"), masks, position="mean")
    c = torch.stack([v.mean() for v in per_text_unit(bert, masks)])
    a = torch.stack([v.mean() for v in per_text_unit(bert)])
    assert mean["dF_norm"] == pytest.approx(float((c - a).abs().mean() / a.abs().mean()), rel=1e-4)
    assert math.isfinite(mean["pearson_r"])
