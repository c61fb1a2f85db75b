"""``FeatureCapacity``: monosemanticity of toy models from their weights (seed 002).

    from polysdk.detect.capacity import FeatureCapacity, monosemanticity
    det = FeatureCapacity(threshold=0.999).fit(model, embedding=E)   # nn.Sequential + E
    det.result_["capacity"]; det.result_["score"]; det.mono_per_feature_
    stats = monosemanticity(A)          # A: [instances, neurons, features], batched

For every feature i the single-feature activation matrix ``A[n, i]`` holds neuron n's
post-nonlinearity activation for the input ``E one-hot(i)``. The paper's quantity,
``capacity = max_i A[n, i] / (1e-10 + sum_i A[n, i])`` (higher = *more monosemantic*),
is kept under that name; a neuron is monosemantic when it is strictly above
``threshold`` (0.999, the paper's). The detector's ``score`` follows the contract of
every detector, higher = more polysemantic: ``score = 1 - capacity``, the share of the
neuron's response that goes to features other than its top one (0 for a one-feature
neuron, ``1 - 1/N`` for one answering all N equally); dead neurons score 0, as they
answer no feature. Per model: mono neurons / N
(features; can exceed 1) and / k (neurons), as in the paper, and *features covered*,
the number of distinct features that have at least one monosemantic neuron, a metric
of ours (the original has no such count).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from polysdk.detect.base import WeightDetector
from polysdk.errors import DetectorInputError
from polysdk.params import Interval

__all__ = ["FeatureCapacity", "monosemanticity", "single_feature_activations"]

#: the paper's threshold on max / sum
PAPER_THRESHOLD = 0.999


def monosemanticity(acts: Tensor | np.ndarray, threshold: float = PAPER_THRESHOLD,
                    eps: float = 1e-10) -> dict[str, Tensor]:
    """Monosemanticity of one or many models from their activation matrices.

    ``acts``: ``[..., neuron, feature]`` (leading dims = instances, checkpoints, ...).
    Returns tensors over the leading dims (``capacity``, ``monosemantic``, ``argmax``,
    ``dead`` keep the neuron dim): ``n_mono``, ``mono_per_feature`` (n_mono / N),
    ``mono_per_neuron`` (n_mono / k), ``features_covered`` (distinct features with a
    monosemantic neuron, our metric) and ``dead`` (activations summing to exactly 0).
    ``capacity`` is the paper's max / sum (higher = more monosemantic); ``score`` is
    the same tensor under the name the toy study's stored results use. A detector's
    ``score`` runs the other way: see :class:`FeatureCapacity`.

    >>> a = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    >>> s = monosemanticity(a)
    >>> s["capacity"].tolist(), int(s["n_mono"]), int(s["features_covered"])
    ([1.0, 0.5, 1.0], 2, 2)
    """
    a = torch.as_tensor(acts)
    if a.ndim < 2:
        raise DetectorInputError(f"activation matrix must be [..., neuron, feature], got shape "
                                 f"{tuple(a.shape)}.")
    a = a.to(torch.float64) if a.dtype == torch.float64 else a.float()
    n_neurons, n_features = a.shape[-2], a.shape[-1]
    top, argmax = a.max(dim=-1)
    total = a.sum(dim=-1)
    capacity = top / (eps + total)
    mono = capacity > threshold
    n_mono = mono.sum(-1)
    # distinct features among monosemantic neurons: scatter-max of the mono flags
    covered = torch.zeros(*a.shape[:-2], n_features, dtype=torch.int8, device=a.device)
    covered.scatter_reduce_(-1, argmax, mono.to(torch.int8), reduce="amax")
    return {
        "capacity": capacity,
        "score": capacity,  # the toy study's stored name for the same max / sum
        "monosemantic": mono,
        "argmax": argmax,
        "dead": total == 0,
        "n_mono": n_mono,
        "mono_per_feature": n_mono.to(a.dtype) / n_features,
        "mono_per_neuron": n_mono.to(a.dtype) / n_neurons,
        "features_covered": covered.sum(-1),
    }


def single_feature_activations(model: nn.Module, embedding: Tensor | np.ndarray) -> Tensor:
    """A: [neuron, feature] for an ``nn.Sequential(Linear, act, Linear)``-shaped model.

    ``embedding`` is E (m x N): feature i enters as its column ``E[:, i]``; the
    activations are read after the first two modules (linear and nonlinearity).
    """
    E = torch.as_tensor(embedding, dtype=torch.float32)
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        raise DetectorInputError(
            f"expected an nn.Sequential(Linear(m, k), nonlinearity, Linear(k, out)), got "
            f"{type(model).__name__}; pass a ToyModels (with instance=i) or that shape.")
    first = model[0]
    if not isinstance(first, nn.Linear) or first.in_features != E.shape[0]:
        raise DetectorInputError(
            f"embedding has shape {tuple(E.shape)} (m x N) but the model's first layer is "
            f"{first}; give E with m = in_features rows, one column per feature.")
    with torch.no_grad():
        E = E.to(first.weight.device)
        return model[:2](E.T).T


class FeatureCapacity(WeightDetector):
    """Which neurons of a toy model respond to one feature only (capacity > threshold).

    Weight-based: ``fit`` takes a model and its feature embedding (no recorded data):
    anything with a ``single_feature_activations()`` method returning
    ``[instance, neuron, feature]`` and ``n_instances`` (``polysdk.models.ToyModels``,
    read by that protocol: the detectors import nothing from the models layer), an
    ``nn.Sequential`` with ``embedding=E``, or the activation matrix itself.

    Parameters
    ----------
    threshold : float
        Capacity (max / sum) above which a neuron is monosemantic (the paper: 0.999).
    eps : float
        Added to the sum in the denominator (the paper: 1e-10).

    Attributes
    ----------
    result_ : xr.Dataset over ``unit`` (neurons)
        ``capacity`` (the paper's max / sum; higher = more monosemantic), ``score``
        (``1 - capacity``, higher = more polysemantic, 0 for dead neurons),
        ``polysemantic`` (responds to features but is not monosemantic; dead neurons
        are neither), ``monosemantic``, ``dead``, ``top_feature``, ``activation``
        (the matrix, dims unit x feature).
    mono_per_feature_, mono_per_neuron_ : float
        Monosemantic neurons / N and / k.
    features_covered_ : int
        Distinct features that have a monosemantic neuron (our metric, not the paper's).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2)); _ = model[0].bias.zero_()
    >>> det = FeatureCapacity().fit(model, embedding=torch.eye(2))
    >>> det.mono_per_feature_, det.polysemantic_.tolist()
    (1.0, [])
    """

    registry_name = "feature_capacity"
    fitted_attributes = ("mono_per_feature_", "mono_per_neuron_", "features_covered_",
                         "n_monosemantic_")
    _constraints = {"threshold": Interval(0, 1, closed="right"), "eps": Interval(0, None)}

    def __init__(self, threshold: float = PAPER_THRESHOLD, eps: float = 1e-10) -> None:
        self.threshold = threshold
        self.eps = eps
        self._validate_params()

    def fit(self, source: Any, labels: Any = None, **kwargs: Any) -> FeatureCapacity:
        """``source``: a ToyModels (``instance=i``), an ``nn.Sequential`` with
        ``embedding=E``, or the activation matrix itself (array, tensor, or a DataArray
        with dims ``unit`` and ``feature``, e.g. a stored ``checkpoint_activation``)."""
        if isinstance(source, xr.DataArray):
            if set(source.dims) != {"unit", "feature"}:
                raise DetectorInputError(
                    f"FeatureCapacity reads a DataArray as the single-feature activation "
                    f"matrix, with dims ('unit', 'feature'); got dims {source.dims}. Select "
                    "one matrix first, e.g. da.isel(instance=0, checkpoint=-1).")
            source = source.transpose("unit", "feature").values
        super().fit(source, labels, **kwargs)
        attrs = self.result_.attrs
        self.mono_per_feature_ = float(attrs["mono_per_feature"])
        self.mono_per_neuron_ = float(attrs["mono_per_neuron"])
        self.features_covered_ = int(attrs["features_covered"])
        self.n_monosemantic_ = int(attrs["n_monosemantic"])
        return self

    def _detect(self, source: Any, labels: Any = None, embedding: Any = None,
                instance: int = 0) -> xr.Dataset:
        if callable(getattr(source, "single_feature_activations", None)) and \
                hasattr(source, "n_instances"):  # ToyModels, by protocol
            if not 0 <= instance < source.n_instances:
                raise DetectorInputError(f"instance={instance} is out of range for "
                                         f"{source.n_instances} models.")
            acts = source.single_feature_activations()[instance]
        elif isinstance(source, nn.Module):
            if embedding is None:
                raise DetectorInputError(
                    "FeatureCapacity needs the model's feature embedding: "
                    "fit(model, embedding=E) with E of shape (m, N).")
            acts = single_feature_activations(source, embedding)
        elif isinstance(source, (torch.Tensor, np.ndarray)) and embedding is None:
            acts = torch.as_tensor(source)   # the activation matrix itself
            if acts.ndim != 2:
                raise DetectorInputError(f"an activation matrix must be 2-D (neuron, feature); "
                                         f"got shape {tuple(acts.shape)}.")
        else:
            raise DetectorInputError(
                f"FeatureCapacity cannot read {type(source).__name__}; pass a ToyModels, an "
                "nn.Sequential with embedding=E, or a (neuron x feature) activation matrix.")
        acts = acts.detach().float().cpu()
        if not torch.isfinite(acts).all():
            raise DetectorInputError("the single-feature activations hold NaN or inf; the "
                                     "model's weights are not finite (training diverged?).")
        s = monosemanticity(acts, float(self.threshold), float(self.eps))
        mono, dead = s["monosemantic"].numpy(), s["dead"].numpy()
        capacity = s["capacity"].numpy().astype(float)
        ds = xr.Dataset(
            {"score": ("unit", np.where(dead, 0.0, 1.0 - capacity)),
             "capacity": ("unit", capacity),
             "polysemantic": ("unit", ~mono & ~dead),
             "monosemantic": ("unit", mono),
             "dead": ("unit", dead),
             "top_feature": ("unit", s["argmax"].numpy()),
             "activation": (("unit", "feature"), acts.numpy())},
            coords={"unit": np.arange(acts.shape[0]), "feature": np.arange(acts.shape[1])})
        ds.attrs.update(mono_per_feature=float(s["mono_per_feature"]),
                        mono_per_neuron=float(s["mono_per_neuron"]),
                        features_covered=int(s["features_covered"]),
                        n_monosemantic=int(s["n_mono"]),
                        features_covered_note="distinct features with >= 1 monosemantic "
                                              "neuron; a polysdk metric, not the paper's")
        return ds
