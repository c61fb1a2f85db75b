"""polysdk.dims: the one owner of named axes. Property tests against per-text loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from polysdk import dims as D
from polysdk.errors import ConfigError, SiteError

NAMES = ("sample", "position", "unit")


@st.composite
def padded_batches(draw):
    n = draw(st.integers(1, 5))
    length = draw(st.integers(1, 7))
    lengths = draw(st.lists(st.integers(1, length), min_size=n, max_size=n))
    left = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, length, 3, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, length, dtype=torch.long)
    for i, k in enumerate(lengths):
        if left:
            mask[i, length - k:] = 1
        else:
            mask[i, :k] = 1
    return x, mask


@settings(max_examples=60, deadline=None)
@given(padded_batches())
def test_masked_selections_equal_a_loop_over_each_texts_real_tokens(batch):
    x, mask = batch
    real = [x[i][mask[i].bool()] for i in range(x.shape[0])]
    for spec, ref in [("mean", [r.mean(0) for r in real]), ("max", [r.amax(0) for r in real]),
                      ("sum", [r.sum(0) for r in real]), (-1, [r[-1] for r in real]),
                      (0, [r[0] for r in real])]:
        out, names, _ = D.select(x, NAMES, spec, mask=mask)
        assert names == ("sample", "unit")
        torch.testing.assert_close(out, torch.stack(ref), rtol=1e-5, atol=1e-6)
    flat, names, coords = D.flatten_tokens(x, NAMES, mask)
    assert names == ("token", "unit")
    torch.testing.assert_close(flat, torch.cat(real))
    np.testing.assert_array_equal(coords["position"], np.concatenate([np.arange(len(r)) for r in real]))
    da = xr.DataArray(flat.numpy(), dims=names, coords={k: ("token", v) for k, v in coords.items()})
    for spec, ref in [("mean", [r.mean(0) for r in real]), ("max", [r.amax(0) for r in real]), (-1, [r[-1] for r in real])]:
        np.testing.assert_allclose(D.select_array(da, spec).values, torch.stack(ref).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(D.select_array(da.chunk({"token": 2}), spec).values,
                                   torch.stack(ref).numpy(), rtol=1e-5, atol=1e-6)
    padded = xr.DataArray(x.numpy(), dims=NAMES, coords={"attention_mask": (("sample", "position"), mask.numpy())})
    np.testing.assert_allclose(D.select_array(padded, "mean").values,
                               torch.stack([r.mean(0) for r in real]).numpy(), rtol=1e-5, atol=1e-6)


def test_spellings_and_errors():
    assert D.Selection.parse("center") == D.Selection.parse("centre") == D.Selection("centre")
    assert D.Selection.parse([0, -1]).index == [0, -1]
    with pytest.raises(ConfigError, match="not understood"):
        D.Selection.parse("median")
    with pytest.raises(ConfigError):
        D.Selection.parse(True)
    conv = torch.arange(2 * 3 * 5 * 5.0).reshape(2, 3, 5, 5)
    out, names, _ = D.select(conv, D.default_dims(4), "centre")
    assert names == ("sample", "unit") and torch.equal(out, conv[:, :, 2, 2])
    out, _, _ = D.select(conv, D.default_dims(4), {"y": 1, "x": -1})
    assert torch.equal(out, conv[:, :, 1, 4])
    with pytest.raises(SiteError, match="does not apply"):
        D.select(torch.ones(2, 3), D.default_dims(2), "centre")
    with pytest.raises(SiteError, match="real tokens"):
        D.select(torch.ones(2, 3, 1), NAMES, 2, mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
    with pytest.raises(SiteError, match="out of range"):
        D.select_unit(torch.ones(2, 3), D.default_dims(2), 5)
    assert D.unit_axis(D.default_dims(4)) == 1 and D.unit_axis(NAMES) == 2
    with pytest.raises(SiteError, match="'sample' first"):
        D.check_dims(("unit", "sample"), (2, 3), site="s")


def test_a_text_with_no_real_token_gives_nan_not_zero():
    x = torch.ones(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out, _, _ = D.select(x, NAMES, "mean", mask=mask)
    assert torch.isnan(out[1]).all() and torch.equal(out[0], torch.ones(2))
