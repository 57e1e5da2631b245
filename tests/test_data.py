"""Data loaders: offline .npz, missing-file errors, Tiny-ImageNet folder layout, synthetic
stand-ins, noise."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lipcore.data import (DATASETS, DatasetCorrupt, DatasetNotFound, gaussian_noise, load_dataset,
                          resolve_data_dir, synthetic_dataset, uniform_noise)

SHARED = os.environ.get("LIPCORE_DATA")
needs_mnist = pytest.mark.skipif(not SHARED or not Path(SHARED, "mnist.npz").is_file(),
                                 reason="LIPCORE_DATA with mnist.npz not set")


@needs_mnist
def test_mnist_from_the_data_dir_is_real_and_in_original_order():
    data = load_dataset("mnist")
    x, y = data.train.tensors
    assert data.source == "real" and x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert len(data.test) == 10000 and data.input_shape == (1, 28, 28)


@needs_mnist
def test_fashion_mnist_loads():
    data = load_dataset("fashion_mnist")
    assert data.train.tensors[0].shape == (60000, 1, 28, 28) and data.num_classes == 10


def test_missing_npz_in_a_data_dir_names_the_file_and_the_folder(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    assert "fashion_mnist.npz" in str(err.value) and str(tmp_path) in str(err.value)


def test_an_empty_data_dir_says_where_to_put_the_file_not_download_true(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "mnist.npz" in message and str(tmp_path) in message
    assert "download=True" not in message


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_truncated_or_corrupt_npz_names_the_file_and_the_fix(tmp_path, damage):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x_train=np.zeros((50, 28, 28), np.uint8), y_train=np.zeros(50),
                        x_test=np.zeros((10, 28, 28), np.uint8), y_test=np.zeros(10))
    data = good.read_bytes()
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a zip" * 100)
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(bad) in str(err.value) and "copy mnist.npz again" in str(err.value)


def test_missing_cifar_names_the_file(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar10.npz"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_missing_tiny_imagenet_explains_the_layout(tmp_path):
    with pytest.raises(DatasetNotFound, match="tiny-imagenet-200"):
        load_dataset("tiny_imagenet", data_dir=tmp_path)


def test_nonexistent_data_dir_and_unknown_dataset(tmp_path):
    with pytest.raises(DatasetNotFound, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", data_dir=tmp_path)


def test_env_variable_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other.resolve()


def test_npz_with_missing_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_dataset("mnist", data_dir=tmp_path)


def test_color_npz_becomes_nchw(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=np.arange(4), x_test=x[:2],
             y_test=np.arange(2))
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.train.tensors[0].shape == (4, 3, 32, 32)
    np.testing.assert_allclose(data.train.tensors[0][1, 2].numpy(), x[1, :, :, 2] / 255.0,
                               rtol=1e-6)


def test_tiny_imagenet_standard_folder_layout(tmp_path):
    from PIL import Image
    root = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    for wnid in ("n01", "n02"):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(("n02", "n01", "n02")):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset("tiny_imagenet", data_dir=tmp_path)
    assert data.train.tensors[0].shape == (4, 3, 64, 64)
    assert data.train.tensors[1].tolist() == [0, 0, 1, 1]
    assert data.test.tensors[1].tolist() == [1, 0, 1] and data.num_classes == 2


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synthetic_stand_ins_have_the_real_shapes_and_say_so(name):
    channels, h, w, classes, _, _ = DATASETS[name]
    data = synthetic_dataset(name, n_train=32, n_test=16, seed=3)
    x, y = data.train.tensors
    assert data.source == "synthetic" and "synthetic" in data.origin
    assert x.shape == (32, channels, h, w) and 0 <= x.min() and x.max() <= 1
    assert int(y.max()) < classes and data.num_classes == classes
    again = synthetic_dataset(name, n_train=32, n_test=16, seed=3)
    assert torch.equal(again.train.tensors[0], x)


def test_noise_helpers_respect_their_ranges():
    x = torch.rand(64, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    noisy = gaussian_noise(x, 1.0, gen)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, x)
    assert torch.equal(gaussian_noise(x, 0.0), x)
    raw = uniform_noise(x, 0.3, gen, clamp=False)
    assert (raw - x).abs().max() <= 0.3 + 1e-7 and (raw - x).min() < -0.2
    with pytest.raises(ValueError):
        gaussian_noise(x, -1.0)


def test_failed_download_says_how_to_work_offline(monkeypatch, tmp_path):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.delenv("LIPCORE_DATA", raising=False)
    monkeypatch.setattr("lipcore.data.DEFAULT_DOWNLOAD_ROOT", tmp_path)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFound, match="LIPCORE_DATA") as err:
        load_dataset("cifar10")
    assert "cifar10.npz" in str(err.value) and "could not download" in str(err.value)
