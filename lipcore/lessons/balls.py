"""Lesson 1: a sound Lipschitz bound certifies a ball around each point (Pauli et al.'s 2D data).

The radius is margin / (sqrt(2) L) (:func:`lipcore.certify.certified_radii`); in 2D the true
distance to the decision boundary can be read off a fine grid of the square, so the figure shows
how much of that distance the certificate recovers."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..certify import BOUND_METHODS, certified_radii, lipschitz_bound
from ..data import pauli_2d
from ..margins import margin_radii
from ..models import fully_connected
from ..progress import quiet
from ..trainers import LipschitzLossConfig, TrainConfig, train, train_lipschitz_loss
from ..trainers.clip import CLIPConfig, LipschitzSet, clip_train

METHODS_2D = ("none", "l2", "lipschitz loss", "clip")
STEPS_2D = 600             # full-batch Adam steps: well under a second on one core
GRID = 400                 # grid points per side of the unit square: spacing 1/399
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


def unit_grid(n: int = GRID) -> torch.Tensor:
    """The n x n grid of the unit square, row by row from the bottom (imshow's origin="lower")."""
    line = torch.linspace(0.0, 1.0, n)
    return torch.stack(torch.meshgrid(line, line, indexing="xy"), -1).reshape(-1, 2)


def nearest_other_class(net: nn.Module, x: torch.Tensor, n: int = GRID
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each 2D point, the nearest point of the n x n grid of the unit square that ``net``
    assigns another class than x's own: an adversarial point, and its distance, which is at
    least the distance to the decision boundary (within the square) and exceeds it by at most
    about the grid's diagonal spacing sqrt(2) / (n - 1) (a region of another class thinner than
    a grid cell can be missed). Returns (points, distances)."""
    grid = unit_grid(n)
    with torch.no_grad():
        grid_class, own = net(grid).argmax(1), net(x).argmax(1)
    gaps = torch.cdist(x, grid)
    gaps[own[:, None] == grid_class[None, :]] = float("inf")
    distance, index = gaps.min(dim=1)
    return grid[index], distance.double()


def draw_certified_balls(ax: plt.Axes, method: str = "none", strength: float = 0.0,
                         bound: str = "lipsdp", points: int = 40) -> dict[str, float]:
    """Decision regions of the 2D net, the first ``points`` test points with the balls that
    ``bound``'s constant L certifies (radius margin / (sqrt(2) L)), and from each certified point
    a red segment to the nearest grid point of another class (the distance to the boundary)."""
    if bound not in BOUND_METHODS:
        raise ValueError(f"bound must be one of {tuple(BOUND_METHODS)}, got {bound!r}")
    strength = 0.0 if method == "none" else float(strength)   # none ignores it: no retraining
    net = trained_2d_net(method, strength)
    data = pauli_2d()
    x, y = (t[:points] for t in data.test.tensors)
    with quiet():
        L = lipschitz_bound(net, bound).value
    radii = certified_radii(net, (x, y), L)
    with torch.no_grad():
        regions = net(unit_grid(200)).argmax(1).reshape(200, 200)
        accuracy = 100.0 * float((net(data.test.tensors[0]).argmax(1) == data.test.tensors[1])
                                 .float().mean())
    certified = radii > 0
    with torch.no_grad():                             # z_y - max_{j != y} z_j
        margin = margin_radii(net(x[certified]), y[certified], torch.tensor(1.0)).min(1).values
    nearest, distance = nearest_other_class(net, x[certified])
    ax.clear()
    ax.imshow(regions, origin="lower", extent=(0, 1, 0, 1), alpha=0.25,
              cmap=plt.matplotlib.colors.ListedColormap(CLASS_COLOURS), vmin=0, vmax=2)
    for c, colour in enumerate(CLASS_COLOURS):
        ax.scatter(*x[y == c].T, c=colour, s=12, edgecolors="k", linewidths=0.4, zorder=3,
                   label=f"class {c}")
    for point, r in zip(x[certified], radii[certified]):
        ax.add_patch(plt.Circle(point.tolist(), float(r), fill=False, lw=0.8, zorder=2))
    for start, end in zip(x[certified], nearest):
        ax.plot([start[0], end[0]], [start[1], end[1]], "r-", lw=0.6, zorder=2)
    ax.scatter(nearest[:, 0], nearest[:, 1], marker="x", c="r", s=14, zorder=4,
               label="nearest other class")
    ax.plot([], [], "ko", mfc="none", label="certified ball")
    means = [float(v.mean()) if len(v) else 0.0 for v in (margin, radii[certified], distance)]
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
           title=f"{method}" + (f" {strength:g}" if method != "none" else "") +
                 f", {BOUND_METHODS[bound]}: L = {L:.3g}, acc {accuracy:.0f}%\nmeans: margin "
                 f"{means[0]:.2f}, radius {means[1]:.3f}, distance {means[2]:.3f}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    return dict(L=L, accuracy=accuracy, certified=int(certified.sum()), mean_margin=means[0],
                mean_radius=means[1], mean_distance=means[2],
                recovered=float((radii[certified] / distance).mean()) if len(distance) else 0.0,
                broken_inside=int((distance < radii[certified]).sum()))
