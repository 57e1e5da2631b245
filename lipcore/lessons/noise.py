"""Lesson 6: noise and the Lipschitz loss (Usama & Chang). One MNIST image under Gaussian noise
of a chosen level, the class probabilities and the difference quotient k of a standard net and
of a net trained with the Lipschitz loss (weight beta, training noise sigma_train), and both
nets' test accuracy against the noise level, all with the same noise (clamped to [0, 1] or
not)."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..attacks import noise_accuracy_curve
from ..data import gaussian_noise
from ..trainers.lipschitz_loss import difference_quotients
from .mnist import mnist_subset, small_mnist_net

SIGMAS = tuple(float(s) for s in np.round(np.linspace(0.0, 1.5, 16), 2))
SIGMAS_TRAIN = (0.05, 0.25, 0.5)       # the paper's grid of sigma_train
BETAS = (0.0, 1.0, 5.0, 10.0, 20.0)    # the paper's grid {1, 5, 10}, 0 (the loss off) and 20
NETS = {"standard": "tab:blue", "lipschitz loss": "tab:green"}
PIXELS = (-2.0, 3.0)                  # one grey scale for every sigma, clamped or not


def _net(name: str, sigma_train: float, beta: float = 5.0) -> torch.nn.Module:
    return small_mnist_net(name) if name == "standard" else \
        small_mnist_net(name, float(beta), sigma_train=float(sigma_train))


@functools.lru_cache(maxsize=64)
def _curve(name: str, sigma_train: float, clamp: bool, beta: float = 5.0) -> list[float]:
    _, test = mnist_subset()
    return noise_accuracy_curve(_net(name, sigma_train, beta), test, "gaussian", SIGMAS,
                                clamp=clamp)


def noise_curves(sigma_train: float, clamp: bool, beta: float = 5.0) -> dict[str, list[float]]:
    """Test accuracy (%) of the standard net and the Lipschitz-loss net (trained with weight
    ``beta`` and noise ``sigma_train``) at every level of SIGMAS, the noise clamped to [0, 1] or
    not. Cached per net, so a new beta or sigma_train recomputes only the Lipschitz-loss net's
    curve."""
    return {name: _curve(name, 0.0, bool(clamp), 0.0) if name == "standard"
            else _curve(name, float(sigma_train), bool(clamp), float(beta)) for name in NETS}


def draw_noise(ax: plt.Axes, sigma: float = 0.5, image: int = 0, clamp: bool = False,
               sigma_train: float = 0.25, beta: float = 5.0) -> dict[str, float]:
    """Left: test image ``image`` with noise of level ``sigma`` (seeded: the same draw for both
    nets; clamped to [0, 1] if ``clamp``), exactly as the nets see it. Middle: each net's class
    probabilities on it, and its difference quotient k = ||f(x_bar) - f(x)|| / ||x_bar - x||.
    Right: accuracy against sigma under the same kind of noise. The Lipschitz-loss net is
    trained with weight ``beta`` (0: the loss is off, the standard net) and noise
    ``sigma_train``."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    _, test = mnist_subset()
    x, label = test.tensors[0][image:image + 1], int(test.tensors[1][image])
    noisy = gaussian_noise(x, float(sigma), torch.Generator().manual_seed(image), clamp=clamp)
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")
    picture, scale = ax.inset_axes((0.0, 0.1, 0.2, 0.8)), ax.inset_axes((0.205, 0.1, 0.01, 0.8))
    bars = ax.inset_axes((0.32, 0.15, 0.3, 0.7))
    curves = ax.inset_axes((0.7, 0.15, 0.3, 0.7))
    shade = picture.imshow(noisy.reshape(28, 28).numpy(), cmap="gray", vmin=PIXELS[0],
                           vmax=PIXELS[1])
    ax.figure.colorbar(shade, cax=scale).ax.tick_params(labelsize=6)
    picture.set(xticks=[], yticks=[])
    picture.set_title(f"label {label}, sigma {sigma:g}, " + ("clamped" if clamp else "not clamped"),
                      fontsize=8)
    shown: dict[str, float] = {}
    for k, (name, colour) in enumerate(NETS.items()):
        net = _net(name, sigma_train, beta)
        with torch.no_grad():
            out, clean = net(noisy), net(x)
        probs = out.softmax(1)[0]
        quotient = float(difference_quotients(clean, out, x, noisy)) if sigma > 0 else float("nan")
        bars.bar(np.arange(10) + (k - 0.5) * 0.4, probs.numpy(), width=0.4, color=colour,
                 label=f"{name}: says {int(probs.argmax())}"
                       + (f", k = {quotient:.2g}" if sigma > 0 else ""))
        shown[f"{name} p(label)"] = float(probs[label])
        shown[f"{name} k"] = quotient
        accuracy = noise_curves(float(sigma_train), bool(clamp), float(beta))[name]
        curves.plot(SIGMAS, accuracy, color=colour, label=name)
        shown[f"{name} accuracy"] = float(np.interp(sigma, SIGMAS, accuracy))
    bars.set(xticks=range(10), ylim=(0, 1.3), yticks=np.linspace(0, 1, 6), xlabel="class",
             ylabel="probability", title="class probabilities on this image")
    bars.legend(fontsize=7, loc="upper center")
    curves.axvline(sigma, color="k", ls=":", lw=0.8)
    curves.set(xlabel="noise sigma", ylabel="test accuracy (%)", ylim=(0, 100))
    curves.set_title(f"{len(test)} test images, " + ("clamped" if clamp else "not clamped")
                     + f"\nLipschitz loss: beta {beta:g}, sigma_train {sigma_train:g}",
                     fontsize=9)
    curves.legend(fontsize=7)
    return shown
