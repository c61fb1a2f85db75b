"""The stages of the AlexNet-subnetworks study (seed 000), as plain functions.

    data = embedded_data(cfg)                 # shapes set (train, test) or an ImageFolder
    model, ds = train_model(cfg, data, ckpt_dir, threads=1)
    record_centres(model, data.x, layers, store_path)        # one pass per distinct RF box
    clusters = cluster_layer(store_path, layer, cfg, data)   # HDBSCAN + ground truth
    sub = fit_subnetwork(model, layer, unit, x, y, cfg, seed, swap=False)

:mod:`polysdk.studies.alexnet` strings them into resume units; everything here takes
what it needs as arguments (no study state), so each stage can be tested alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk.errors import ConfigError

__all__ = ["StudyData", "embedded_data", "folder_data", "train_model", "record_centres",
           "cluster_layer", "split_clusters", "fit_subnetwork", "unit_values", "auc",
           "flat_weights", "load_flat_weights", "restrict_to_unit", "weight_masks"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class StudyData:
    """The images the study ranks (``x``, normalised, 0 = mean colour), their labels,
    their generating factors (empty for an ImageFolder) and a labelled test set."""

    x: torch.Tensor
    labels: np.ndarray
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)
    classes: list[tuple[int, ...]] = field(default_factory=list)
    looks: tuple[str, ...] = ()
    x_test: torch.Tensor | None = None
    y_test: np.ndarray | None = None
    raw: Any = None            # the ShapesData (montage captions) or the ImageFolder
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int) -> str:
        """The generating factors of image ``i`` (or its class for an ImageFolder)."""
        if self.factors:
            f = self.factors
            return (f"{f['colour'][i]} {f['texture'][i]} {f['shape'][i]}\n"
                    f"bg {f['background'][i]}, r {float(f['radius'][i]):.2f}")
        name = self.class_names[int(self.labels[i])] if self.class_names else self.labels[i]
        return f"class {name}"

    def display(self, index: Sequence[int]) -> np.ndarray:
        """uint8 RGB images (sample, y, x, 3) for a montage."""
        x = self.x[torch.as_tensor(np.asarray(index, dtype=np.int64))]
        m = torch.as_tensor(self.mean).view(1, 3, 1, 1)
        s = torch.as_tensor(self.std).view(1, 3, 1, 1)
        img = ((x * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
        return img.numpy()


def embedded_data(n_per_class: int, n_test_per_class: int, size: int, looks: Sequence[str],
                  merge: Sequence[str], seed: int) -> StudyData:
    """The generated shapes set (train from ``seed``, test from ``seed + 1``)."""
    from polysdk.data.shapes import make_shapes

    train = make_shapes(n_per_class, size, looks=looks, merge=merge, seed=seed)
    test = make_shapes(n_test_per_class, size, looks=looks, merge=merge, seed=seed + 1,
                       stats=(train.mean, train.std)) if n_test_per_class > 0 else None
    return StudyData(train.tensor(), train.labels, train.factors, train.class_names,
                     train.merged_classes, train.classes, train.looks,
                     None if test is None else test.tensor(),
                     None if test is None else test.labels, train,
                     tuple(float(v) for v in train.mean), tuple(float(v) for v in train.std))


def check_image_folder(root: str | Path) -> Path:
    """``root`` when it is an ImageFolder (class subfolders holding images)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    path = Path(root).expanduser()
    hint = ("an ImageFolder root holds one subfolder per class with the images inside "
            "(root/dog/x.jpg, root/cat/y.png), as ImageNet's train folder does")
    if not path.is_dir():
        raise ConfigError(f"root={str(root)!r} is not a folder; {hint}.")
    classes = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    with_images = [d for d in classes
                   if any(f.suffix.lower() in IMG_EXTENSIONS for f in d.rglob("*"))]
    if not with_images:
        loose = sum(1 for f in path.iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
        found = f" (it holds {loose} loose images)" if loose else ""
        raise ConfigError(f"root={str(root)!r} is not an ImageFolder: no class subfolder "
                          f"with images{found}; {hint}.")
    return path


def folder_data(root: str | Path, max_images: int, seed: int, size: int = 224) -> StudyData:
    """An ImageNet-style folder: resize 256 (size * 8/7), centre crop ``size``,
    ImageNet normalisation; at most ``max_images`` (0: all), a seeded subset."""
    from torchvision import datasets, transforms

    path = check_image_folder(root)
    tf = transforms.Compose([
        transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    folder = datasets.ImageFolder(str(path), transform=tf)
    n = len(folder)
    index = np.arange(n)
    if max_images and n > max_images:
        index = np.sort(np.random.default_rng(seed).choice(n, int(max_images), replace=False))
    xs, ys = [], []
    for i in index:
        x, y = folder[int(i)]
        xs.append(x)
        ys.append(y)
    return StudyData(torch.stack(xs), np.asarray(ys, dtype=np.int64), {},
                     list(folder.classes), [], [], (), raw=folder,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)


# ----------------------------------------------------------------------------- model
def flat_weights(model: torch.nn.Module) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """Every parameter and buffer in one float32 vector, with (name, shape) pairs."""
    state = model.state_dict()
    spec = [(k, list(v.shape)) for k, v in state.items()]
    flat = np.concatenate([v.detach().cpu().float().reshape(-1).numpy() for v in state.values()])
    return flat, spec


def load_flat_weights(model: torch.nn.Module, flat: np.ndarray, spec: Sequence[Any]) -> None:
    state, start = {}, 0
    for name, shape in spec:
        n = int(np.prod(shape)) if shape else 1
        state[name] = torch.from_numpy(np.asarray(flat[start:start + n]).reshape(shape).copy())
        start += n
    model.load_state_dict(state)


def train_model(model: torch.nn.Module, data: StudyData, *, epochs: int, batch_size: int,
                lr: float, checkpoint_dir: str | Path | None, progress: bool = False
                ) -> dict[str, Any]:
    """Train with :func:`polysdk.train.fit` (Adam, cross entropy, a checkpoint per
    epoch, resumed); returns the history and the test accuracy per class."""
    import torch.nn.functional as F

    from polysdk.train import fit

    y = torch.as_tensor(data.labels)
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, y),
                                         batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def evaluate(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        if data.x_test is None:
            return {}
        pred = predict(m, data.x_test)
        return {"test_accuracy": float((pred == data.y_test).mean())}

    t0 = time.perf_counter()
    res = fit(model, loader, epochs=epochs, optimizer=opt, loss_fn=F.cross_entropy,
              evaluate=evaluate, checkpoint_dir=checkpoint_dir, progress=progress and "train")
    model.eval()
    out: dict[str, Any] = {"history": res.history, "seconds": time.perf_counter() - t0,
                           "start_epoch": res.start_epoch}
    if data.x_test is not None:
        pred = predict(model, data.x_test)
        out["test_accuracy"] = float((pred == data.y_test).mean())
        out["class_accuracy"] = [float((pred[data.y_test == c] == c).mean())
                                 for c in range(len(data.class_names))]
    out["train_accuracy"] = float((predict(model, data.x) == data.labels).mean())
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


# ----------------------------------------------------------------------------- record
def record_centres(model: torch.nn.Module, data: StudyData, layers: Sequence[str],
                   folder: str | Path, batch_size: int = 128, progress: bool = False
                   ) -> list[dict[str, Any]]:
    """Pre-ReLU centre activations of every channel of ``layers`` for every image, one
    forward pass per distinct receptive-field box (the layers whose centre boxes
    coincide share it), each pass a :class:`~polysdk.probe.Probe` with
    ``reduce="centre"`` into ``folder/box<i>.zarr`` (resumed after a kill)."""
    from polysdk.models.alexnet import receptive_field, rf_inputs
    from polysdk.probe import Probe
    from polysdk.store import ActivationStore

    size = int(data.x.shape[-1])
    groups: dict[Any, list[str]] = {}
    boxes = {}
    for layer in layers:
        box = receptive_field(model, layer, size)
        boxes[layer] = box
        groups.setdefault((box.y0, box.y1, box.x0, box.x1), []).append(layer)
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = []
    labels = torch.as_tensor(data.labels)
    for gi, (key, sites) in enumerate(groups.items()):
        box = boxes[sites[0]]
        path = Path(folder) / f"box{gi}.zarr"
        t0 = time.perf_counter()

        def batches() -> Any:
            for s in range(0, len(data), batch_size):
                yield rf_inputs(data.x[s:s + batch_size], box), labels[s:s + batch_size]

        mode = "a" if (path / "zarr.json").exists() else "w"
        with ActivationStore(path, mode=mode) as store:
            if store.n_samples < len(data):
                Probe(model, list(sites), store=store, reduce="centre").run(
                    batches(), progress=progress, total=-(-len(data) // batch_size))
        out.append({"store": str(path), "layers": list(sites), "box": list(key),
                    "rf_size": box.size, "grid": box.grid, "whole_image": box.whole_image,
                    "seconds": time.perf_counter() - t0})
    return out


def open_centres(groups: Sequence[Mapping[str, Any]], layer: str) -> xr.DataArray:
    from polysdk.store import ActivationStore

    for g in groups:
        if layer in g["layers"]:
            return ActivationStore(g["store"], mode="r")[layer]
    raise ConfigError(f"layer {layer!r} was not recorded; recorded: "
                      f"{[s for g in groups for s in g['layers']]}.")


# ----------------------------------------------------------------------------- clusters
def cluster_layer(acts: xr.DataArray, data: StudyData, top_k: int, min_cluster_size: int,
                  minor_share: float = 0.2) -> xr.Dataset:
    """:class:`~polysdk.detect.HDBSCANClusters` on the whole layer's centre vector,
    with the ground truth per unit (embedded set): the modal class of the top images
    and its share, whether that class is merged and both its looks are among the top
    images (``two_looks``: the smaller look >= ``minor_share`` of the class's top
    images), how many looks hold ``min_cluster_size`` or more of the top images
    (``n_looks``; ``multi_look``: two or more, whatever their classes), and the
    adjusted Rand index of the clusters against each factor."""
    from sklearn.metrics import adjusted_rand_score

    from polysdk.data.shapes import factor_codes
    from polysdk.detect import HDBSCANClusters

    n = acts.sizes["sample"]
    if top_k > n:
        raise ConfigError(f"top_k={top_k} but only {n} images were recorded; lower top_k or "
                          "use more images.")
    det = HDBSCANClusters(top_k=top_k, min_cluster_size=min_cluster_size).fit(acts)
    ds = det.result_.copy()
    top = ds["top_index"].values
    clusters = ds["cluster"].values
    units = top.shape[0]
    top_labels = data.labels[top]
    modal = np.array([np.bincount(r, minlength=len(data.class_names) or 1).argmax()
                      for r in top_labels])
    share = (top_labels == modal[:, None]).mean(1)
    ds["top_class"] = ("unit", modal.astype(np.int64))
    ds["top_class_share"] = ("unit", share)
    ds["top_class_merged"] = ("unit", np.isin(modal, data.merged))
    if data.factors:
        looks = data.factors["look"][top]
        minor = np.zeros(units)
        for u in range(units):
            group = data.classes[modal[u]]
            if len(group) < 2:
                continue
            in_class = looks[u][top_labels[u] == modal[u]]
            counts = np.array([(in_class == g).sum() for g in group], dtype=float)
            minor[u] = np.sort(counts)[-2] / max(counts.sum(), 1)
        ds["minor_look_share"] = ("unit", minor)
        ds["two_looks"] = ("unit", ds["top_class_merged"].values & (share >= 0.5)
                           & (minor >= minor_share))
        # looks that hold a cluster's worth of the unit's top images (any classes)
        n_looks = np.array([int((np.bincount(r, minlength=len(data.looks))
                                 >= min_cluster_size).sum()) for r in looks])
        ds["n_looks"] = ("unit", n_looks)
        ds["multi_look"] = ("unit", n_looks >= 2)
        names = ["look", "label", "colour", "texture", "shape", "background", "cx", "cy",
                 "radius"]
    else:
        names = ["label"]
    factors = {**data.factors, "label": data.labels}
    codes = {f: factor_codes(factors, f) for f in names}
    ari = np.full((units, len(names)), np.nan)
    for u in range(units):
        keep = clusters[u] >= 0
        if len(set(clusters[u][keep].tolist())) < 2:
            continue
        for j, f in enumerate(names):
            ari[u, j] = adjusted_rand_score(codes[f][top[u][keep]], clusters[u][keep])
    ds["ari"] = (("unit", "factor"), ari)
    ds = ds.assign_coords(factor=names, unit=np.arange(units))
    ds.attrs.update(top_k=int(top_k), min_cluster_size=int(min_cluster_size),
                    minor_share=float(minor_share))
    return ds


def split_clusters(ds: xr.Dataset, unit: int, holdout: float, seed: int
                   ) -> dict[str, np.ndarray]:
    """The image indices of the unit's two largest clusters (A = the larger... as
    numbered: A holds more images, ties by number), each split into train / test."""
    lab = ds["cluster"].values[unit]
    top = ds["top_index"].values[unit]
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    if len(ids) < 2:
        raise ConfigError(f"unit {unit} has {len(ids)} cluster(s)")
    order = ids[np.lexsort((ids, -counts))]
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for side, cid in zip("ab", order[:2]):
        members = top[lab == cid]
        perm = rng.permutation(len(members))
        n_test = int(round(holdout * len(members)))
        out[f"{side}_test"] = np.sort(members[perm[:n_test]])
        out[f"{side}_train"] = np.sort(members[perm[n_test:]])
        out[f"{side}_cluster"] = np.array(int(cid))
    return out


# ----------------------------------------------------------------------------- masks
def weight_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: m for n, m in masks.items() if n.endswith(".weight")}


def restrict_to_unit(masks: Mapping[str, torch.Tensor], layer: str, unit: int
                     ) -> dict[str, torch.Tensor]:
    """The target layer's masks cut to the unit's own filter (the other filters cannot
    reach the unit, so they would only pad the overlap null)."""
    out = {}
    for n, m in masks.items():
        out[n] = m[unit:unit + 1] if n.rsplit(".", 1)[0] == layer else m
    return out


def conv_params_to(model: torch.nn.Module, layer: str) -> list[str]:
    """The conv modules up to and including ``layer`` (what a subnetwork masks)."""
    from polysdk.models.alexnet import conv_layers

    names = list(conv_layers(model))
    return names[: names.index(layer) + 1]


def fit_subnetwork(model: torch.nn.Module, layer: str, unit: int, x: torch.Tensor,
                   y: np.ndarray, *, swap: bool, seed: int, epochs: int, lr: float,
                   batch_size: int, lam: float, milestones: Sequence[int],
                   temperature_end: float, progress: bool = False) -> Any:
    """One continuous-sparsification subnetwork (contrastive; label 1 = cluster A;
    ``swap``: cluster B's), masks on every conv weight and bias up to ``layer``."""
    from polysdk.mask import ContinuousSparsification

    cs = ContinuousSparsification(
        model, layer, unit=unit, position="centre", params=conv_params_to(model, layer),
        objective="contrastive", swap=swap, lam=lam, temperature=(1.0, temperature_end),
        epochs=epochs, lr=lr, milestones=tuple(milestones), batch_size=batch_size,
        seed=seed, progress=progress)
    return cs.fit(x, torch.as_tensor(y))


@torch.no_grad()
def unit_values(model: torch.nn.Module, layer: str, unit: int, x: torch.Tensor,
                masks: Mapping[str, torch.Tensor] | None = None, batch_size: int = 128
                ) -> np.ndarray:
    """The unit's pre-ReLU centre activation on ``x`` (through ``masks`` if given)."""
    from polysdk import dims as D
    from polysdk.mask import SiteReader, masked_call

    out = []
    model.eval()
    with SiteReader(model, layer) as reader:
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            act = reader.run(lambda: model(xb) if masks is None
                             else masked_call(model, masks, xb, detach=True))
            out.append(D.select_unit(act, D.default_dims(act.ndim), unit, "centre"))
    return torch.cat(out).cpu().numpy().astype(np.float64)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random ``pos`` value > a random ``neg`` value), ties count half.

    >>> auc(np.array([2.0, 3.0]), np.array([1.0, 2.0]))
    0.875
    """
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def to_json(value: Any) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
