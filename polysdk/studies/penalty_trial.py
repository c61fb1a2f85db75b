"""One trial of the penalty study: train, then measure firing, polysemanticity, clusterability.

    from polysdk.studies.penalty_trial import run_trial, elementwise_accuracy
    ds = run_trial(study, alpha=1.0, mode="soft", trial=1)   # xr.Dataset (one resume unit)

Kept apart from :mod:`polysdk.studies.penalty` (config, units) so the measuring code can
be read, and reused, on its own.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import xarray as xr

__all__ = ["run_trial", "elementwise_accuracy", "firing_summary", "hidden_activations"]


def elementwise_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The seed's "accuracy": Keras ``binary_accuracy`` of the softmax outputs against the
    one-hot labels, i.e. the mean over samples x classes of ``(p > 0.5) == onehot``.

    >>> p = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])   # always class 0
    >>> elementwise_accuracy(p, torch.tensor([0, 1]))             # (3 + 1) / 6
    0.6666666666666666
    """
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).bool()
    return float(((probs > 0.5) == onehot).double().mean())


def hidden_activations(model: Any, x: torch.Tensor, sites: list[str]) -> dict[str, Any]:
    """The test set's activations at ``sites`` (one forward pass) and the logits."""
    from polysdk.sites import Hooks

    seen: dict[str, torch.Tensor] = {}

    def keep(site: str, t: torch.Tensor) -> None:
        seen[site] = t.detach().clone()

    model.eval()
    with torch.no_grad(), Hooks(model, sites, keep):
        logits = model(x)
    return {"logits": logits, **seen}


def firing_summary(acts: np.ndarray, labels: np.ndarray, n_classes: int,
                   threshold: float = 0.0) -> dict[str, Any]:
    """Per layer: ClassSelectivity's firing rates and verdicts, plus summaries."""
    from polysdk.detect import ClassSelectivity

    da = xr.DataArray(acts, dims=("sample", "unit"), coords={"label": ("sample", labels)})
    res = ClassSelectivity(threshold=threshold, classes=list(range(n_classes))).fit(da).result_
    rate = res["firing_rate"].transpose("unit", "class").values          # (unit, class)
    fires = (rate > 0)
    pref = rate.argmax(1)
    other = (rate.sum(1) - rate[np.arange(rate.shape[0]), pref]) / max(n_classes - 1, 1)
    alive = fires.any(1)
    return {"firing_rate": rate.T,                                       # (class, unit)
            "polysemantic": res["polysemantic"].values.astype(bool),
            "n_classes": res["n_classes"].values,
            "n_polysemantic": int(res["polysemantic"].values.sum()),
            "frac_polysemantic": float(res["polysemantic"].values.mean()),
            "frac_all_classes": float((fires.sum(1) == n_classes).mean()),
            "frac_dead": float((~alive).mean()),
            "other_class_rate": float(other[alive].mean()) if alive.any() else 0.0,
            "mean_classes": float(fires.sum(1).mean())}


def run_trial(study: Any, alpha: float, mode: str, trial: int, progress: Any = False
              ) -> xr.Dataset:
    """Train one network of ``study`` (a PenaltyStudy) and measure it."""
    from polysdk._util import torch_threads
    from polysdk.detect import Clusterability
    from polysdk.regularize import PolysemanticityPenalty
    from polysdk.studies.penalty import trial_seed
    from polysdk.train.loop import fit

    cfg = study.config
    data = study.data()
    seed = trial_seed(cfg.seed, trial)
    device = study.resolved_device()
    torch.manual_seed(seed)
    model = study.build_model(data.n_features).to(device)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train),
        batch_size=cfg.batch_size, shuffle=True, generator=gen)
    regs = [] if alpha == 0 else [PolysemanticityPenalty(model, list(cfg.layers), alpha=alpha,
                                                         mode=mode)]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)

    def evaluate(net: Any, epoch: int) -> dict[str, float]:
        return {"test_top1": float((net(x_test).argmax(1) == y_test).double().mean())}

    t0 = time.perf_counter()
    with torch_threads(1 if device.type == "cpu" else None):
        res = fit(model, loader, epochs=cfg.resolved_epochs(), optimizer=opt,
                  loss_fn=torch.nn.functional.cross_entropy, regularizers=regs,
                  evaluate=evaluate, device=device, progress=progress)
        train_s = time.perf_counter() - t0
        out = hidden_activations(model, x_test, list(cfg.layers))
    logits = out["logits"]
    probs = torch.softmax(logits, 1)
    top1 = float((logits.argmax(1) == y_test).double().mean())
    elem = elementwise_accuracy(probs, y_test)
    test_loss = float(torch.nn.functional.cross_entropy(logits, y_test))
    y = y_test.cpu().numpy()
    per = [firing_summary(out[s].cpu().numpy().reshape(len(y), -1), y, data.n_classes,
                          cfg.threshold) for s in cfg.layers]

    t1 = time.perf_counter()
    cl = Clusterability(n_clusters=cfg.n_clusters, n_shuffles=cfg.n_shuffles,
                        n_init=cfg.n_init, n_jobs=cfg.jobs, seed=seed).fit(model.cpu())
    cluster_s = time.perf_counter() - t1
    c = cl.result_
    hist = res.history
    width = max(p["firing_rate"].shape[1] for p in per)

    def pad(a: np.ndarray, fill: Any) -> np.ndarray:   # layers of other widths share a dim
        out = np.full(a.shape[:-1] + (width,), fill, dtype=a.dtype)
        out[..., :a.shape[-1]] = a
        return out

    layer = ("layer",)
    ds = xr.Dataset(
        {"top1_accuracy": ((), top1), "elementwise_accuracy": ((), elem),
         "test_loss": ((), test_loss),
         "final_train_loss": ((), float(hist[-1]["loss"]) if hist else float("nan")),
         "train_loss": (("epoch",), np.asarray([h["loss"] for h in hist], float)),
         "test_top1": (("epoch",), np.asarray([h["test_top1"] for h in hist], float)),
         "firing_rate": (("layer", "class", "unit"),
                         np.stack([pad(p["firing_rate"], np.nan) for p in per])),
         "polysemantic": (("layer", "unit"), np.stack([pad(p["polysemantic"], False)
                                                       for p in per])),
         "n_classes": (("layer", "unit"), np.stack([pad(p["n_classes"], 0) for p in per])),
         **{k: (layer, np.asarray([p[k] for p in per])) for k in
            ("n_polysemantic", "frac_polysemantic", "frac_all_classes", "frac_dead",
             "other_class_rate", "mean_classes")},
         "n_cut": ((), float(c["n_cut"])), "z_score": ((), float(c["z_score"])),
         "left_p_value": ((), float(c["left_p_value"])),
         "shuffled_n_cut": (("shuffle",), c["shuffled_n_cut"].values),
         "cluster_label": (("node",), c["label"].values),
         "train_seconds": ((), train_s), "cluster_seconds": ((), cluster_s),
         # the trained network (every parameter, in model.parameters() order; see
         # PenaltyStudy.trained_model): what the atlas's recording re-runs on the test set
         "weights": (("param",), torch.nn.utils.parameters_to_vector(
             model.parameters()).detach().cpu().numpy().astype(np.float32))},
        coords={"layer": list(cfg.layers), "class": np.arange(data.n_classes),
                "unit": np.arange(width), "epoch": np.arange(len(hist)),
                "shuffle": np.arange(c.sizes["shuffle"]), "node": c["node"].values,
                "node_layer": (("node",), c["layer"].values)})
    ds.attrs.update(alpha=float(alpha), mode=str(mode), trial=int(trial), seed=int(seed),
                    dataset=cfg.dataset, epochs=cfg.resolved_epochs(),
                    class_names=list(data.classes), n_features=int(data.n_features))
    return ds
