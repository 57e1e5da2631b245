"""Architectures.

Fully connected nets expose their weight matrices W^0 ... W^l in the order LipSDP needs
(Pauli et al., eq. (3)): x^{i+1} = phi(W^i x^i + b^i), f(x) = W^l x^l + b^l.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .resnets import CifarResNet, residual_net  # noqa: F401  (the residual nets live there)


@dataclass(frozen=True)
class Activation:
    """A slope-restricted activation: alpha <= (phi(x) - phi(y)) / (x - y) <= beta (eq. (2))."""

    name: str
    module: type[nn.Module]
    alpha: float
    beta: float


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", nn.ReLU, 0.0, 1.0),
    "tanh": Activation("tanh", nn.Tanh, 0.0, 1.0),
    "sigmoid": Activation("sigmoid", nn.Sigmoid, 0.0, 0.25),
    "softplus": Activation("softplus", nn.Softplus, 0.0, 1.0),
    "elu": Activation("elu", nn.ELU, 0.0, 1.0),
}


def activation(name: str) -> Activation:
    """Look up a slope-restricted activation by name, with a helpful error."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


class FullyConnected(nn.Module):
    """Feed-forward net ``widths[0] -> ... -> widths[-1]`` with one activation on every hidden layer
    and a linear output layer (Pauli et al., eq. (3))."""

    def __init__(self, widths: Sequence[int], activation_name: str = "relu"):
        super().__init__()
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must list at least two positive sizes, got {list(widths)}")
        self.widths = [int(w) for w in widths]
        self.act = activation(activation_name)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(self.widths) - 2:
                layers.append(self.act.module())
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def weights(self) -> list[np.ndarray]:
        """W^0, ..., W^l as float64 numpy arrays (W^i has shape n_{i+1} x n_i)."""
        return [m.weight.detach().cpu().double().numpy() for m in self.linears]

    def biases(self) -> list[np.ndarray]:
        return [m.bias.detach().cpu().double().numpy() for m in self.linears]

    @property
    def slope_bounds(self) -> tuple[float, float]:
        return self.act.alpha, self.act.beta


def fully_connected(widths: Sequence[int], activation_name: str = "relu", seed: int | None = None
                    ) -> FullyConnected:
    """A randomly initialised :class:`FullyConnected` net (PyTorch's default init), seeded if asked."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FullyConnected(widths, activation_name)
    return FullyConnected(widths, activation_name)


def from_weights(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                 activation_name: str) -> FullyConnected:
    """Build a :class:`FullyConnected` net with the given W^i and b^i (e.g. a net from a paper)."""
    weights = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    biases = [np.atleast_1d(np.asarray(b, dtype=np.float64)) for b in biases]
    if len(weights) != len(biases):
        raise ValueError(f"got {len(weights)} weight matrices but {len(biases)} bias vectors")
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.shape[1] != widths[i] or b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: W has shape {w.shape}, b has shape {b.shape}; "
                             f"expected W of shape (n_out, {widths[i]}) and b of shape (n_out,)")
    net = FullyConnected(widths, activation_name).double()
    with torch.no_grad():
        for lin, w, b in zip(net.linears, weights, biases):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    return net


class PooledMLP(nn.Module):
    """Fixed average pooling of 28x28 images to ``side x side`` (``side^2 = widths[0]``; 2x2
    pooling to 14x14 = 196 inputs for the MNIST nets of Pauli et al., 196-50-10), followed by a
    :class:`FullyConnected` net. LipSDP is computed on the fully connected part, as in the paper;
    the pooling layer's own factor (spectral norm 1/kernel) is not included."""

    def __init__(self, widths: Sequence[int], activation_name: str = "tanh"):
        super().__init__()
        side = int(round(np.sqrt(widths[0])))
        if side * side != widths[0] or 28 % side:
            raise ValueError(f"widths[0]={widths[0]} must be side^2 with side dividing 28")
        self.pool = nn.AvgPool2d(28 // side)
        self.mlp = FullyConnected(widths, activation_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(x))

    def weights(self) -> list[np.ndarray]:
        return self.mlp.weights()

    @property
    def slope_bounds(self) -> tuple[float, float]:
        return self.mlp.slope_bounds


def pauli_mnist_net(activation_name: str = "tanh", widths: Sequence[int] = (196, 50, 10),
                    seed: int | None = None) -> PooledMLP:
    """Pauli et al. MNIST net: 2x2 average pooling, then 196-50-10 (paper: tanh; code: ReLU)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return PooledMLP(widths, activation_name)


def with_output_activation(model: nn.Module, activation_name: str) -> nn.Sequential:
    """``model`` followed by an activation on its output. The original CLIP code put one after
    every linear layer, logits included, and the CLIP regression net ends in a sigmoid."""
    return nn.Sequential(model, activation(activation_name).module())


def madry_cnn(activation_name: str = "relu", seed: int | None = None) -> nn.Sequential:
    """The "simple CNN" of Madry et al. (MadryLab/mnist_challenge, model.py), used by Bungert et
    al. for Fashion-MNIST: conv 5x5x32 (same padding), ReLU, 2x2 max-pool; conv 5x5x64, ReLU,
    2x2 max-pool; FC 3136 -> 1024, ReLU; FC 1024 -> 10. 3,274,634 parameters."""
    act = activation(activation_name).module
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), act(), nn.Linear(1024, 10))


def usama_mnist_cnn(seed: int | None = None) -> nn.Sequential:
    """Usama & Chang's MNIST net: "one convolutional layer, one fully connected layer and an
    output layer", sizes unstated. Our choice: conv 5x5x32 (same padding), ReLU, 2x2 max-pool;
    FC 6272 -> 128, ReLU; FC 128 -> 10 (805,066 parameters)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(14 * 14 * 32, 128), nn.ReLU(),
                             nn.Linear(128, 10))


# Fazlyab, Entesari et al.'s nets (configs.md 3.2): conv (in, out, kernel, stride, padding),
# then dense widths; ReLU after every layer but the last.
CRM_ARCHITECTURES: dict[str, tuple[tuple[int, int], list[tuple[int, int, int, int, int]], list[int]]] = {
    # name: ((channels, side) of the input, convs, dense widths after the flatten)
    "4C3F": ((1, 28), [(1, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1)],
             [512, 512, 10]),
    "6C2F": ((3, 32), [(3, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1),
                       (64, 64, 3, 1, 1), (64, 64, 4, 2, 1)], [512, 10]),
    "6C2F-LocalLip": ((3, 32), [(3, 32, 3, 1, 1), (32, 32, 3, 1, 1), (32, 32, 4, 2, 1),
                                (32, 64, 3, 1, 1), (64, 64, 3, 1, 1), (64, 64, 4, 2, 1)],
                      [512, 10]),
    "8C2F": ((3, 64), [(3, 64, 3, 1, 1), (64, 64, 3, 1, 0), (64, 64, 4, 2, 0), (64, 128, 3, 1, 1),
                       (128, 128, 3, 1, 1), (128, 128, 4, 2, 0), (128, 256, 3, 1, 1),
                       (256, 256, 4, 2, 0)], [256, 200]),
}


def crm_net(name: str, seed: int | None = None) -> nn.Sequential:
    """4C3F (MNIST), 6C2F (CIFAR-10, the official code's variant), 6C2F-LocalLip (the variant of
    Huang et al. the paper cites) or 8C2F (Tiny-ImageNet, the paper's 8C2F* with padding 0 on the
    second conv), exactly as configs.md 3.2 lists them."""
    if name not in CRM_ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(CRM_ARCHITECTURES)}")
    (channels, side), convs, dense = CRM_ARCHITECTURES[name]
    layers: list[nn.Module] = []
    for c_in, c_out, k, s, p in convs:
        layers += [nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU()]
        side = (side + 2 * p - k) // s + 1
    width = convs[-1][1] * side * side
    layers.append(nn.Flatten())
    for i, out in enumerate(dense):
        layers.append(nn.Linear(width, out))
        if i < len(dense) - 1:
            layers.append(nn.ReLU())
        width = out
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for m in layers:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return nn.Sequential(*layers)
