"""The comparison unit of one candidate: subnetworks against circuit-pruning baselines.

    ds = compare_candidate(study, slot, ("features.10", 12), {"a": ds_a, "b": ds_b,
                                                             "control": ds_c})

For the candidate's two clusters (A, B; their train / test split):

* circuits at the same kept count of conv weights as each subnetwork: ``subnet_a`` and
  ``subnet_b`` (continuous sparsification), and per method (ActGrad per kernel, SNIP
  and FORCE per weight; biases unmasked, as circuit_explorer) ``<method>_a`` fitted on
  A's train images with subnet_a's count and ``<method>_b`` on B's with subnet_b's;
  ``original`` is the whole model;
* ``value`` (circuit, image): the unit's pre-ReLU centre activation through each
  circuit on every image of A and B; ``auc_test`` / ``auc_train``: P(own cluster >
  other) per circuit (A's for ``*_a`` and ``original``, B's for ``*_b``);
* ``layer_density`` (circuit, layer): kept share of each conv's weights (the target
  layer: of the unit's own filter);
* overlaps (:func:`polysdk.mask.mask_overlap`, weights; the target layer cut to the
  unit's filter): ``ab_*`` subnet_a vs subnet_b, ``control_*`` subnet_a vs the control
  (cluster A again, another seed), over ``param`` (each layer, then ``overall``);
* the preservation ladder (Pearson r, dF_norm over ``density``) of each method fitted
  on A and B's train images together, on their test images, and the subnetworks' own
  ``subnet_pearson_r`` / ``subnet_dF_norm``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

__all__ = ["compare_candidate", "masks_with_weights"]


def masks_with_weights(scorer: Any, n_weights: int) -> dict[str, torch.Tensor]:
    """The scorer's top-k mask whose kept weights come closest to ``n_weights`` from
    below (k counts kernels for a per-kernel score: bisection on k)."""
    def kept(k: int) -> int:
        return int(sum(int(m.sum()) for m in scorer.masks_for(k=k).values()))

    n_scored = int(sum(s.numel() for s in scorer.scores_.values()))
    lo, hi = 1, n_scored
    if kept(hi) <= n_weights:
        return scorer.masks_for(k=hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept(mid) <= n_weights:
            lo = mid
        else:
            hi = mid - 1
    return scorer.masks_for(k=lo)


def _full(masks: Mapping[str, torch.Tensor], model: Any, names: list[str]
          ) -> dict[str, torch.Tensor]:
    """Masks for every conv weight in ``names`` (weights a scorer left out: none kept)."""
    params = dict(model.named_parameters())
    return {n: masks[n].bool() if n in masks else torch.zeros_like(params[n], dtype=torch.bool)
            for n in names}


def compare_candidate(study: Any, slot: int, cand: tuple[str, int],
                      subs: Mapping[str, xr.Dataset]) -> xr.Dataset:
    from polysdk.mask import (FORCE, SNIP, ActGrad, dataset_to_masks, feature_preservation,
                              mask_overlap, preservation_curve)
    from polysdk.studies import alexnet_pipeline as P

    cfg = study.config
    layer, unit = cand
    model, data = study.model(), study.data()
    sp = study.split(slot)
    convs = P.conv_params_to(model, layer)
    wnames = [f"{c}.weight" for c in convs]
    x = data.x
    t0 = time.perf_counter()

    def imgs(index: np.ndarray) -> torch.Tensor:
        return x[torch.as_tensor(index, dtype=torch.long)]

    sub_masks = {s: dataset_to_masks(ds) for s, ds in subs.items()}
    kept = {s: int(ds.attrs["kept_weights"]) for s, ds in subs.items()}
    circuits: dict[str, dict[str, torch.Tensor] | None] = {
        "original": None,
        "subnet_a": sub_masks["a"], "subnet_b": sub_masks["b"]}
    timings: dict[str, float] = {}
    makers = {
        "actgrad": lambda xs: ActGrad(model, layer, unit=unit, params=convs,
                                      structure="kernel").fit(xs),
        "snip": lambda xs: SNIP(model, layer, unit=unit, params=convs).fit(xs),
    }
    for m in cfg.methods:
        for side in "ab":
            xs = imgs(sp[f"{side}_train"])
            t1 = time.perf_counter()
            if m == "force":
                snip = SNIP(model, layer, unit=unit, params=convs).fit(xs)
                dens = min(1.0, kept[side] / max(snip.n_reachable_, 1))
                scorer = FORCE(model, layer, unit=unit, params=convs,
                               density=max(dens, 1e-9)).fit(xs)
            else:
                scorer = makers[m](xs)
            circuits[f"{m}_{side}"] = _full(masks_with_weights(scorer, kept[side]), model,
                                            wnames)
            timings[f"{m}_{side}"] = time.perf_counter() - t1

    # the unit's activation through every circuit on A's and B's images
    order = np.concatenate([sp["a_train"], sp["a_test"], sp["b_train"], sp["b_test"]])
    side = np.array(["a"] * (len(sp["a_train"]) + len(sp["a_test"]))
                    + ["b"] * (len(sp["b_train"]) + len(sp["b_test"])))
    split = np.array(["train"] * len(sp["a_train"]) + ["test"] * len(sp["a_test"])
                     + ["train"] * len(sp["b_train"]) + ["test"] * len(sp["b_test"]))
    xo = imgs(order)
    names = list(circuits)
    values = np.stack([P.unit_values(model, layer, unit, xo, circuits[c]) for c in names])
    auc = {"train": [], "test": []}
    for ci, c in enumerate(names):
        own = "b" if c.endswith("_b") else "a"
        for sname in ("train", "test"):
            sel = split == sname
            auc[sname].append(P.auc(values[ci][sel & (side == own)],
                                    values[ci][sel & (side != own)]))

    # densities per layer (target layer: the unit's filter)
    dens = np.zeros((len(names), len(convs)))
    counts = np.zeros((len(names), len(convs)), dtype=np.int64)
    for ci, c in enumerate(names):
        masks = circuits[c]
        if masks is None:
            dens[ci] = 1.0
            continue
        cut = P.restrict_to_unit(P.weight_masks(masks), layer, unit)
        for li, w in enumerate(wnames):
            dens[ci, li] = float(cut[w].float().mean())
            counts[ci, li] = int(cut[w].sum())

    data_vars: dict[str, Any] = {
        "value": (("circuit", "image"), values),
        "auc_train": ("circuit", np.array(auc["train"])),
        "auc_test": ("circuit", np.array(auc["test"])),
        "layer_density": (("circuit", "layer"), dens),
        "layer_kept": (("circuit", "layer"), counts),
    }
    coords: dict[str, Any] = {"circuit": names, "layer": convs,
                              "image": np.arange(len(order)),
                              "image_index": ("image", order.astype(np.int64)),
                              "side": ("image", side), "split": ("image", split)}

    # overlaps: A vs B, A vs control
    def cut(m: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return P.restrict_to_unit(P.weight_masks(m), layer, unit)

    pairs = {"ab": ("a", "b")}
    if "control" in sub_masks:
        pairs["control"] = ("a", "control")
    param = None
    for key, (s1, s2) in pairs.items():
        table = mask_overlap(cut(sub_masks[s1]), cut(sub_masks[s2]))
        param = [str(p) for p in table["param"].values]
        for var in ("size", "kept_a", "kept_b", "intersection", "union", "iou",
                    "expected_intersection", "expected_iou", "enrichment", "p_value",
                    "p_value_depletion", "log_p_value", "log_p_value_depletion"):
            data_vars[f"{key}_{var}"] = ("param", table[var].values)
    if param is not None:
        coords["param"] = param

    # preservation: the ladder of each method (fitted on A and B's train images), and
    # the subnetworks' own
    fit_idx = np.concatenate([sp["a_train"], sp["b_train"]])
    rng = np.random.default_rng(cfg.seed + slot)
    if len(fit_idx) > cfg.ladder_images:
        fit_idx = np.sort(rng.choice(fit_idx, cfg.ladder_images, replace=False))
    test_idx = np.concatenate([sp["a_test"], sp["b_test"]])
    if not len(test_idx):
        test_idx = fit_idx
    x_fit, x_test = imgs(fit_idx), imgs(test_idx)
    ladder = np.asarray(cfg.ladder, dtype=float)
    r = np.full((len(cfg.methods), len(ladder)), np.nan)
    df = np.full_like(r, np.nan)
    t1 = time.perf_counter()
    for mi, m in enumerate(cfg.methods):
        if m == "force":
            scorer = FORCE(model, layer, unit=unit, params=convs, density=float(ladder[0]))
            scorer.fit(x_fit)
            curve = preservation_curve(scorer, x_test, list(ladder), x_fit=x_fit)
        else:
            curve = preservation_curve(makers[m](x_fit), x_test, list(ladder))
        r[mi], df[mi] = curve["pearson_r"].values, curve["dF_norm"].values
    timings["ladder"] = time.perf_counter() - t1
    data_vars["ladder_pearson_r"] = (("method", "density"), r)
    data_vars["ladder_dF_norm"] = (("method", "density"), df)
    coords["method"] = list(cfg.methods)
    coords["density"] = ladder
    own = []
    for s in ("a", "b"):
        own.append(feature_preservation(model, layer, unit, x_test, sub_masks[s]))
    data_vars["subnet_pearson_r"] = ("subnet", np.array([o["pearson_r"] for o in own]))
    data_vars["subnet_dF_norm"] = ("subnet", np.array([o["dF_norm"] for o in own]))
    coords["subnet"] = ["a", "b"]
    n_w = int(subs["a"].attrs["n_weights"])
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(layer=layer, unit=int(unit), slot=slot,
                    cluster_a=int(sp["a_cluster"]), cluster_b=int(sp["b_cluster"]),
                    kept_a=kept["a"], kept_b=kept["b"], n_weights=n_w,
                    density_a=kept["a"] / n_w, density_b=kept["b"] / n_w,
                    timings=json.dumps(timings), compare_seconds=time.perf_counter() - t0)
    return ds
