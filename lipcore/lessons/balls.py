"""Lesson 1: a sound Lipschitz bound certifies a ball around each point (Pauli et al.'s 2D data)."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..attacks.ensemble import nearest_adversarial
from ..certify import certified_radii, lipschitz_bound
from ..data import pauli_2d
from ..models import fully_connected
from ..progress import quiet
from ..trainers import LipschitzLossConfig, TrainConfig, train, train_lipschitz_loss
from ..trainers.clip import CLIPConfig, LipschitzSet, clip_train

METHODS_2D = ("none", "l2", "lipschitz loss", "clip")
STEPS_2D = 1000            # full-batch Adam steps: about a second on one core
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green")


@functools.lru_cache(maxsize=32)
def trained_2d_net(method: str, strength: float, seed: int = 0) -> nn.Module:
    """Pauli et al.'s 2-10-10-3 tanh net trained on their 50 points with ``method`` at
    ``strength`` (l2: the penalty lambda; lipschitz loss: beta; clip: a fixed lambda). Cached."""
    if method not in METHODS_2D:
        raise ValueError(f"method must be one of {METHODS_2D}, got {method!r}")
    data = pauli_2d()
    net = fully_connected([2, 10, 10, 3], "tanh", seed=seed)
    adam = dict(epochs=STEPS_2D, batch_size=None, lr=0.01, optimizer="adam")
    with quiet():
        _train_2d(net, data, method, strength, seed, adam)
    return net.eval()


def _train_2d(net: nn.Module, data, method: str, strength: float, seed: int, adam: dict) -> None:
    if method in ("none", "l2"):
        train(net, data.train, TrainConfig(**adam, l2=strength if method == "l2" else 0.0))
    elif method == "lipschitz loss":
        train_lipschitz_loss(net, data.train, TrainConfig(**adam),
                             LipschitzLossConfig(beta=strength, sigma=0.05, L_n=20.0))
    else:
        pairs = LipschitzSet.from_images(data.train.tensors[0], noise=0.05,
                                         generator=torch.Generator().manual_seed(seed))
        clip_train(net, data.train, CLIPConfig(epochs=STEPS_2D, batch_size=50, lr=0.01,
                                               optimizer="adam", lam0=strength, d_lambda=0.0,
                                               ascent_every=1), pairs)


def draw_certified_balls(ax: plt.Axes, method: str = "none", strength: float = 0.0,
                         points: int = 40) -> dict[str, float]:
    """Decision regions of the 2D net, the first ``points`` test points with their certified
    balls (radius margin / (sqrt(2) L), L from LipSDP-neuron: sound), and for each the nearest
    adversarial point the attack finds, which lies outside the ball."""
    net = trained_2d_net(method, float(strength))
    data = pauli_2d()
    x, y = (t[:points] for t in data.test.tensors)
    with quiet():
        L = lipschitz_bound(net, "lipsdp").value
    radii = certified_radii(net, (x, y), L)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 200),
                                      indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        regions = net(grid).argmax(1).reshape(200, 200)
        accuracy = 100.0 * float((net(data.test.tensors[0]).argmax(1) == data.test.tensors[1])
                                 .float().mean())
    ax.clear()
    ax.imshow(regions, origin="lower", extent=(0, 1, 0, 1), alpha=0.25,
              cmap=plt.matplotlib.colors.ListedColormap(CLASS_COLOURS), vmin=0, vmax=2)
    ax.scatter(x[:, 0], x[:, 1], c=[CLASS_COLOURS[int(c)] for c in y], s=12, edgecolors="k",
               linewidths=0.4, zorder=3)
    for point, r in zip(x, radii):
        if r > 0:
            ax.add_patch(plt.Circle(point.tolist(), float(r), fill=False, lw=0.8, zorder=2))
    certified = radii > 0
    broken_inside = 0          # adversarials inside a certified ball: must stay 0 (a sound L)
    if certified.any():
        adv = nearest_adversarial(net, x[certified])
        with torch.no_grad():
            fooled = net(adv).argmax(1) != y[certified]
        broken_inside = int((fooled & ((adv - x[certified]).norm(dim=1) < radii[certified])).sum())
        for start, end in zip(x[certified][fooled], adv[fooled]):
            ax.plot([start[0], end[0]], [start[1], end[1]], "r-", lw=0.6, zorder=2)
        ax.scatter(adv[fooled, 0], adv[fooled, 1], marker="x", c="r", s=14, zorder=4)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xticks=[], yticks=[],
           title=f"{method}" + (f" {strength:g}" if method != "none" else "") +
                 f": L = {L:.3g}, acc {accuracy:.0f}%")
    return dict(L=L, accuracy=accuracy, certified=int(certified.sum()),
                mean_radius=float(radii.mean()), broken_inside=broken_inside)
