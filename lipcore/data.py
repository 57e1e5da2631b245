"""Datasets: offline Keras-style .npz, torchvision loaders, synthetic stand-ins, and noise.

Where data comes from, in order:
1. ``data_dir`` argument, else the ``LIPCORE_DATA`` environment variable: a folder holding
   ``<name>.npz`` (arrays x_train, y_train, x_test, y_test, uint8; images (N, H, W) or
   (N, H, W, C)), or torchvision's own layout for that dataset, or for Tiny-ImageNet the
   standard ``tiny-imagenet-200/`` folder.
2. No folder given: torchvision downloads into ``~/.cache/lipcore/data`` (needs internet).
A folder that lacks the dataset raises :class:`DatasetNotFound`, naming the file to put where.

Images come back as float32 tensors in [0, 1], shape (N, C, H, W); labels as int64.
Every :class:`ImageData` says whether it is ``real`` or a ``synthetic`` stand-in, and outputs
carry that label (``results.json["data"]``).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DATASETS = {
    # name: (channels, height, width, classes, npz file, torchvision class or None)
    "mnist": (1, 28, 28, 10, "mnist.npz", "MNIST"),
    "fashion_mnist": (1, 28, 28, 10, "fashion_mnist.npz", "FashionMNIST"),
    "cifar10": (3, 32, 32, 10, "cifar10.npz", "CIFAR10"),
    "stl10": (3, 96, 96, 10, "stl10.npz", "STL10"),
    "tiny_imagenet": (3, 64, 64, 200, "tiny_imagenet.npz", None),
}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
}
DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "lipcore" / "data"


class DatasetNotFound(FileNotFoundError):
    """A dataset is not where it was looked for; the message says where to put which file."""


@dataclass
class ImageData:
    """Train and test splits of one dataset, with provenance."""

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    source: str          # "real" or "synthetic"
    origin: str          # the file or folder it came from, or how it was generated
    fingerprint: str     # content hash, for cache keys

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$LIPCORE_DATA``, else None (use torchvision's downloader)."""
    chosen = data_dir if data_dir is not None else os.environ.get("LIPCORE_DATA") or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise DatasetNotFound(f"data directory {path} does not exist; pass data_dir=... or set "
                              f"LIPCORE_DATA to the folder holding mnist.npz etc.")
    return path


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """Load a real dataset by name (see :data:`DATASETS`), from the data dir or torchvision."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    channels, height, width, classes, npz_name, tv_name = DATASETS[name]
    root = resolve_data_dir(data_dir)
    if root is not None and (root / npz_name).is_file():
        return _from_npz(name, root / npz_name, classes)
    if name == "tiny_imagenet":
        folder = (root or DEFAULT_DOWNLOAD_ROOT) / "tiny-imagenet-200"
        if folder.is_dir():
            return _tiny_imagenet(folder)
        raise DatasetNotFound(
            f"Tiny-ImageNet not found: put the standard 'tiny-imagenet-200/' folder (train/<wnid>/"
            f"images/*.JPEG, val/images + val/val_annotations.txt, wnids.txt) or "
            f"'{npz_name}' in {root or DEFAULT_DOWNLOAD_ROOT}")
    return _from_torchvision(name, tv_name, root, classes, npz_name)


class DatasetCorrupt(ValueError):
    """A dataset file exists but cannot be read; the message names it and the fix."""


def _from_npz(name: str, path: Path, classes: int) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise DatasetCorrupt(f"{path} lacks arrays {sorted(missing)}; expected "
                                     "Keras-style x_train, y_train, x_test, y_test")
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DatasetCorrupt:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetCorrupt(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); copy "
                             f"{path.name} again (the data folder's SHA256SUMS, if it has one, "
                             "tells a good copy)") from None
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return ImageData(name, _tensors(arrays["x_train"], arrays["y_train"]),
                     _tensors(arrays["x_test"], arrays["y_test"]), classes, "real", str(path),
                     digest.hexdigest()[:16])


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.asarray(x))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return TensorDataset(x.float().div_(255.0).contiguous(),
                         torch.from_numpy(np.asarray(y).reshape(-1).astype(np.int64)))


def _from_torchvision(name: str, tv_name: str, root: Path | None, classes: int,
                      npz_name: str) -> ImageData:
    import torchvision

    download = root is None
    target = root or DEFAULT_DOWNLOAD_ROOT
    cls = getattr(torchvision.datasets, tv_name)
    split_kw = ({"split": "train"}, {"split": "test"}) if name == "stl10" else \
        ({"train": True}, {"train": False})
    try:
        parts = [cls(str(target), download=download, **kw) for kw in split_kw]
    except RuntimeError as exc:        # torchvision: "Dataset not found or corrupted"
        if root is not None:            # torchvision's own hint (download=True) misleads here
            raise DatasetNotFound(
                f"{name} not found in {root}: put '{npz_name}' (Keras-style x_train, y_train, "
                f"x_test, y_test) there, or unset data_dir/LIPCORE_DATA to let torchvision "
                f"download it (needs internet)") from None
        raise DatasetNotFound(f"{name} not found: torchvision could not download it to {target} "
                              f"(no internet?); set LIPCORE_DATA to a folder holding "
                              f"'{npz_name}' ({exc})") from exc
    except OSError as exc:             # URLError and friends from the downloader
        raise DatasetNotFound(f"{name}: torchvision could not download it to {target} ({exc}); "
                              f"set LIPCORE_DATA to a folder holding '{npz_name}'") from exc
    arrays = [_torchvision_arrays(p) for p in parts]
    digest = hashlib.sha256(b"".join(a.tobytes() for xy in arrays for a in xy)).hexdigest()[:16]
    return ImageData(name, _tensors(*arrays[0]), _tensors(*arrays[1]), classes, "real",
                     f"torchvision {tv_name} in {target}", digest)


def _torchvision_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.data
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if data.ndim == 4 and data.shape[1] == 3:          # STL-10 stores (N, C, H, W)
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(dataset, "targets", None)
    labels = getattr(dataset, "labels", None) if labels is None else labels
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return data, labels


def _tiny_imagenet(folder: Path) -> ImageData:
    """The standard Tiny-ImageNet layout: train/<wnid>/images/*.JPEG and val/images with
    val/val_annotations.txt (or an already sorted val/<wnid>/ folder)."""
    from PIL import Image

    wnids = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, index[p.parent.parent.name])
             for p in sorted((folder / "train").glob("*/images/*.JPEG"))]
    annotations = folder / "val" / "val_annotations.txt"
    if annotations.is_file():
        rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line]
        val = [(folder / "val" / "images" / f, index[w]) for f, w in rows]
    else:
        val = [(p, index[p.parent.name]) for p in sorted((folder / "val").glob("*/*.JPEG"))]

    def stack(items):
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in items])
        return x, np.array([c for _, c in items])
    (xt, yt), (xv, yv) = stack(train), stack(val)
    digest = hashlib.sha256(xt.tobytes() + xv.tobytes()).hexdigest()[:16]
    return ImageData("tiny_imagenet", _tensors(xt, yt), _tensors(xv, yv), len(wnids), "real",
                     str(folder), digest)


def synthetic_dataset(name: str, n_train: int = 512, n_test: int = 256, seed: int = 0
                      ) -> ImageData:
    """A small learnable stand-in with the real dataset's shape and classes, labelled synthetic.

    Each class is a fixed random template; samples are templates plus noise, clipped to [0, 1].
    Used to test pipelines for datasets that are not available offline (CIFAR-10, STL-10,
    Tiny-ImageNet); every output built from it reports ``data: synthetic``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    channels, height, width, classes, _, _ = DATASETS[name]
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, channels, height, width, generator=gen)

    def draw(n: int) -> TensorDataset:
        y = torch.randint(0, classes, (n,), generator=gen)
        x = templates[y] + 0.15 * torch.randn(n, channels, height, width, generator=gen)
        return TensorDataset(x.clamp_(0.0, 1.0), y)
    return ImageData(name, draw(n_train), draw(n_test), classes, "synthetic",
                     f"synthetic stand-in (seed {seed}, {n_train}/{n_test} samples)",
                     f"synthetic-{name}-{seed}-{n_train}-{n_test}")


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None,
                   clamp: bool = True) -> torch.Tensor:
    """x + N(0, sigma^2) per pixel, clamped to [0, 1] unless ``clamp=False``."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noisy = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return noisy.clamp(0.0, 1.0) if clamp else noisy


def uniform_noise(x: torch.Tensor, b: float, generator: torch.Generator | None = None,
                  clamp: bool = True) -> torch.Tensor:
    """x + U(-b, b) per pixel, clamped to [0, 1] unless ``clamp=False``."""
    if b < 0:
        raise ValueError(f"b must be >= 0, got {b}")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    noisy = x + b * (2.0 * u - 1.0)
    return noisy.clamp(0.0, 1.0) if clamp else noisy


def ring_label(points: np.ndarray) -> np.ndarray:
    """Pauli et al. 2D classes by r^2 = |p - (0.5, 0.5)|^2: 2 inside radius 0.2, 1 in the ring
    0.2-0.4, 0 outside."""
    r2 = ((points - 0.5) ** 2).sum(axis=1)
    return np.where(r2 <= 0.04, 2, np.where(r2 <= 0.16, 1, 0))


def pauli_2d(seed: int = 1612111977, n_train: int = 50, n_test: int = 5000) -> ImageData:
    """The 2D three-class toy data of Pauli et al. exactly as the original code drew it:
    ``np.random.seed(seed)``, x = rand(n, 1), y = rand(n, 1) (uniform on [0, 1]^2), then a
    discarded rand(100, 2) and the test points rand(n_test, 2), all from the same stream."""
    state = np.random.RandomState(seed)           # the legacy global generator's algorithm
    x, y = state.rand(n_train, 1), state.rand(n_train, 1)
    train = np.hstack([x, y])
    state.rand(100, 2)
    test = state.rand(n_test, 2)

    def dataset(p: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(p).float(), torch.from_numpy(ring_label(p)))
    return ImageData("pauli_2d", dataset(train), dataset(test), 3, "real",
                     f"generated as in the original code (seed {seed})",
                     f"pauli2d-{seed}-{n_train}-{n_test}")
