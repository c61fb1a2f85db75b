"""A generated image set with ground truth: shapes x textures x colours on backgrounds.

    from polysdk.data.shapes import make_shapes, DEFAULT_LOOKS
    ds = make_shapes(n_per_class=200, size=64, merge=["0+1", "3+6"], seed=0)
    ds.images            # uint8 (sample, y, x, rgb)
    ds.labels            # class per image; class 0 = looks 0 and 1 (a merged concept)
    ds.factors["look"]   # every generating factor per image (also shape, texture, ...)
    ds.tensor()          # float32 (sample, 3, y, x), normalised by ``mean``/``std``

A *look* is one ``colour-texture-shape`` triple ("red-plain-disc"). Each class is one
look, except the *merged* classes given by ``merge`` ("0+1": looks 0 and 1 share one
label): one label for two unrelated looks, the known way to make a network put two
meanings on one channel. Every image draws a class uniformly, then one of its looks
uniformly, a background (``dark``, ``light``, ``noise``, ``gradient``), a scale
(object radius ``0.22-0.36 x size``) and a centre jittered by up to ``0.14 x size``;
all of them are kept per image (``factors``), so clusters can be scored against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polysdk.errors import ConfigError

__all__ = ["COLOURS", "SHAPES", "TEXTURES", "BACKGROUNDS", "DEFAULT_LOOKS", "DEFAULT_MERGE",
           "ShapesData", "class_groups", "make_shapes", "render"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230),
    "yellow": (230, 205, 30), "purple": (150, 60, 200), "cyan": (40, 200, 210)}
SHAPES = ("disc", "square", "triangle", "cross")
TEXTURES = ("plain", "stripes", "dots", "checker")
BACKGROUNDS = ("dark", "light", "noise", "gradient")
#: the base concepts (one class each unless merged); colours and shapes recur across
#: looks, so neither alone tells the class
DEFAULT_LOOKS = ("red-plain-disc", "blue-stripes-square", "green-plain-square",
                 "yellow-dots-triangle", "blue-plain-disc", "red-checker-triangle",
                 "green-stripes-disc", "yellow-plain-cross")
#: looks 0+1 (red discs or striped blue squares) and 3+6 (dotted yellow triangles or
#: striped green discs) are merged concepts
DEFAULT_MERGE = ("0+1", "3+6")
FACTORS = ("look", "label", "colour", "texture", "shape", "background", "cx", "cy", "radius")


def parse_look(text: str) -> tuple[str, str, str]:
    """``"red-plain-disc"`` -> ``("red", "plain", "disc")`` (checked)."""
    parts = str(text).split("-")
    if len(parts) != 3 or parts[0] not in COLOURS or parts[1] not in TEXTURES \
            or parts[2] not in SHAPES:
        raise ConfigError(f"look {text!r} is not colour-texture-shape with colour in "
                          f"{list(COLOURS)}, texture in {list(TEXTURES)}, shape in "
                          f"{list(SHAPES)} (e.g. 'red-plain-disc').")
    return parts[0], parts[1], parts[2]


def class_groups(n_looks: int, merge: Sequence[str]) -> list[tuple[int, ...]]:
    """The looks of each class: every look alone except the ``"i+j"`` merges; classes
    are numbered by their smallest look.

    >>> class_groups(4, ["0+2"])
    [(0, 2), (1,), (3,)]
    """
    groups: dict[int, set[int]] = {i: {i} for i in range(n_looks)}
    owner = list(range(n_looks))
    for item in merge:
        try:
            idx = sorted({int(t) for t in str(item).split("+")})
        except ValueError:
            raise ConfigError(f"merge item {item!r} is not 'i+j' (look indices joined by '+', "
                              "e.g. '0+1').") from None
        if len(idx) < 2 or not all(0 <= i < n_looks for i in idx):
            raise ConfigError(f"merge item {item!r} must join two or more distinct looks in "
                              f"0..{n_looks - 1}.")
        target = owner[idx[0]]
        for i in idx:
            src = owner[i]
            if src == target:
                continue
            groups[target] |= groups.pop(src)
            for j in groups[target]:
                owner[j] = target
    return sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0])


@dataclass
class ShapesData:
    """Images, labels and every image's generating factors (see the module docstring)."""

    images: np.ndarray                     # uint8 (sample, y, x, 3)
    labels: np.ndarray                     # int64 class per image
    factors: dict[str, np.ndarray]         # per image: look, colour, texture, ...
    looks: tuple[str, ...]
    classes: list[tuple[int, ...]]         # looks of each class
    mean: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return [" | ".join(self.looks[i] for i in g) for g in self.classes]

    @property
    def merged_classes(self) -> list[int]:
        """Classes with two or more looks."""
        return [c for c, g in enumerate(self.classes) if len(g) > 1]

    def tensor(self, index: Any = None) -> Any:
        """Float32 ``(sample, 3, y, x)`` normalised by ``mean``/``std`` (0 = mean colour)."""
        import torch

        imgs = self.images if index is None else self.images[index]
        x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float() / 255.0
        m = torch.as_tensor(self.mean).view(1, 3, 1, 1)
        s = torch.as_tensor(self.std).view(1, 3, 1, 1)
        return (x - m) / s

    def describe(self, i: int) -> str:
        """One image's factors, as shown under it in a montage."""
        f = self.factors
        return (f"{f['colour'][i]} {f['texture'][i]} {f['shape'][i]}\n"
                f"bg {f['background'][i]}, r {float(f['radius'][i]):.2f}")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")   # yy, xx in [0, 1]


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    if shape == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if shape == "triangle":   # apex up, base at +0.8 r
        top, base = -r, 0.8 * r
        frac = (dy - top) / (base - top)
        return (dy >= top) & (dy <= base) & (np.abs(dx) <= frac * r)
    arm = 0.32 * r   # cross
    inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return inside & ((np.abs(dy) <= arm) | (np.abs(dx) <= arm))


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """1 where the object's colour shows, 0 where its dark variant does."""
    p = max(4, size // 10) / size   # period in image units
    if texture == "plain":
        return np.ones_like(yy)
    if texture == "stripes":
        return (np.floor((yy + xx) / p) % 2 == 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(yy / p) + np.floor(xx / p)) % 2 == 0).astype(np.float32)
    fy, fx = (yy / p) % 1.0 - 0.5, (xx / p) % 1.0 - 0.5   # dots
    return (fy ** 2 + fx ** 2 > 0.09).astype(np.float32)


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "dark":
        return np.full((size, size, 3), rng.uniform(0, 70), np.float32) + \
            rng.uniform(-10, 10, 3).astype(np.float32)
    if kind == "light":
        return np.full((size, size, 3), rng.uniform(170, 245), np.float32) + \
            rng.uniform(-10, 10, 3).astype(np.float32)
    if kind == "noise":
        base = rng.uniform(60, 190)
        return base + rng.normal(0, 45, (size, size, 1)).astype(np.float32).repeat(3, 2)
    yy, xx = _grid(size)   # gradient between two greys in a random direction
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * (yy - 0.5) + np.sin(a) * (xx - 0.5) + 0.71) / 1.42
    lo, hi = sorted(rng.uniform(20, 235, 2))
    return (lo + (hi - lo) * t)[..., None].repeat(3, 2).astype(np.float32)


def render(look: str, background: str, cy: float, cx: float, radius: float, size: int,
           rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image of ``look`` (centre and radius in image
    units, 0..1) on ``background``."""
    colour, texture, shape = parse_look(look)
    yy, xx = _grid(size)
    img = _background(background, size, rng)
    inside = _shape_mask(shape, yy - cy, xx - cx, np.float32(radius))
    tex = _texture(texture, yy - cy, xx - cx, size)[..., None]
    rgb = np.asarray(COLOURS[colour], np.float32)
    obj = tex * rgb + (1 - tex) * 0.3 * rgb
    img = np.where(inside[..., None], obj, img)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shapes(n_per_class: int = 200, size: int = 64, *,
                looks: Sequence[str] = DEFAULT_LOOKS, merge: Sequence[str] = DEFAULT_MERGE,
                seed: int = 0, stats: tuple[np.ndarray, np.ndarray] | None = None
                ) -> ShapesData:
    """``n_per_class`` images per class (see the module docstring).

    ``stats``: the ``(mean, std)`` per channel to normalise with (e.g. the training
    set's, for a test set); default: this set's own.

    >>> d = make_shapes(4, size=32, looks=["red-plain-disc", "blue-dots-square"],
    ...                 merge=[], seed=1)
    >>> d.images.shape, d.labels.tolist().count(1), sorted(set(d.factors["shape"].tolist()))
    ((8, 32, 32, 3), 4, ['disc', 'square'])
    """
    looks = tuple(str(x) for x in looks)
    for look in looks:
        parse_look(look)
    if len(looks) < 2:
        raise ConfigError(f"need at least two looks, got {list(looks)}.")
    if int(n_per_class) < 1 or int(size) < 16:
        raise ConfigError(f"need n_per_class >= 1 and size >= 16, got n_per_class="
                          f"{n_per_class}, size={size}.")
    classes = class_groups(len(looks), merge)
    rng = np.random.default_rng(seed)
    n = int(n_per_class) * len(classes)
    labels = rng.permutation(np.repeat(np.arange(len(classes)), int(n_per_class)))
    look_idx = np.array([rng.choice(classes[c]) for c in labels], dtype=np.int64)
    bg = rng.integers(0, len(BACKGROUNDS), n)
    radius = rng.uniform(0.22, 0.36, n)
    cy = 0.5 + rng.uniform(-0.14, 0.14, n)
    cx = 0.5 + rng.uniform(-0.14, 0.14, n)
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        images[i] = render(looks[look_idx[i]], BACKGROUNDS[bg[i]], cy[i], cx[i], radius[i],
                           size, rng)
    parts = [parse_look(looks[j]) for j in look_idx]
    factors: dict[str, np.ndarray] = {
        "look": look_idx, "label": labels.astype(np.int64),
        "colour": np.array([p[0] for p in parts]), "texture": np.array([p[1] for p in parts]),
        "shape": np.array([p[2] for p in parts]),
        "background": np.array([BACKGROUNDS[b] for b in bg]),
        "cx": cx.astype(np.float32), "cy": cy.astype(np.float32),
        "radius": radius.astype(np.float32)}
    if stats is None:
        flat = images.reshape(-1, 3).astype(np.float64) / 255.0
        mean, std = flat.mean(0), flat.std(0) + 1e-6
    else:
        mean, std = stats
    return ShapesData(images, labels.astype(np.int64), factors, looks, classes,
                      np.asarray(mean, np.float32), np.asarray(std, np.float32))


def factor_codes(factors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Integer codes of one factor (categorical factors by value; the continuous ``cx``,
    ``cy``, ``radius`` in three equal-count bins)."""
    v = np.asarray(factors[name])
    if v.dtype.kind == "f":
        edges = np.quantile(v, [1 / 3, 2 / 3])
        return np.searchsorted(edges, v).astype(np.int64)
    return np.unique(v, return_inverse=True)[1].astype(np.int64)
