"""Lesson 6: noise and the Lipschitz loss (Usama & Chang). One MNIST image under Gaussian noise
of a chosen level, with the class probabilities of a standard net and of a net trained with the
Lipschitz loss side by side, and both nets' test accuracy against the noise level."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..attacks import noise_accuracy_curve
from ..data import gaussian_noise
from .mnist import mnist_subset, small_mnist_net

SIGMAS = tuple(float(s) for s in np.round(np.linspace(0.0, 1.5, 16), 2))
NETS = {"standard": "tab:blue", "lipschitz loss": "tab:green"}


@functools.lru_cache(maxsize=4)
def noise_curves(beta: float) -> dict[str, list[float]]:
    """Test accuracy (%) of the standard net and the Lipschitz-loss net (weight ``beta``) at
    every level of SIGMAS (pixel noise N(0, sigma^2), not clamped, as in the paper)."""
    _, test = mnist_subset()
    return {name: noise_accuracy_curve(_net(name, beta), test, "gaussian", SIGMAS)
            for name in NETS}


def _net(name: str, beta: float) -> torch.nn.Module:
    return small_mnist_net(name, None if name == "standard" else beta)


def draw_noise(ax: plt.Axes, sigma: float = 0.5, image: int = 0, beta: float = 5.0
               ) -> dict[str, float]:
    """Left: test image ``image`` with noise of level ``sigma`` (seeded: the same draw for both
    nets). Middle: each net's class probabilities on it. Right: accuracy against sigma."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    _, test = mnist_subset()
    x, label = test.tensors[0][image:image + 1], int(test.tensors[1][image])
    noisy = gaussian_noise(x, float(sigma), torch.Generator().manual_seed(image))
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")
    picture = ax.inset_axes((0.0, 0.1, 0.25, 0.8))
    bars = ax.inset_axes((0.33, 0.15, 0.28, 0.7))
    curves = ax.inset_axes((0.72, 0.15, 0.28, 0.7))
    picture.imshow(noisy.reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
    picture.set(xticks=[], yticks=[], title=f"label {label}, sigma {sigma:g}")
    shown: dict[str, float] = {}
    for k, (name, colour) in enumerate(NETS.items()):
        net = _net(name, beta)
        with torch.no_grad():
            probs = net(noisy).softmax(1)[0]
        bars.bar(np.arange(10) + (k - 0.5) * 0.4, probs.numpy(), width=0.4, color=colour,
                 label=f"{name}: says {int(probs.argmax())}")
        shown[f"{name} p(label)"] = float(probs[label])
        accuracy = noise_curves(float(beta))[name]
        curves.plot(SIGMAS, accuracy, color=colour, label=name)
        shown[f"{name} accuracy"] = float(np.interp(sigma, SIGMAS, accuracy))
    bars.set(xticks=range(10), ylim=(0, 1), ylabel="probability", title="class probabilities")
    bars.legend(fontsize=7)
    curves.axvline(sigma, color="k", ls=":", lw=0.8)
    curves.set(xlabel="noise sigma", ylabel="test accuracy (%)", ylim=(0, 100),
               title=f"{len(test)} test images")
    curves.legend(fontsize=7)
    return shown
