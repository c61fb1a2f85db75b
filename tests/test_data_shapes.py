"""The generated shapes set: labels follow the looks, merges are a config value, every
factor is kept, the same seed gives the same images."""

from __future__ import annotations

import numpy as np
import pytest

from polysdk.data.shapes import (COLOURS, class_groups, factor_codes, make_shapes,
                                 parse_look, render)
from polysdk.errors import ConfigError

LOOKS = ("red-plain-disc", "blue-stripes-square", "green-dots-triangle", "yellow-plain-cross")


def test_labels_follow_the_looks_and_merges() -> None:
    d = make_shapes(30, size=32, looks=LOOKS, merge=["0+2"], seed=3)
    assert d.classes == [(0, 2), (1,), (3,)]
    assert d.merged_classes == [0]
    assert d.class_names[0] == "red-plain-disc | green-dots-triangle"
    assert d.images.shape == (90, 32, 32, 3) and d.images.dtype == np.uint8
    assert np.bincount(d.labels).tolist() == [30, 30, 30]
    look_to_class = {lk: c for c, g in enumerate(d.classes) for lk in g}
    assert all(look_to_class[int(lk)] == c for lk, c in zip(d.factors["look"], d.labels))
    # both looks of the merged class occur; its factors are the looks' own
    looks0 = set(d.factors["look"][d.labels == 0].tolist())
    assert looks0 == {0, 2}
    for i in np.flatnonzero(d.factors["look"] == 2):
        assert (d.factors["colour"][i], d.factors["texture"][i], d.factors["shape"][i]) == \
            ("green", "dots", "triangle")
    assert set(d.factors) >= {"background", "cx", "cy", "radius"}
    x = d.tensor()
    assert tuple(x.shape) == (90, 3, 32, 32)
    assert np.allclose(x.mean((0, 2, 3)).numpy(), 0, atol=1e-4)   # 0 = the mean colour


def test_same_seed_same_images_other_seed_other() -> None:
    a = make_shapes(5, size=24, looks=LOOKS, merge=[], seed=1)
    b = make_shapes(5, size=24, looks=LOOKS, merge=[], seed=1)
    c = make_shapes(5, size=24, looks=LOOKS, merge=[], seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_the_object_has_its_colour() -> None:
    rng = np.random.default_rng(0)
    img = render("blue-plain-square", "dark", 0.5, 0.5, 0.3, 48, rng)
    centre = img[20:28, 20:28].reshape(-1, 3).mean(0)
    assert np.abs(centre - np.array(COLOURS["blue"])).max() < 20
    striped = render("blue-stripes-square", "dark", 0.5, 0.5, 0.3, 48, rng)
    assert striped[16:32, 16:32, 2].std() > img[16:32, 16:32, 2].std() + 20


def test_merges_chain_and_bad_values_say_what_to_do() -> None:
    assert class_groups(5, ["0+1", "1+3"]) == [(0, 1, 3), (2,), (4,)]
    with pytest.raises(ConfigError, match="colour-texture-shape"):
        parse_look("red-disc")
    with pytest.raises(ConfigError, match="two or more distinct looks in 0..3"):
        class_groups(4, ["0+7"])
    with pytest.raises(ConfigError, match="is not 'i\\+j'"):
        class_groups(4, ["a+b"])


def test_factor_codes_bin_continuous_factors() -> None:
    f = {"radius": np.linspace(0, 1, 9), "shape": np.array(["disc", "cross"] * 4 + ["disc"])}
    assert sorted(set(factor_codes(f, "radius").tolist())) == [0, 1, 2]
    assert factor_codes(f, "shape").tolist()[:2] == [1, 0]
