"""Toy models of superposition (Jermyn, Schiefer, Hubinger 2022), many at once.

    from polysdk.models.toy import ToyConfig, ToyModels
    models = ToyModels.init([ToyConfig(N=64, m=16, k=128)] * 4, seeds=[0, 1, 2, 3])
    acts = models.single_feature_activations()      # [instance, neuron, feature]

A model is ``Linear(m -> k, bias) -> nonlinearity -> Linear(k -> out, no bias)`` fed
``x = E v`` where ``v`` holds N sparse features and ``E`` (m x N) is a fixed random
embedding with unit-norm columns. :class:`ToyModels` holds K such models as tensors with
a leading *instance* dimension (``W1: [K, k, m]``, ``b1: [K, k]``, ``W2: [K, out, k]``),
so one ``torch.bmm`` runs all of them. Every instance draws its embedding, initial
weights and data from its own generators, seeded from its own seed only, so an instance
trained in any batch gives the same model as when trained alone (on the same device:
embedding and initial weights are drawn on the CPU everywhere, but the data stream of a
CUDA run comes from CUDA generators, which give other numbers than the CPU's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from polysdk.errors import ConfigError

__all__ = [
    "ToyConfig", "ToyModels", "NONLINEARITIES", "feature_probabilities", "make_embedding",
    "instance_generator", "sample_features", "FeatureSampler", "apply_nonlinearity", "nonlinearity_grad",
]

TASKS = ("decoder", "re-projector", "abs")
_TASK_ALIASES = {"decoder": "decoder", "autoencoder": "decoder", "re-projector": "re-projector",
                 "reprojector": "re-projector", "random_proj": "re-projector",
                 "re_projector": "re-projector", "abs": "abs"}
SAMPLE_KINDS = ("equal", "power_law")
_SAMPLE_ALIASES = {"equal": "equal", "uniform": "equal", "power_law": "power_law",
                   "power-law": "power_law", "powerlaw": "power_law"}
#: ``SoLU`` here is the paper's ``x * exp(x)``, not the softmax SoLU of transformers.
NONLINEARITIES = ("ReLU", "GeLU", "SoLU")
_NL_ALIASES = {"relu": "ReLU", "gelu": "GeLU", "solu": "SoLU", "xexp": "SoLU",
               "x*exp(x)": "SoLU"}

# streams of one instance's seed: each gets its own generator
_STREAM_EMBED, _STREAM_TARGET_EMBED, _STREAM_INIT, _STREAM_DATA = 0, 1, 2, 3


@dataclass(frozen=True)
class ToyConfig:
    """One toy model's settings, named as on the seed's command line.

    ``task``: ``"decoder"`` (the code's ``autoencoder``), ``"re-projector"`` or
    ``"abs"``; ``sample_kind``: ``"equal"`` or ``"power_law"``; ``nonlinearity``:
    ``"ReLU"``, ``"GeLU"`` or ``"SoLU"`` (x * exp(x)). Defaults are the paper's sizes.

    >>> ToyConfig(N=64, m=16, k=128, task="autoencoder").task
    'decoder'
    """

    N: int = 512
    m: int = 64
    k: int = 1024
    eps: float = 1 / 64
    sample_kind: str = "equal"
    task: str = "decoder"
    learning_rate: float = 0.003
    decay: float = 0.0
    initial_bias: float = 0.0
    reg: float = 0.0
    nonlinearity: str = "ReLU"
    log2_batch_size: int = 13
    log2_training_steps: int = 17

    def __post_init__(self) -> None:
        def canon(field: str, table: dict[str, str], allowed: Sequence[str]) -> None:
            value = getattr(self, field)
            key = str(value).lower()
            if key not in table:
                raise ConfigError(f"{field}={value!r} is not known; use one of {list(allowed)}.")
            object.__setattr__(self, field, table[key])

        canon("task", _TASK_ALIASES, TASKS)
        canon("sample_kind", _SAMPLE_ALIASES, SAMPLE_KINDS)
        canon("nonlinearity", _NL_ALIASES, NONLINEARITIES)
        for name in ("N", "m", "k", "log2_batch_size", "log2_training_steps"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
                value = int(value)
            if not isinstance(value, (int, np.integer)) or value < (0 if "log2" in name else 1):
                raise ConfigError(f"{name}={value!r} must be a positive integer "
                                  f"(log2 sizes may be 0).")
            object.__setattr__(self, name, int(value))
        for name in ("eps", "learning_rate", "decay", "initial_bias", "reg"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps={self.eps} is a feature probability; it must be in (0, 1].")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be > 0.")
        if self.decay < 0 or self.reg < 0:
            raise ConfigError(f"decay={self.decay} and reg={self.reg} must be >= 0.")

    @property
    def batch_size(self) -> int:
        return 2 ** self.log2_batch_size

    @property
    def training_steps(self) -> int:
        return 2 ** self.log2_training_steps

    @property
    def out_dim(self) -> int:
        """Output width: m for the re-projector, N otherwise."""
        return self.m if self.task == "re-projector" else self.N

    def shape_key(self) -> tuple[Any, ...]:
        """Instances that share this key can train in one batched computation."""
        return (self.N, self.m, self.k, self.task, self.nonlinearity, self.log2_batch_size,
                self.log2_training_steps)

    def replace(self, **changes: Any) -> "ToyConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- helpers
def instance_generator(seed: int, stream: int, device: str | torch.device = "cpu"
                       ) -> torch.Generator:
    """A generator for one stream (embedding, init, data) of one instance's seed."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return gen


def feature_probabilities(N: int, eps: float, kind: str = "equal") -> Tensor:
    """Probability that each of the N features is non-zero (float64, length N).

    ``equal``: eps each. ``power_law``: c * i**-1.1 (i = 1..N) with sum N * eps, then
    capped at 1 with no renormalising (as in the original).
    """
    kind = _SAMPLE_ALIASES.get(str(kind).lower(), kind)
    if kind == "equal":
        return torch.full((N,), float(eps), dtype=torch.float64)
    if kind == "power_law":
        p = 1.0 / torch.arange(1, N + 1, dtype=torch.float64) ** 1.1
        p *= N * eps / p.sum()
        return p.clamp(max=1.0)
    raise ConfigError(f"sample_kind={kind!r} is not known; use one of {list(SAMPLE_KINDS)}.")


def make_embedding(N: int, m: int, generator: torch.Generator) -> Tensor:
    """A fixed random embedding E (m x N, float32) whose columns have unit norm.

    The left singular vectors u (N x m) of a Gaussian N x m matrix, rows normalised,
    transposed (as the original's ``make_random_embedder``).
    """
    gauss = torch.randn((N, m), generator=generator, dtype=torch.float64,
                        device=generator.device).cpu()
    u, _, _ = torch.linalg.svd(gauss, full_matrices=False)
    u = u / u.norm(dim=1, keepdim=True)
    return u.T.contiguous().to(torch.float32)


def apply_nonlinearity(name: str, h: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """ReLU, GeLU (erf form) or SoLU = x * exp(x) (into ``out`` when given).

    Written so that TorchScript compiles it (the trainer's step does).
    """
    if name == "ReLU":
        if out is None:
            return torch.relu(h)
        return torch.clamp_min(h, 0.0, out=out)
    if name == "GeLU":
        a = torch.nn.functional.gelu(h)
    elif name == "SoLU":
        a = h * torch.exp(h)
    else:
        raise ConfigError("nonlinearity=" + name + " is not known; use ReLU, GeLU or SoLU.")
    if out is None:
        return a
    return out.copy_(a)


def nonlinearity_grad(name: str, h: Tensor) -> Tensor:
    """Derivative of :func:`apply_nonlinearity` at ``h`` (ReLU: 0 at 0, as autograd)."""
    if name == "ReLU":
        return (h > 0).to(h.dtype)   # the trainer fuses this (threshold_backward)
    if name == "GeLU":
        sqrt_half, inv_sqrt_2pi = 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)
        cdf = 0.5 * (1.0 + torch.erf(h * sqrt_half))
        return cdf + h * torch.exp(-0.5 * h * h) * inv_sqrt_2pi
    if name == "SoLU":
        return torch.exp(h) * (1.0 + h)
    raise ConfigError("nonlinearity=" + name + " is not known; use ReLU, GeLU or SoLU.")


def sample_features(generators: Sequence[torch.Generator], probs: Tensor, batch: int,
                    out: Tensor | None = None) -> Tensor:
    """Draw v: [K, batch, N], each value uniform on [0, 1) kept with probability p_i.

    One uniform u per entry: the feature is kept when ``u / p_i < 1`` and its value is
    then ``u / p_i``, which (given ``u < p_i``) is uniform on [0, 1) and independent of the
    keep decision: the original's distribution (a uniform value times a Bernoulli(p_i)
    mask) with half the random numbers. Instance i draws from ``generators[i]`` only,
    so its stream does not depend on the other instances. ``out`` may be a
    ``[K, 2, batch, N]`` scratch buffer to reuse. To draw every step of a training run,
    :class:`FeatureSampler` does the same faster.
    """
    K, N = probs.shape
    if out is None:
        out = torch.empty((K, 2, batch, N), device=probs.device)
    for i, gen in enumerate(generators):
        out[i, 0].uniform_(generator=gen)
    return _keep_with_probability(out[:, 0], (-1.0 / probs).unsqueeze(1), out[:, 1])


def _keep_with_probability(u: Tensor, neg_inv_probs: Tensor, out: Tensor) -> Tensor:
    """``u / p`` where ``u < p``, else 0 (``neg_inv_probs``: -1/p as [K, 1, N])."""
    # as -v = u * (-1/p), zeroed where <= -1 (one fused threshold instead of a compare
    # and a masked fill: ~7x faster on CPU)
    torch.mul(u, neg_inv_probs, out=out)
    return torch.threshold_(out, -1.0, 0.0).neg_()


class FeatureSampler:
    """Draws every training step's features for K instances, as :func:`sample_features`.

        gens = [instance_generator(seed, 3) for seed in range(16)]
        probs = feature_probabilities(64, 1 / 64).float().expand(16, 64)
        sampler = FeatureSampler(gens, probs, batch=128)
        v = sampler.draw()     # [16, 128, 64]: the numbers sample_features(gens, probs, 128) gives

    ``draws=2`` returns the difference of two draws (the abs task's input); each instance
    takes its first draw, then its second, from its own generator. The buffers, the view
    of each instance's row and ``-1 / p`` are made once, so a step costs the random
    numbers and three element-wise passes; the returned tensor is overwritten by the next
    ``draw()``.
    """

    def __init__(self, generators: Sequence[torch.Generator], probs: Tensor, batch: int,
                 draws: int = 1) -> None:
        K, N = probs.shape
        if len(generators) != K:
            raise ConfigError(f"got {len(generators)} generators for {K} instances; give "
                              "one generator per row of probs.")
        if draws not in (1, 2):
            raise ConfigError(f"draws={draws} must be 1 (features) or 2 (their difference).")
        self._uniform = torch.empty((draws, K, batch, N), device=probs.device)
        self._values = torch.empty((draws, K, batch, N), device=probs.device)
        self._neg_inv_probs = (-1.0 / probs).unsqueeze(1)
        self._rows = [(gen, self._uniform[d, i]) for i, gen in enumerate(generators)
                      for d in range(draws)]

    def draw(self) -> Tensor:
        """This step's features, ``[K, batch, N]`` (see the class docstring)."""
        for gen, row in self._rows:
            row.uniform_(generator=gen)
        v = _keep_with_probability(self._uniform[0], self._neg_inv_probs, self._values[0])
        if len(self._uniform) == 2:
            v = v.sub_(_keep_with_probability(self._uniform[1], self._neg_inv_probs,
                                              self._values[1]))
        return v


# ----------------------------------------------------------------------------- models
class ToyModels:
    """K toy models with a leading instance dimension.

    Attributes ``W1 [K, k, m]``, ``b1 [K, k]``, ``W2 [K, out, k]``, ``embed [K, m, N]``
    and, for the re-projector, ``target_embed [K, m, N]``.

    >>> models = ToyModels.init([ToyConfig(N=8, m=4, k=6)] * 2, seeds=[0, 1])
    >>> tuple(models.W1.shape), tuple(models.single_feature_activations().shape)
    ((2, 6, 4), (2, 6, 8))
    """

    def __init__(self, configs: Sequence[ToyConfig], seeds: Sequence[int], W1: Tensor,
                 b1: Tensor, W2: Tensor, embed: Tensor, target_embed: Tensor | None) -> None:
        self.configs = list(configs)
        self.seeds = [int(s) for s in seeds]
        self.W1, self.b1, self.W2 = W1, b1, W2
        self.embed, self.target_embed = embed, target_embed

    @staticmethod
    def check_batchable(configs: Sequence[ToyConfig]) -> ToyConfig:
        if not configs:
            raise ConfigError("no toy-model configs given; pass at least one ToyConfig.")
        first = configs[0]
        for c in configs[1:]:
            if c.shape_key() != first.shape_key():
                raise ConfigError(
                    f"instances trained together must share (N, m, k, task, nonlinearity, "
                    f"batch, steps); got {first.shape_key()} and {c.shape_key()}. Group them "
                    "by ToyConfig.shape_key() first (the study does this).")
        return first

    @classmethod
    def init(cls, configs: Sequence[ToyConfig], seeds: Sequence[int],
             device: str | torch.device = "cpu") -> "ToyModels":
        """PyTorch-default initialisation (U(-1/sqrt(fan_in), +)) plus ``initial_bias``."""
        first = cls.check_batchable(configs)
        if len(seeds) != len(configs):
            raise ConfigError(f"got {len(seeds)} seeds for {len(configs)} configs; give one "
                              "seed per instance.")
        N, m, k, out = first.N, first.m, first.k, first.out_dim
        W1s, b1s, W2s, Es, Ts = [], [], [], [], []
        for cfg, seed in zip(configs, seeds):
            Es.append(make_embedding(N, m, instance_generator(seed, _STREAM_EMBED)))
            if cfg.task == "re-projector":
                Ts.append(make_embedding(N, m, instance_generator(seed, _STREAM_TARGET_EMBED)))
            gen = instance_generator(seed, _STREAM_INIT)
            bound1, bound2 = 1.0 / math.sqrt(m), 1.0 / math.sqrt(k)
            W1s.append((torch.rand((k, m), generator=gen) * 2 - 1) * bound1)
            b1s.append((torch.rand((k,), generator=gen) * 2 - 1) * bound1 + cfg.initial_bias)
            W2s.append((torch.rand((out, k), generator=gen) * 2 - 1) * bound2)

        def stack(ts: list[Tensor]) -> Tensor:
            return torch.stack(ts).to(device)

        return cls(configs, seeds, stack(W1s), stack(b1s), stack(W2s), stack(Es),
                   stack(Ts) if Ts else None)

    @property
    def n_instances(self) -> int:
        return self.W1.shape[0]

    @property
    def nonlinearity(self) -> str:
        return self.configs[0].nonlinearity

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [K, B, m] -> (pre-activation h, activation a, output), all batched."""
        h = torch.baddbmm(self.b1.unsqueeze(1), x, self.W1.transpose(1, 2))
        a = apply_nonlinearity(self.nonlinearity, h)
        return h, a, torch.bmm(a, self.W2.transpose(1, 2))

    @torch.no_grad()
    def single_feature_activations(self) -> Tensor:
        """A: [K, k, N], neuron activations for each feature alone (input E one-hot(i))."""
        h = torch.baddbmm(self.b1.unsqueeze(2), self.W1, self.embed)
        return apply_nonlinearity(self.nonlinearity, h)

    def to_sequential(self, i: int = 0) -> nn.Sequential:
        """Instance ``i`` as the original's ``nn.Sequential(Linear, act, Linear)``."""
        cfg = self.configs[i]
        act: nn.Module = {"ReLU": nn.ReLU, "GeLU": nn.GELU, "SoLU": _XExp}[cfg.nonlinearity]()
        model = nn.Sequential(nn.Linear(cfg.m, cfg.k), act, nn.Linear(cfg.k, cfg.out_dim,
                                                                     bias=False))
        with torch.no_grad():
            model[0].weight.copy_(self.W1[i])
            model[0].bias.copy_(self.b1[i])
            model[2].weight.copy_(self.W2[i])
        return model.to(self.W1.device)

    def select(self, index: Sequence[int]) -> "ToyModels":
        """A new :class:`ToyModels` holding copies of the instances at ``index``."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.W1.device)
        te = None if self.target_embed is None else self.target_embed[idx].clone()
        return ToyModels([self.configs[i] for i in index], [self.seeds[i] for i in index],
                         self.W1[idx].clone(), self.b1[idx].clone(), self.W2[idx].clone(),
                         self.embed[idx].clone(), te)


class _XExp(nn.Module):
    """The paper's "SoLU": x * exp(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.exp(x)

