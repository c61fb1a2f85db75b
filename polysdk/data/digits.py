"""Image classification data for seed 001: embedded digits, MNIST / Fashion-MNIST from disk.

    from polysdk.data.digits import load_images
    data = load_images("digits")                       # scikit-learn's 8x8 digits, no download
    data = load_images("mnist", root="~/data")         # torchvision's files under ~/data/MNIST/raw
    data.x_train.shape, data.y_test.shape, data.n_features   # (1437, 64), (360,), 64

``digits`` is scikit-learn's copy of the UCI digits (1797 images of 8x8 pixels, 0..16,
shipped inside the package): scaled to [0, 1] by / 16 and split once, stratified by
class, 80/20 with ``random_state=0`` (1437 train, 360 test). ``mnist`` and
``fashion_mnist`` are read by torchvision from ``root`` (no download): the four raw
idx-ubyte files under ``root/MNIST/raw/`` (``root/FashionMNIST/raw/``), scaled by / 255
and flattened to 784 inputs, as the original. A missing file raises
:class:`~polysdk.errors.ConfigError` naming the files and how to get them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polysdk.errors import ConfigError

__all__ = ["ImageData", "load_images", "DATASETS", "RAW_FILES"]

DATASETS = ("digits", "mnist", "fashion_mnist")
#: the raw files torchvision reads, per dataset: (folder under root, file names)
RAW_FILES = {
    "mnist": ("MNIST", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "fashion_mnist": ("FashionMNIST", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
}
_CLASSES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"],
}


@dataclass
class ImageData:
    """Flattened images in [0, 1] (float32) and integer labels, train and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def check_dataset(name: str) -> str:
    """The canonical dataset name (``"fashion-mnist"`` -> ``"fashion_mnist"``)."""
    key = str(name).lower().replace("-", "_")
    if key == "fashionmnist":
        key = "fashion_mnist"
    if key not in DATASETS:
        from polysdk.errors import closest_names

        close = closest_names(key, list(DATASETS), n=2)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown dataset {name!r}.{hint} Choose one of {list(DATASETS)}.")
    return key


def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target,
                                          random_state=0)
    return ImageData("digits", torch.from_numpy(xtr), torch.from_numpy(ytr).long(),
                     torch.from_numpy(xte), torch.from_numpy(yte).long(), _CLASSES["digits"])


def missing_files(name: str, root: str | Path) -> list[Path]:
    """The raw files of ``name`` that are not under ``root``."""
    folder, files = RAW_FILES[name]
    raw = Path(root).expanduser() / folder / "raw"
    return [raw / f for f in files if not (raw / f).is_file()]


def _torchvision(name: str, root: str | Path | None) -> ImageData:
    from torchvision import datasets

    folder, _ = RAW_FILES[name]
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    if root is None:
        raise ConfigError(f"dataset {name!r} is read from a local folder: pass root=PATH "
                          f"(--set root=PATH) holding {folder}/raw/ with torchvision's files.")
    missing = missing_files(name, root)
    if missing:
        gz = [p for p in missing if p.with_name(p.name + ".gz").is_file()]
        hint = (f" {len(gz)} of them are there gzipped: gunzip "
                f"{' '.join(str(p) + '.gz' for p in gz)}." if gz else "")
        raise ConfigError(
            f"{name}: {len(missing)} raw file(s) missing under {Path(root).expanduser()}: "
            f"{', '.join(str(p) for p in missing)}.{hint} Get them once with network access: "
            f"python -c \"import torchvision; torchvision.datasets.{cls.__name__}("
            f"'{root}', download=True); torchvision.datasets.{cls.__name__}('{root}', "
            f"train=False, download=True)\", or copy the four idx-ubyte files into "
            f"{Path(root).expanduser() / folder / 'raw'}.")
    out = []
    for train in (True, False):
        ds = cls(str(Path(root).expanduser()), train=train, download=False)
        x = ds.data.reshape(ds.data.shape[0], -1).float() / 255.0
        out += [x, ds.targets.long()]
    return ImageData(name, *out, classes=_CLASSES[name])


def load_images(name: str = "digits", root: str | Path | None = None) -> ImageData:
    """Load ``digits`` (embedded), ``mnist`` or ``fashion_mnist`` (from ``root``)."""
    key = check_dataset(name)
    if key == "digits":
        return _digits()
    return _torchvision(key, root)
