"""Record activations of a small MLP on scikit-learn's digits, then read them back.

Runs offline in a few seconds::

    python examples/record_activations.py --out runs/digits.zarr

It trains a 64-128-128-10 MLP for a few epochs, streams the two hidden layers into an
ActivationStore (a Zarr v3 store), reopens it with *plain xarray* (no polysdk code)
and prints, per layer, how many units fire for two or more digit classes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import xarray as xr
from sklearn.datasets import load_digits
from torch import nn

from polysdk import ActivationStore, Probe


def train_mlp(x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            loss = nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/digits.zarr")
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model = train_mlp(x, y).eval()
    accuracy = (model(x).argmax(1) == y).float().mean().item()

    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    with ActivationStore(args.out, mode="w", attrs={"model": "digits-mlp"}) as store:
        Probe(model, ["1", "3"], store=store).run(batches)

    tree = xr.open_datatree(args.out, engine="zarr")  # plain xarray, no polysdk
    print(f"train accuracy {accuracy:.3f}; store {args.out}: {store.n_samples} samples")
    for site in ("1", "3"):
        acts = tree[site].to_dataset()["activation"]
        fires = (acts > 0).groupby(acts["label"]).mean("sample")  # (label, unit) firing rate
        classes_per_unit = (fires >= 0.5).sum("label").values
        print(
            f"site {site}: {acts.sizes['unit']} units; dead {int((classes_per_unit == 0).sum())}, "
            f"firing for 1 class {int((classes_per_unit == 1).sum())}, "
            f">=2 classes {int((classes_per_unit >= 2).sum())}; "
            f"mean firing rate {float(np.mean(fires.values)):.2f}"
        )


if __name__ == "__main__":
    main()
