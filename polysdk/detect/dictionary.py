"""``DictionaryFeatures``: a sparse autoencoder's dictionary says which neurons serve
several features (superposition as dictionary learning sees it).

A top-k sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders": exactly ``k`` active latents per input, no L1 shrinkage) is trained on
a site's activations, streaming the store chunk by chunk (a site larger than memory
works), with unit-norm decoder rows as in Bricken et al. 2023 ("Towards
Monosemanticity")::

    f = TopK(W_enc (x - b_dec) + b_enc)        x_hat = f W_dec + b_dec

A neuron *serves* feature ``j`` in proportion to the activation mass feature ``j``
writes into it: ``m_ij = E[f_j] * |W_dec[j, i]|``. Normalised over the features,
``p_ij = m_ij / sum_j m_ij`` is the neuron's spread of decoder mass. Its score is the
share of that mass *not* held by its top feature, ``1 - max_j p_ij`` (0 for a neuron
written by one feature; higher = more polysemantic, as every detector's score), and it
is polysemantic when at least ``min_features`` features each hold a share ``>= share``
of its mass. The result also gives the *effective number of features*,
``exp(H(p_i))`` (the Hill number of order 1, Hill 1973), which counts the small shares
too.

Why not SAELens: ``pip install sae-lens`` (6.54) requires ``transformer-lens<4`` and
would replace polysdk's TransformerLens 4; this autoencoder is ~100 lines and tested
against planted and toy-model ground truth (``tests/test_detect_dictionary.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk import dims
from polysdk._util import progress_bar
from polysdk.detect._constraints import POSITION
from polysdk.detect.base import Detector
from polysdk.errors import ConfigError, DetectorInputError
from polysdk.params import Interval, Options

__all__ = ["DictionaryFeatures", "TopKAutoencoder"]

_CHUNK = 4096


class TopKAutoencoder(torch.nn.Module):
    """A top-k sparse autoencoder with unit-norm decoder rows ``[features, units]``."""

    def __init__(self, n_units: int, n_features: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        dec = torch.randn(n_features, n_units, generator=generator, dtype=torch.float64).float()
        dec = dec / dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(dec)
        self.W_enc = torch.nn.Parameter(dec.t().clone())   # tied at init (Gao et al.)
        self.b_enc = torch.nn.Parameter(torch.zeros(n_features))
        self.b_dec = torch.nn.Parameter(torch.zeros(n_units))
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return f @ self.W_dec + self.b_dec, f

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


class DictionaryFeatures(Detector):
    """Neurons that serve several features of a top-k sparse autoencoder's dictionary.

    Parameters
    ----------
    n_features : int or None
        Dictionary size (default: 4 x the site's units).
    k : int or "auto"
        Active features per input (the top-k sparsity). ``"auto"`` (default) takes the
        sparsest of k = 1, 2, 4, 8, ... whose dictionary explains ``min_explained`` of
        the variance: a k above the data's true sparsity splits one feature into
        several co-active ones (feature splitting), which would make every neuron look
        polysemantic.
    min_explained : float
        Explained variance that ``k="auto"`` asks of the dictionary (0.9).
    epochs, batch_size, lr : training of the autoencoder (Adam), streaming over the
        site's chunks each epoch.
    share : float
        A feature counts as served by a neuron when it holds at least this share of
        the neuron's decoder mass.
    min_features : int
        Served features that make a neuron polysemantic.
    position : selection of the dims besides ``sample``/``unit`` (``"mean"`` over real
        tokens for text; see :mod:`polysdk.dims`).
    seed : int
        Seeds the initialisation and the batch order. The same seed gives the same
        dictionary at the same torch thread count; another thread count changes the
        floats of the training's sums, so a few verdicts near the thresholds can differ
        (MiniLM in the SoLU study: 7354 against 7385 of 9216 units flagged, 2 against
        1 thread).

    Attributes
    ----------
    result_ : xr.Dataset over ``unit`` (``score``, ``polysemantic``, ``n_served``,
        ``effective_features``) and ``feature`` (``decoder``, ``feature_mean``,
        ``feature_frequency``); attrs ``explained_variance`` and ``dead_fraction``.
    autoencoder_ : the trained :class:`TopKAutoencoder` (in the data's scale).

    Examples
    --------
    >>> from polysdk.data import make_planted_classes
    >>> pl = make_planted_classes(n_samples=3000, n_classes=8, units_per_class=4, n_poly=8, seed=0)
    >>> det = DictionaryFeatures(seed=0).fit(pl.activations)
    >>> bool((det.result_["polysemantic"].values == pl.polysemantic).all()), det.result_.attrs["k"]
    (True, 1)
    """

    registry_name = "dictionary_features"
    fitted_attributes = ("autoencoder_",)
    _constraints = {
        "n_features": Interval(1, None, integer=True, allow_none=True),
        "k": (Options("auto"), Interval(1, None, integer=True)),
        "epochs": Interval(1, None, integer=True),
        "batch_size": Interval(1, None, integer=True),
        "lr": Interval(0, None, closed="neither"),
        "share": Interval(0, 1, closed="right"),
        "min_features": Interval(1, None, integer=True),
        "min_explained": Interval(0, 1, closed="right"),
        "position": POSITION,
        "seed": Interval(None, None, integer=True),
    }

    def __init__(self, n_features: int | None = None, k: int | str = "auto", epochs: int = 30,
                 batch_size: int = 256, lr: float = 4e-3, share: float = 0.1,
                 min_features: int = 2, min_explained: float = 0.9, position: Any = "mean",
                 seed: int = 0) -> None:
        self.n_features = n_features
        self.k = k
        self.min_explained = min_explained
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.share = share
        self.min_features = min_features
        self.position = position
        self.seed = seed
        self._validate_params()

    def _check(self, n_units: int) -> int:
        """The dictionary size, and the one rule that depends on the data: k <= it."""
        n_features = self.n_features if self.n_features is not None else 4 * n_units
        if self.k != "auto" and self.k > n_features:
            raise ConfigError(f"DictionaryFeatures(k={self.k!r}): k must be 'auto' or an int "
                              f"in [1, n_features={n_features}]")
        return int(n_features)

    def _detect(self, activations: xr.DataArray, labels: Any = None) -> xr.Dataset:
        acts = dims.select_array(activations, self.position)
        n, n_units = acts.sizes["sample"], acts.sizes["unit"]
        n_features = self._check(n_units)
        if n < 2:
            raise DetectorInputError(f"{n} samples are too few to train a dictionary; record more")
        mean, scale = _moments(acts)
        mean = np.zeros_like(mean)  # not centred: features write activation, not deviation
        ks = [int(self.k)] if self.k != "auto" else [
            k for k in (2 ** i for i in range(20)) if k <= n_features]
        for k in ks:
            sae, feat_sum, fired, explained = self._train(acts, n_units, n_features, k, scale)
            if explained >= self.min_explained:
                break
        feature_mean = (feat_sum / n).numpy()
        decoder = sae.W_dec.detach().double().numpy()
        mass = feature_mean[:, None] * np.clip(decoder, 0.0, None)  # [feature, unit]
        col = mass.sum(0)
        p = np.divide(mass, col, out=np.zeros_like(mass), where=col > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
        effective = np.where(col > 0, np.exp(entropy), 0.0)
        n_served = (p >= self.share).sum(0)
        self.autoencoder_ = sae
        unit = acts["unit"].values if "unit" in acts.coords else np.arange(n_units)
        return xr.Dataset(
            {
                "score": ("unit", np.where(col > 0, 1.0 - p.max(0), 0.0)),
                "polysemantic": ("unit", n_served >= self.min_features),
                "n_served": ("unit", n_served.astype(np.int64)),
                "effective_features": ("unit", effective),
                "decoder": (("feature", "unit"), decoder),
                "feature_mean": ("feature", feature_mean),
                "feature_frequency": ("feature", (fired / n).numpy()),
            },
            coords={"unit": unit, "feature": np.arange(n_features)},
            attrs={"explained_variance": explained, "k": sae.k,
                   "dead_fraction": float((fired == 0).double().mean()), "data_scale": scale},
        )

    def _train(self, acts: xr.DataArray, n_units: int, n_features: int, k: int, scale: float
               ) -> tuple[TopKAutoencoder, torch.Tensor, torch.Tensor, float]:
        """Train one top-k dictionary; its feature sums, firing counts, explained variance."""
        n = acts.sizes["sample"]
        zero = np.zeros(n_units)
        gen = torch.Generator().manual_seed(int(self.seed))
        sae = TopKAutoencoder(n_units, n_features, k, gen)
        opt = torch.optim.Adam(sae.parameters(), lr=self.lr)
        work = n * self.epochs * n_units * n_features  # ~ the fit's multiply-adds / 2
        for _ in progress_bar(range(int(self.epochs)), show=work >= 1e10,
                              desc=f"dictionary k={k}", unit="epoch", leave=False):
            for block in _blocks(acts, zero, scale, gen):
                order = torch.randperm(block.shape[0], generator=gen)
                for start in range(0, block.shape[0], int(self.batch_size)):
                    xb = block[order[start:start + int(self.batch_size)]]
                    x_hat, _ = sae(xb)
                    loss = ((x_hat - xb) ** 2).sum(-1).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sae.normalise_decoder()
        feat_sum = torch.zeros(n_features, dtype=torch.float64)
        fired = torch.zeros(n_features, dtype=torch.float64)
        resid = 0.0
        sq = torch.zeros(n_units, dtype=torch.float64)
        lin = torch.zeros(n_units, dtype=torch.float64)
        with torch.no_grad():
            for block in _blocks(acts, zero, scale, None):
                x_hat, f = sae(block)
                feat_sum += f.double().sum(0)
                fired += (f > 0).double().sum(0)
                resid += float(((x_hat - block) ** 2).sum())
                sq += (block.double() ** 2).sum(0)
                lin += block.double().sum(0)
        total = float((sq - lin ** 2 / n).sum())  # variance about the mean, summed over units
        return sae, feat_sum, fired, (1.0 - resid / total) if total > 0 else float("nan")


def _moments(acts: xr.DataArray) -> tuple[np.ndarray, float]:
    """Per-unit mean and one global scale (RMS norm of the centred rows), streamed."""
    total = None
    sq = 0.0
    n = 0
    for block in _raw_blocks(acts):
        total = block.sum(0) if total is None else total + block.sum(0)
        n += block.shape[0]
    mean = total / n
    for block in _raw_blocks(acts):
        sq += float(((block - mean) ** 2).sum())
    scale = float(np.sqrt(sq / n)) or 1.0
    return mean, scale


def _raw_blocks(acts: xr.DataArray) -> Iterator[np.ndarray]:
    data = acts.transpose("sample", "unit").data
    if hasattr(data, "blocks"):  # dask: one chunk of samples at a time
        for i in range(data.numblocks[0]):
            yield np.asarray(data.blocks[i, :].compute(), dtype=np.float64)
    else:
        arr = np.asarray(data)
        for start in range(0, arr.shape[0], _CHUNK):
            yield arr[start:start + _CHUNK].astype(np.float64)


def _blocks(acts: xr.DataArray, mean: np.ndarray, scale: float,
            gen: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Centred, scaled float32 blocks; in a random block order when ``gen`` is given."""
    blocks = list(_raw_block_ids(acts))
    if gen is not None:
        blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=gen).tolist()]
    for get in blocks:
        yield torch.from_numpy(((get() - mean) / scale).astype(np.float32))


def _raw_block_ids(acts: xr.DataArray) -> Iterator[Any]:
    data = acts.transpose("sample", "unit").data
    if hasattr(data, "blocks"):
        for i in range(data.numblocks[0]):
            yield lambda i=i: np.asarray(data.blocks[i, :].compute(), dtype=np.float64)
    else:
        arr = np.asarray(data)
        for start in range(0, arr.shape[0], _CHUNK):
            yield lambda s=start: arr[s:s + _CHUNK].astype(np.float64)
