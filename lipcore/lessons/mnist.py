"""Small MNIST nets the lessons train themselves in a few seconds (and cache per session):
784-64-64-10 ReLU MLPs on the first 5,000 training images, tested on the first test images."""
from __future__ import annotations

import functools

from torch import nn
from torch.utils.data import TensorDataset

from ..data import load_dataset
from ..models import fully_connected
from ..progress import quiet
from ..trainers import LipschitzLossConfig, TrainConfig, train, train_lipschitz_loss

N_TRAIN, N_TEST = 5000, 500
EPOCHS = 3
# method -> its default strength: the L2 penalty's lambda, the Lipschitz loss's beta
METHODS_MNIST = {"standard": 0.0, "l2": 0.01, "lipschitz loss": 5.0}


@functools.lru_cache(maxsize=1)
def mnist_subset() -> tuple[TensorDataset, TensorDataset]:
    """(first N_TRAIN training images, first N_TEST test images) of MNIST from ``$LIPCORE_DATA``
    (the README's Data section; a missing file raises DatasetNotFound saying where to put it)."""
    mnist = load_dataset("mnist")
    return (TensorDataset(*(t[:N_TRAIN] for t in mnist.train.tensors)),
            TensorDataset(*(t[:N_TEST] for t in mnist.test.tensors)))


@functools.lru_cache(maxsize=16)
def small_mnist_net(method: str = "standard", strength: float | None = None, seed: int = 0,
                    sigma_train: float = 0.25) -> nn.Module:
    """A 784-64-64-10 ReLU net trained for EPOCHS epochs on :func:`mnist_subset` with ``method``
    at ``strength`` (None: the method's default in METHODS_MNIST; the Lipschitz loss draws its
    noisy copies with ``sigma_train``). About two seconds; cached."""
    if method not in METHODS_MNIST:
        raise ValueError(f"method must be one of {tuple(METHODS_MNIST)}, got {method!r}")
    strength = METHODS_MNIST[method] if strength is None else float(strength)
    train_set, _ = mnist_subset()
    net = fully_connected([784, 64, 64, 10], "relu", seed=seed)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=100, lr=0.003, shuffle=True,
                      l2=strength if method == "l2" else 0.0)
    with quiet():
        if method == "lipschitz loss":
            train_lipschitz_loss(net, train_set, cfg, LipschitzLossConfig(beta=strength,
                                                                     sigma=sigma_train),
                                 seed=seed)
        else:
            train(net, train_set, cfg)
    return net.eval()
